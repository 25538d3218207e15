"""Operator throughput against a real API server.

Creates N ForgeTrainingRuns in a burst and measures the time until every one has a first status
(phase + conditions), with the operator running as a process, against a reference: a bare client that
watches the same resources and does the minimum API work per object the operator does (read the
referenced dataset, write one status patch). Prints the ratio reference/operator (target >= 0.5), p50/p99
create->status latency, and the operator's RSS once it tracks 2N objects (target < 150 MB at 1000).

    python benchmarks/bench_operator.py [--count 500] [--kubeconfig PATH]

Needs a Kubernetes API server: --kubeconfig, $FORGE_TEST_KUBECONFIG, or ../shared/kube-harness.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "forge.ai", "v1alpha1", "forgetrainingruns"


def _body(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ForgeTrainingRun", "metadata": {"name": name},
            "spec": {"stage": "pretrain", "datasetRef": "not-yet", "model": {"size": "tiny"},
                     "resources": {"gpusPerNode": 0}}}


class StatusWatch:
    """Records, per object, when it was created (client side) and when it first had a status phase."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client, watch

        self.custom = client.CustomObjectsApi(api)
        self.ns = namespace
        self.created: dict[str, float] = {}
        self.first_status: dict[str, float] = {}
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._watch.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.ns,
                                                PLURAL, timeout_seconds=30):
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    if (obj.get("status") or {}).get("phase") and name not in self.first_status:
                        self.first_status[name] = time.monotonic()
                    if self._stop.is_set():
                        return
            except Exception:  # a dropped watch is simply restarted
                time.sleep(0.2)

    def wait_all(self, names: list[str], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n in self.first_status for n in names):
                return max(self.first_status[n] for n in names)
            time.sleep(0.2)
        missing = [n for n in names if n not in self.first_status]
        raise SystemExit(f"timed out: {len(missing)} of {len(names)} objects never got a status")

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


def burst_create(api: Any, ns: str, names: list[str], watcher: StatusWatch) -> float:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)

    def create(name: str) -> None:
        watcher.created[name] = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _body(name))

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, names))
    return start


