"""The chart's networkPolicy values reach the workloads' NetworkPolicies: the values become the operator's
FORGE_* settings, and `forge render` with exactly that environment shows the store, DNS and Prometheus peers
they name. With no store peer, the install notes say that workloads cannot reach the store."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.support.chart import CHART, render
from tests.support.forge_render import EXAMPLES, forge_render


def _operator_env(values: dict[str, Any]) -> dict[str, str]:
    deploy = next(o for o in render(values) if o["kind"] == "Deployment")
    env = deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e and e["name"].startswith("FORGE_")}


def _notes(values: dict[str, Any]) -> str:
    rendered = helm.Chart.load(CHART).render(values, name="forge", namespace="forge-system", is_install=True)
    return str(rendered["forge-operator/templates/NOTES.txt"])


def test_the_values_become_the_peers_of_every_workload_policy() -> None:
    env = _operator_env({"store": {"endpoint": "minio.storage.svc:80", "secure": False},
                         "networkPolicy": {"store": {"namespaceLabels": {"kubernetes.io/metadata.name": "storage"},
                                                     "podLabels": {"app": "minio"}, "port": 9000},
                                           "dns": {"cidrs": ["169.254.20.10/32"]},
                                           "prometheusNamespace": "monitoring"}})
    out = forge_render(EXAMPLES / "pipeline" / "05-deployment.yaml", settings=env, namespace="ml")
    assert out.returncode == 0, out.stderr
    policy = out.policy("acme-router-serve")["spec"]
    assert policy["egress"] == [
        {"to": [{"ipBlock": {"cidr": "169.254.20.10/32"}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                 "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
         "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
                 "podSelector": {"matchLabels": {"app": "minio"}}}],
         "ports": [{"protocol": "TCP", "port": 9000}]}]
    assert policy["ingress"][0]["from"] == [
        {"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_by_default_no_store_peer_is_granted_and_the_notes_warn() -> None:
    out = forge_render(EXAMPLES / "pipeline" / "01-datasets.yaml", settings=_operator_env({}))
    assert out.returncode == 0, out.stderr
    assert all("ipBlock" not in p for pol in out.of_kind("NetworkPolicy") for r in pol["spec"]["egress"]
               for p in r["to"])
    assert "WARNING: networkPolicy.store names no peer" in _notes({})
    assert "WARNING" not in _notes({"networkPolicy": {"store": {"cidrs": ["10.0.0.0/8"]}}})


@pytest.mark.parametrize("bad", [
    {"networkPolicy": {"store": {"cidr": ["10.0.0.0/8"]}}},
    {"networkPolicy": {"store": {"cidrs": ["10.0.0.1"]}}},
    {"networkPolicy": {"store": {"podLabels": {"app": 3}}}},
    {"networkPolicy": {"prometheusNamespace": "Monitoring"}},
    {"networkPolicy": {"store": {"port": 70000}}},
])
def test_the_schema_rejects_typos_and_bad_peers(bad: dict[str, Any]) -> None:
    chart = helm.Chart.load(CHART)
    chart.validate_schema({"networkPolicy": {"store": {"cidrs": ["10.0.0.0/8"]}, "prometheusNamespace": "monitoring"}})
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)
