"""An autoscaled ForgeDeployment on the real API server gets its HorizontalPodAutoscaler in the version that
server serves: autoscaling/v2 from Kubernetes 1.23, autoscaling/v2beta2 before (the operator reads the
server's version at start-up), and loses it when autoscaling is taken out of the spec."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import FORGE, Cluster, Operator, wait_for

pytestmark = pytest.mark.integration


def _hpa(cluster: Cluster, version: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(cluster.custom.get_namespaced_custom_object("autoscaling", version, cluster.ns,
                                                                "horizontalpodautoscalers", name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_the_autoscaler_is_created_in_the_version_the_server_serves(cluster: Cluster, operator: Operator,
                                                                    store_bucket: str) -> None:
    groups = client.ApisApi(cluster.core.api_client).get_api_versions().groups
    served = {v.version for g in groups if g.name == "autoscaling" for v in g.versions}
    version = "v2" if "v2" in served else "v2beta2"
    cluster.create("forgedeployments", {**FORGE, "kind": "ForgeDeployment", "metadata": {"name": "scaled"}, "spec": {
        "modelUri": f"s3://{store_bucket}/forge/{cluster.ns}/forgetrainingrun/x/u/model",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetCpuUtilization": 65}}})
    hpa = wait_for(f"the autoscaler in autoscaling/{version}", lambda: _hpa(cluster, version, "scaled-serve"),
                   timeout=60)
    assert hpa["metadata"]["ownerReferences"][0]["name"] == "scaled"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled-serve"}
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 65}

    # autoscaling taken out of the spec: the autoscaler goes, so spec.replicas rules again
    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, "forgedeployments", "scaled",
                                                  {"spec": {"autoscaling": None, "replicas": 2}})
    wait_for("the autoscaler to be gone", lambda: _hpa(cluster, version, "scaled-serve") is None, timeout=60)
    wait_for("the Deployment at spec.replicas", lambda: client.AppsV1Api(
        cluster.core.api_client).read_namespaced_deployment("scaled-serve", cluster.ns).spec.replicas == 2, timeout=60)