def bare_client(api: Any, ns: str, stop: threading.Event) -> None:
    """The reference: for every new run, add the finalizer (the operator needs one: deletion cleans the
    object store), read its dataset, and write one status patch."""
    from kubernetes import client, watch

    custom = client.CustomObjectsApi(api)
    w = watch.Watch()
    pool = ThreadPoolExecutor(8)

    def handle(name: str) -> None:
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                              {"metadata": {"finalizers": ["forge.ai/bench"]}})
        with contextlib.suppress(client.exceptions.ApiException):
            custom.get_namespaced_custom_object(GROUP, VERSION, ns, "forgedatasets", "not-yet")
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, {"status": {
            "phase": "Pending", "observedGeneration": 1, "conditions": [{
                "type": "Ready", "status": "False", "reason": "Waiting", "message": "waiting for dataset",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})

    while not stop.is_set():
        for event in w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, timeout_seconds=5):
            if event["type"] == "ADDED" and not (event["object"].get("status") or {}).get("phase"):
                pool.submit(handle, event["object"]["metadata"]["name"])
            if stop.is_set():
                break
    pool.shutdown(wait=True)


def measure(api: Any, count: int, label: str, runner: Any) -> tuple[float, list[float]]:
    from kubernetes import client

    ns = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    watcher = StatusWatch(api, ns)
    stop = runner(ns)
    time.sleep(2)  # let the watcher and the system under test start watching
    names = [f"run-{i:04d}" for i in range(count)]
    start = burst_create(api, ns, names, watcher)
    end = watcher.wait_all(names, timeout=max(300.0, count * 1.0))
    latencies = [watcher.first_status[n] - watcher.created[n] for n in names]
    watcher.stop()
    stop()
    cleanup(api, ns, names)
    return end - start, latencies


def cleanup(api: Any, ns: str, names: list[str]) -> None:
    """Drop the benchmark's objects without leaving finalizers that nobody will ever process."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    for name in names:
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": None}})
    client.CoreV1Api(api).delete_namespace(ns)


def _kubeconfig(arg: str | None) -> tuple[str | None, Any]:
    if arg or os.environ.get("FORGE_TEST_KUBECONFIG"):
        return arg or os.environ["FORGE_TEST_KUBECONFIG"], None
    harness = ROOT.parent / "shared" / "kube-harness"
    if (harness / "start").exists():
        out = subprocess.run([str(harness / "start")], capture_output=True, text=True, check=True).stdout
        kc = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("export KUBECONFIG="))
        return kc, lambda: subprocess.run([str(harness / "stop")], check=False)
    return None, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    kubeconfig, stop_harness = _kubeconfig(args.kubeconfig)
    if kubeconfig is None:
        print("skipped: no Kubernetes API server (set FORGE_TEST_KUBECONFIG or provide ../shared/kube-harness)")
        return 0
    from kubernetes import client, config

    config.load_kube_config(config_file=kubeconfig)
    api = client.ApiClient()
    ext = client.ApiextensionsV1Api(api)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        with contextlib.suppress(client.exceptions.ApiException):
            ext.create_custom_resource_definition(body)
    time.sleep(2)
    log = Path(tempfile.mkdtemp()) / "operator.log"
    env = {**os.environ, "KUBECONFIG": kubeconfig, "FORGE_RECONCILE_INTERVAL": "30", "FORGE_METRICS_PORT": "0",
           "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    proc_holder: dict[str, subprocess.Popen[bytes]] = {}

    def run_operator(ns: str) -> Any:
        proc = subprocess.Popen([sys.executable, "-m", "forge_operator.cli", "operator", "--standalone", "-n", ns,
                                 "--liveness", "http://127.0.0.1:0/healthz"], env=env, stdout=log.open("ab"),
                                stderr=subprocess.STDOUT)
        proc_holder["p"] = proc
        return lambda: (proc.terminate(), proc.wait(timeout=30))

    def run_bare(ns: str) -> Any:
        stop = threading.Event()
        thread = threading.Thread(target=bare_client, args=(api, ns, stop), daemon=True)
        thread.start()
        return lambda: (stop.set(), thread.join(timeout=30))

    try:
        ref_time, ref_lat = measure(api, args.count, "bare", run_bare)
        op_time, op_lat = measure(api, args.count, "operator", run_operator)
        print(f"{args.count} ForgeTrainingRuns in a burst, time until all have a first status:")
        print(f"  bare client (finalizer + dataset read + status patch): {ref_time:7.2f} s")
        print(f"  forge operator:                                        {op_time:7.2f} s")
        print(f"  ratio reference/operator: {ref_time / op_time:.2f}x (target >= 0.5x)")
        for label, lat in (("bare client", ref_lat), ("operator", op_lat)):
            q = statistics.quantiles(lat, n=100)
            print(f"  create->status latency {label:12s} p50 {statistics.median(lat):6.2f} s  p99 {q[98]:6.2f} s")
        # RSS with 2N objects tracked: a fresh operator over a namespace holding 2N runs
        from kubernetes import client as kc

        ns = f"bench-rss-{uuid.uuid4().hex[:6]}"
        kc.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
        watcher = StatusWatch(api, ns)
        stop = run_operator(ns)
        names = [f"run-{i:04d}" for i in range(2 * args.count)]
        burst_create(api, ns, names, watcher)
        watcher.wait_all(names, timeout=max(600.0, args.count * 2.0))
        time.sleep(3)
        rss = psutil.Process(proc_holder["p"].pid).memory_info().rss / 2**20
        print(f"  operator RSS with {2 * args.count} objects: {rss:.0f} MB (target < 150 MB at 1000)")
        watcher.stop()
        stop()
        cleanup(api, ns, names)
    finally:
        if stop_harness:
            stop_harness()
    return 0


if __name__ == "__main__":
    sys.exit(main())
