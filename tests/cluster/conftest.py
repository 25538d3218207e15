"""The cluster tier's installation, shared by its tests: Forge installed as docs/install.md tells a platform
engineer (the chart with its own operator image, two replicas electing a leader, the store Secrets in
the operator's and the workloads' namespaces), an in-cluster S3, and the quickstart's data in it."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.chart import CHART, render
from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.node import (
    RAW_BUCKET,
    S3_ACCESS,
    S3_SECRET,
    Install,
    NodeCluster,
    api_client,
    create_all,
    delete_all,
    describe,
    load_manifests,
    s3_server,
    secret,
    store_client,
)

BUCKET = "forge"


def _image(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


def _upload_quickstart_data(api: Any, ml: str) -> None:
    """The buckets, and examples/quickstart/data in one of them."""
    s3 = store_client(api, ml, S3_ACCESS, S3_SECRET)
    s3.make_bucket(BUCKET)
    s3.make_bucket(RAW_BUCKET)
    data = ROOT / "examples" / "quickstart" / "data"
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        s3.fput_object(RAW_BUCKET, f"quickstart/{path.relative_to(data)}", str(path))


@pytest.fixture(scope="package")
def install() -> Iterator[Install]:
    """Install Forge into fresh namespaces of the node cluster; uninstall after the tier's last test (its
    operators and pods would otherwise load the machine for the rest of the session)."""
    from kubernetes import client

    node = NodeCluster.from_env()
    api = api_client(node.kubeconfig)
    core = client.CoreV1Api(api)
    suffix = uuid.uuid4().hex[:6]
    system, ml = f"forge-system-{suffix}", f"forge-ml-{suffix}"
    repo, tag = _image(node.operator_image)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "IfNotPresent"},
        "trainer": {"image": node.trainer_image, "pullPolicy": "IfNotPresent"},
        "watchNamespaces": [ml], "reconcileInterval": 2,
        "store": {"endpoint": f"forge-s3.{ml}.svc.cluster.local:5000", "secure": False, "bucket": BUCKET},
        "networkPolicy": {"store": {"podLabels": {"app": "forge-s3"},
                                    "namespaceLabels": {"kubernetes.io/metadata.name": ml}}},
    }
    # as `helm install` renders: for the server's own version (before 1.25 the CRDs come without CEL rules)
    server = client.VersionApi(api).get_code().git_version
    objects = render(values, namespace=system, release="forge", kube_version=server)
    for ns in (system, ml):
        core.create_namespace({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
    created: list[dict[str, Any]] = []
    try:
        create_all(api, s3_server(ml, node.s3_image))
        for ns in (system, ml):  # docs/install.md: the store keys in the operator's and each workload namespace
            create_all(api, [secret(ns, "forge-store-credentials", {"accessKey": S3_ACCESS, "secretKey": S3_SECRET})])
        _upload_quickstart_data(api, ml)
        # the chart's crds/ folder (Kopf's peering CRDs) is not in `helm template` output: apply it too
        crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
        crds += load_manifests(CHART / "crds" / "kopf.dev_peerings.yaml")
        _create_or_replace_crds(api, crds)
        rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
        create_all(api, rest, namespace=system)
        created = rest
        installed = time.monotonic()
        apps = client.AppsV1Api(api)
        wait_for("both operator replicas Ready", lambda: any(
            (d.status.ready_replicas or 0) == 2 for d in apps.list_namespaced_deployment(system).items), timeout=240)
        yield Install(api, node, system, ml, objects, time.monotonic() - installed)
    finally:
        print(f"---- {system} ----\n{describe(api, system)}\n---- {ml} ----\n{describe(api, ml)}")
        if os.environ.get("FORGE_CLUSTER_KEEP") == "1":  # to look around afterwards with kubectl
            print(f"FORGE_CLUSTER_KEEP=1: namespaces {system} and {ml} are left as they are")
        else:
            _delete_forge_resources(Cluster(api, ml))
            for ns in (ml, system):
                with contextlib.suppress(Exception):
                    core.delete_namespace(ns)
            delete_all(api, created)


def _create_or_replace_crds(api: Any, crds: list[dict[str, Any]]) -> None:
    """The chart's CRDs, created through the API (an older server prunes the fields it does not know, as
    `kubectl create --validate=false` would), replaced if a previous install left older ones."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    for body in crds:
        name = body["metadata"]["name"]
        try:
            live = ext.read_custom_resource_definition(name)
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": live.metadata.resource_version}}
            ext.replace_custom_resource_definition(name, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            ext.create_custom_resource_definition(body)
        wait_for(f"CRD {name} established", lambda n=name: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(n).status.conditions or []), timeout=30)


@pytest.fixture(scope="package")
def small_notes(install: Install) -> str:
    """A Ready pretraining dataset (the quickstart's prose, a 300-token vocabulary), prepared by a real Pod;
    its name."""
    install.cluster.create("forgedatasets", {
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset", "metadata": {"name": "small-notes"},
        "spec": {"source": {"uri": f"s3://{RAW_BUCKET}/quickstart/corpus/"}, "tokenizer": {"vocabSize": 300}}})
    wait_for("dataset small-notes Ready",
             lambda: install.cluster.status("forgedatasets", "small-notes").get("phase") == "Ready", timeout=300)
    return "small-notes"


def _delete_forge_resources(cluster: Cluster) -> None:
    """Delete every Forge resource and wait (up to 2 minutes) while the operator, still running, finalizes
    them: deleting the operator's namespace first would leave their finalizers unserved."""
    plurals = ("forgedeployments", "forgetrainingruns", "forgedatasets")
    for plural in plurals:
        for obj in cluster.custom.list_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, plural)["items"]:
            with contextlib.suppress(Exception):
                cluster.delete(plural, obj["metadata"]["name"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(
            cluster.custom.list_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, p)["items"] for p in plurals):
        time.sleep(2)
