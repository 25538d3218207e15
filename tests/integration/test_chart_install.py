"""The chart installed into a real API server, and the operator run the way its Deployment runs it
(the rendered args and env, the store keys from the Secret the chart names) but authenticated as the
chart's ServiceAccount: a dataset scenario must go through on the chart's ClusterRole alone, with
leader election on the chart's peering object. The ArgoCD health script reads the live statuses."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge_operator.plan.capabilities import missing_capabilities, parse_server_version
from tests.support.argocd import argocd_health
from tests.support.chart import CHART, render
from tests.support.cluster import ACCESS, ROOT, SECRET, Cluster, wait_for
from tests.support.ports import free_port

pytestmark = pytest.mark.integration
POD_NAME, POD_UID = "forge-operator-test-pod", "00000000-0000-0000-0000-0000000000aa"


def _create(dyn: Any, obj: dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    try:
        dyn.create(res, body=obj, namespace=obj["metadata"].get("namespace"))
    except ApiException as exc:
        if exc.status != 409 or obj["kind"] != "CustomResourceDefinition":
            raise


def _delete(dyn: Any, obj: dict[str, Any]) -> None:
    from kubernetes.dynamic.exceptions import NotFoundError

    res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    with contextlib.suppress(NotFoundError):
        dyn.delete(res, name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"))


@pytest.fixture
def installed(api: Any, crds: None, _moto_endpoint: str, store_bucket: str) -> Iterator[tuple[str, list[Any]]]:
    """The chart rendered for a fresh namespace and created in the API server (Forge CRDs come from the
    session's `crds` fixture, so crds.enabled=false); yields (namespace, objects)."""
    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(api)
    ns = f"forge-rbac-{uuid.uuid4().hex[:8]}"
    values = {"crds": {"enabled": False}, "watchNamespaces": [ns], "reconcileInterval": 1,
              "store": {"endpoint": _moto_endpoint, "secure": False, "bucket": store_bucket}}
    objects = render(values, namespace=ns, release=ns)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "forge-store-credentials"},
                                       "stringData": {"accessKey": ACCESS, "secretKey": SECRET}})
    for crd in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()):
        _create(dyn, crd)
    ext = client.ApiextensionsV1Api(api)
    wait_for("the Kopf peering CRDs", lambda: all(
        any(c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(n).status.conditions or [])
        for n in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")), timeout=30)
    created = []
    try:
        for obj in objects:
            _create(dyn, obj)
            created.append(obj)
        yield ns, objects
    finally:
        for obj in reversed(created):
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                _delete(dyn, obj)
        core.delete_namespace(ns)


def _service_account_kubeconfig(api: Any, ns: str, sa: str, path: Path) -> None:
    """A kubeconfig that authenticates as the ServiceAccount with a token the API server issues."""
    from kubernetes import client

    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        sa, ns, {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
    admin = yaml.safe_load(Path(os.environ["FORGE_TEST_KUBECONFIG"]).read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa, "namespace": ns}}],
        "current-context": sa}))


