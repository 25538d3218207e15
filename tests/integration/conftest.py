"""Integration tier: the operator, as a real process, against a real Kubernetes API server.

The cluster comes from FORGE_TEST_KUBECONFIG (`.ci/run` starts ../shared/kube-harness and sets it).
Without it these tests are skipped with a message saying so. The suite applies the CRDs from crds/,
starts `forge operator` watching all namespaces with a 1-second reconcile interval and the S3 store
on moto_server, and gives each test a fresh namespace.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import ACCESS, NAMESPACE_PREFIX, ROOT, SECRET, Cluster, Operator, wait_for
from tests.support.ports import free_port


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    path = os.environ.get("FORGE_TEST_KUBECONFIG")
    if not path:
        pytest.skip("integration tier needs FORGE_TEST_KUBECONFIG (see ../shared/kube-harness; .ci/run sets it)")
    if not Path(path).is_file():
        pytest.fail(f"FORGE_TEST_KUBECONFIG={path}: no such file")
    return path


@pytest.fixture(scope="session")
def api(kubeconfig: str) -> Any:
    from kubernetes import client, config

    config.load_kube_config(config_file=kubeconfig)
    api = client.ApiClient()
    try:
        client.VersionApi(api).get_code(_request_timeout=15)
    except Exception as exc:  # any failure to reach it: the tier cannot run, and must say so
        pytest.fail(f"the cluster in FORGE_TEST_KUBECONFIG={kubeconfig} is unreachable: {exc}", pytrace=False)
    return api


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


@pytest.fixture
def cluster(api: Any, namespace: str) -> Cluster:
    return Cluster(api, namespace)
