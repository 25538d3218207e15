"""Helpers for the integration tier: the suite's credentials, the `forge operator` process, a
kubectl-like view of one namespace, and shortcuts that put objects into the states a test starts from."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from minio import Minio

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
ACCESS, SECRET = "forge-test", "forge-test-secret"
NAMESPACE_PREFIX = "forge-it-"
FORGE = {"apiVersion": "forge.ai/v1alpha1"}
CPU = {"gpusPerNode": 0, "nodeSelector": {}}


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {last!r})")


class Operator:
    """A running `forge operator` process."""

    def __init__(self, env: dict[str, str], log: Path, namespace: str = f"{NAMESPACE_PREFIX}*") -> None:
        """`namespace`: what it watches (a name or a glob)."""
        self.env, self.log, self.namespace = env, log, namespace
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            # only the suite's own namespaces: whatever else lives on a shared API server is not ours
            [sys.executable, "-m", "forge_operator.cli", "operator", "--standalone", "--verbose",
             "--namespace", self.namespace,
             "--liveness", f"http://127.0.0.1:{self.env['FORGE_LIVENESS_PORT']}/healthz"],
            env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


class Cluster:
    """Helpers a test uses to act as kubectl would."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.create_namespaced_custom_object("forge.ai", "v1alpha1", self.ns, plural, body))

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.custom.get_namespaced_custom_object("forge.ai", "v1alpha1", self.ns, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object("forge.ai", "v1alpha1", self.ns, plural, name)

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return (self.get(plural, name) or {}).get("status") or {}

    def condition(self, plural: str, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(plural, name).get("conditions", []) if c["type"] == type_), None)

    def job(self, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.batch.read_namespaced_job(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def finish_pods(self, job_name: str, phase: str = "Succeeded") -> int:
        """Do what a kubelet would: mark the Job's pods finished (Succeeded or Failed)."""
        pods = self.core.list_namespaced_pod(self.ns, label_selector=f"job-name={job_name}").items
        for pod in pods:
            self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": {"phase": phase}})
        return len(pods)

    def events_for(self, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(self.ns).items if e.involved_object.name == name]


def phase(cluster: Cluster, plural: str, name: str) -> str | None:
    """The phase in the status of one object (None before the operator wrote one)."""
    return cluster.status(plural, name).get("phase")


def finish_job(cluster: Cluster, job: str) -> None:
    """Wait for the Job's pods and mark them Succeeded, as a kubelet would."""
    wait_for(f"pods of {job}", lambda: cluster.finish_pods(job), timeout=60)


def ready_dataset(cluster: Cluster, s3: Minio, store_bucket: str, name: str) -> None:
    """Make a Ready dataset quickly: its status as a finished preparation would leave it (the run only
    reads manifestUri/digest from it)."""
    cluster.create("forgedatasets", {**FORGE, "kind": "ForgeDataset", "metadata": {"name": name},
                                     "spec": {"source": {"uri": "s3://raw/none/"}}})
    wait_for("dataset job", lambda: cluster.job(f"{name}-prepare"))
    # the Job is created before the status naming its output is published: wait for that too
    out = wait_for("dataset outputUri", lambda: cluster.status("forgedatasets", name).get("outputUri"))
    out = out.split(f"s3://{store_bucket}/", 1)[1]
    progress = {"stage": "done", "manifestUri": f"s3://{store_bucket}/{out}/manifest.json",
                "manifestDigest": "sha256:00", "tokenizerUri": f"s3://{store_bucket}/{out}/tokenizer.json",
                "counts": {"documentsRead": 1, "documentsKept": 1, "tokens": 10}}
    put_json(s3, store_bucket, f"{out}/progress.json", progress)
    finish_job(cluster, f"{name}-prepare")
    wait_for("dataset Ready", lambda: phase(cluster, "forgedatasets", name) == "Ready")


def put_json(s3: Minio, bucket: str, key: str, obj: Any) -> None:
    data = json.dumps(obj).encode()
    s3.put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/json")
