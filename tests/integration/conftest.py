"""Integration tier: the operator, as a real process, against a real Kubernetes API server.

The cluster comes from FORGE_TEST_KUBECONFIG (`.ci/run` starts ../shared/kube-harness and sets it).
Without it these tests are skipped with a message saying so. The suite applies the CRDs from crds/,
starts `forge operator` watching all namespaces with a 1-second reconcile interval and the S3 store
on moto_server, and gives each test a fresh namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
ACCESS, SECRET = "forge-test", "forge-test-secret"
NAMESPACE_PREFIX = "forge-it-"


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


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    path = os.environ.get("FORGE_TEST_KUBECONFIG")
    if not path:
        pytest.skip("integration tier needs FORGE_TEST_KUBECONFIG (see ../shared/kube-harness; .ci/run sets it)")
    return path


@pytest.fixture(scope="session")
def api(kubeconfig: str) -> Any:
    from kubernetes import client, config

    config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


@pytest.fixture(scope="session")
def crds(api: Any) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        try:
            live = ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = live.metadata.resource_version
            ext.replace_custom_resource_definition(name, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            ext.create_custom_resource_definition(body)

        def established(n: str = name) -> bool:
            conds = ext.read_custom_resource_definition(n).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(f"CRD {name} established", established, timeout=30)


@pytest.fixture(scope="session")
def store_bucket(_moto_endpoint: str) -> str:
    from minio import Minio

    bucket = f"forge-it-{uuid.uuid4().hex[:8]}"
    Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False).make_bucket(bucket)
    return bucket


def _wait_for_test_namespaces_to_go(kubeconfig: str, timeout: float = 120) -> None:
    """Let the operator release the finalizers of the suite's namespaces before it stops, so nothing is
    left Terminating on a shared API server."""
    from kubernetes import client, config

    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [n for n in core.list_namespace().items if n.metadata.name.startswith(NAMESPACE_PREFIX)]
        if not left:
            return
        time.sleep(1)


class Operator:
    """A running `forge operator` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            # only the suite's own namespaces: whatever else lives on a shared API server is not ours
            [sys.executable, "-m", "forge_operator.cli", "operator", "--standalone", "--verbose",
             "--namespace", f"{NAMESPACE_PREFIX}*",
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


@pytest.fixture(scope="session")
def operator(kubeconfig: str, crds: None, _moto_endpoint: str, store_bucket: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "FORGE_STORE_ENDPOINT": _moto_endpoint,
        "FORGE_STORE_SECURE": "false",
        "FORGE_STORE_BUCKET": store_bucket,
        "FORGE_S3_ACCESS_KEY": ACCESS,
        "FORGE_S3_SECRET_KEY": SECRET,
        "FORGE_RECONCILE_INTERVAL": "1",
        "FORGE_METRICS_PORT": str(free_port()),
        "FORGE_LIVENESS_PORT": str(free_port()),
    }
    op = Operator(env, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    _wait_for_test_namespaces_to_go(kubeconfig)
    op.stop()
    print("---- operator log (tail) ----\n" + op.tail(200))


@pytest.fixture
def namespace(api: Any, operator: Operator) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    name = f"{NAMESPACE_PREFIX}{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(name, {"metadata": {"name": "forge-store-credentials"},
                                         "stringData": {"accessKey": ACCESS, "secretKey": SECRET}})
    yield name
    core.delete_namespace(name)


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


@pytest.fixture
def cluster(api: Any, namespace: str) -> Cluster:
    return Cluster(api, namespace)