def _operator_as_the_deployment_runs_it(objects: list[dict[str, Any]], api: Any, ns: str, kubeconfig: Path,
                                        log: Path, metrics_port: int, *, pod_name: str = POD_NAME,
                                        priority: int = 7) -> subprocess.Popen[bytes]:
    from kubernetes import client

    deploy = next(o for o in objects if o["kind"] == "Deployment")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}, "KUBECONFIG": str(kubeconfig)}
    for var in c["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:  # the downward API, as the kubelet fills it in for this pod
            pod = {"metadata.name": pod_name, "metadata.namespace": ns, "metadata.uid": POD_UID}
            env[var["name"]] = pod[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            data = client.CoreV1Api(api).read_namespaced_secret(ref["name"], ns).data
            env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
    env["FORGE_METRICS_PORT"] = str(metrics_port)  # the pod's port may be taken on this machine
    args = [a for a in c["args"] if not a.startswith("--liveness")]
    args += [f"--liveness=http://127.0.0.1:{free_port()}/healthz", f"--priority={priority}", "--verbose"]
    assert c["command"][-1] == "forge" and "exec forge operator" in c["command"][2]
    return subprocess.Popen([sys.executable, "-m", "forge_operator.cli", "operator", *args], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)


def _reconciles(port: int) -> dict[str, float]:
    """forge_reconcile_total{kind="ForgeDataset"} by result, from the operator's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.labels["result"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "forge_reconcile" for s in f.samples
            if s.name == "forge_reconcile_total" and s.labels.get("kind") == "ForgeDataset"}


def _samples(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float] | None:
    """The samples of one metric on the operator's /metrics (by their labels); None when it does not answer."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def _leader(port: int) -> float | None:
    """forge_leader on one replica (None: not exported, or the replica does not answer)."""
    return (_samples(port, "forge_leader") or {}).get(())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _dataset(name: str, source: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset", "metadata": {"name": name},
            "spec": {"source": {"uri": source}, "tokenizer": {"vocabSize": 300}, **spec}}


def test_operator_works_with_only_the_charts_rbac(installed: tuple[str, list[Any]], api: Any,
                                                   tmp_path: Path) -> None:
    from kubernetes import client

    ns, objects = installed
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    peering = next(o for o in objects if o["kind"] == "KopfPeering")["metadata"]["name"]
    kubeconfig, log = tmp_path / "sa-kubeconfig", tmp_path / "operator.log"
    _service_account_kubeconfig(api, ns, sa, kubeconfig)
    metrics_port = free_port()
    proc = _operator_as_the_deployment_runs_it(objects, api, ns, kubeconfig, log, metrics_port)
    cluster = Cluster(api, ns)
    try:
        def peered() -> Any:
            body = cluster.custom.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", peering)
            return [p for p in (body.get("status") or {}).values() if p.get("priority") == 7]
        wait_for("the operator in the chart's peering object", peered, timeout=60)
        wait_for("forge_leader 1 on the only replica", lambda: _leader(metrics_port) == 1.0, timeout=30)

        # what this API server lacks is named at start-up: an Event on the operator's own pod and a gauge
        code = client.VersionApi(api).get_code()
        version = parse_server_version({"gitVersion": code.git_version, "major": code.major, "minor": code.minor})
        assert version is not None
        missing = {c.name for c in missing_capabilities(version)}
        lacking = wait_for("forge_server_capability_missing", lambda: _samples(metrics_port,
                                                                              "forge_server_capability_missing"))
        assert {dict(k)["capability"] for k, v in lacking.items() if v == 1.0} == missing
        if missing:
            event = wait_for("the MissingCapabilities Event on the operator's pod", lambda: next(
                (e for e in cluster.events_for(POD_NAME) if e.reason == "MissingCapabilities"), None), timeout=30)
            assert event.type == "Warning" and event.involved_object.kind == "Pod"
            assert event.involved_object.uid == POD_UID  # so `kubectl describe pod` lists it
            assert all(f"[{name}]" in event.message for name in missing), event.message

        cluster.create("forgedatasets", _dataset("corpus", "s3://raw-bucket/corpus/"))
        job = wait_for("the preparation Job", lambda: cluster.job("corpus-prepare"), timeout=60)
        assert job.metadata.owner_references[0].name == "corpus"
        assert cluster.core.read_namespaced_config_map("corpus-prepare-config", ns)
        wait_for("phase Running", lambda: cluster.status("forgedatasets", "corpus").get("phase") == "Running")
        assert argocd_health(cluster.get("forgedatasets", "corpus") or {})["status"] == "Progressing"
        wait_for("Events posted by the operator", lambda: {e.reason for e in cluster.events_for("corpus")})

        bad = _dataset("bad", "s3://raw/x/", tokenizer={"vocabSize": 1000, "uri": "s3://other/tokenizer.json"})
        cluster.create("forgedatasets", bad)
        wait_for("InvalidSpec", lambda: cluster.condition("forgedatasets", "bad", "InvalidSpec"))
        health = argocd_health(cluster.get("forgedatasets", "bad") or {})
        assert health["status"] == "Degraded" and "spec.tokenizer" in health["message"]

        cluster.delete("forgedatasets", "corpus")  # the finalizer runs under the ServiceAccount too
        wait_for("the dataset to be gone", lambda: cluster.get("forgedatasets", "corpus") is None, timeout=60)
        assert proc.poll() is None, "the operator exited"
        # this process (not some other operator on the shared API server) reconciled, without errors
        reconciles = _reconciles(metrics_port)
        assert reconciles.get("ok", 0) >= 1 and reconciles.get("error", 0) == 0, reconciles
    finally:
        _stop(proc)
        text = log.read_text(errors="replace")
        print("---- operator log (tail) ----\n" + "\n".join(text.splitlines()[-80:]))
    denied = [line for line in text.splitlines() if "Forbidden" in line or " 403" in line]
    assert denied == [], "the chart's ClusterRole is missing a permission:\n" + "\n".join(denied[:10])


def test_two_replicas_one_leads_and_the_other_takes_over(installed: tuple[str, list[Any]], api: Any,
                                                        tmp_path: Path) -> None:
    """Issue 20 item 9: every replica is scraped; forge_leader says which one leads, only that one serves
    the resources' series, and when it stops the other one leads and serves them."""
    ns, objects = installed
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = tmp_path / "sa-kubeconfig"
    _service_account_kubeconfig(api, ns, sa, kubeconfig)
    ports = {"low": free_port(), "high": free_port()}
    procs = {name: _operator_as_the_deployment_runs_it(
        objects, api, ns, kubeconfig, tmp_path / f"{name}.log", ports[name], pod_name=f"forge-operator-{name}",
        priority=priority) for name, priority in (("low", 10), ("high", 20))}
    cluster = Cluster(api, ns)
    try:
        wait_for("forge_leader 1 on the higher priority, 0 on the other",
                 lambda: (_leader(ports["high"]), _leader(ports["low"])) == (1.0, 0.0), timeout=60)
        cluster.create("forgedatasets", _dataset("corpus", "s3://raw-bucket/corpus/"))

        def resources(port: int) -> Any:
            return {dict(k)["phase"]: v for k, v in (_samples(port, "forge_resources") or {}).items()
                    if dict(k)["kind"] == "ForgeDataset"}
        wait_for("the leader's forge_resources", lambda: resources(ports["high"]), timeout=60)
        assert resources(ports["low"]) == {}  # the waiting replica serves no resource's series

        _stop(procs["high"])
        wait_for("the other replica to lead", lambda: _leader(ports["low"]) == 1.0, timeout=60)
        wait_for("its forge_resources", lambda: resources(ports["low"]), timeout=60)
    finally:
        for proc in procs.values():
            _stop(proc)
        for name in procs:
            text = (tmp_path / f"{name}.log").read_text(errors="replace")
            print(f"---- operator {name} log (tail) ----\n" + "\n".join(text.splitlines()[-40:]))


def test_the_charts_crds_apply_on_this_server(api: Any) -> None:
    """Issue 20 item 3: rendered for the server's own version (what `helm install` does), the chart's CRDs
    apply by server-side apply, which refused them on Kubernetes < 1.25 (x-kubernetes-validations: unknown
    field). A dry run: the session's CRDs stay as they are."""
    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    code = client.VersionApi(api).get_code()
    version = parse_server_version({"gitVersion": code.git_version, "major": code.major, "minor": code.minor})
    assert version is not None
    crds = [o for o in render(kube_version=f"v{version[0]}.{version[1]}.0") if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 3
    dyn = DynamicClient(api)
    res = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    for crd in crds:
        dyn.server_side_apply(res, body=crd, field_manager="forge-chart-test", force_conflicts=True, dry_run="All")
