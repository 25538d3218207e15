"""What leaves a Forge pod, and what reaches it, read from `forge render` on the examples as a platform
engineer reviews it: every NetworkPolicy rule names its peers (kube-dns, the configured store, the run's
own pods), nothing allows "any address" unless written out, and the metrics and serving ports answer only
the resource's namespace, the configured Prometheus namespace and a deployment's `network.allowFrom`."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.forge_render import ACME_PIPELINE, EXAMPLES, Rendered, forge_render

PIPELINE = EXAMPLES / "pipeline"
STORE_CIDR = "10.20.30.40/32"
CONFIGURED = {"FORGE_STORE_ENDPOINT": "s3.acme.internal", "FORGE_STORE_PEER_CIDRS": STORE_CIDR,
              "FORGE_PROMETHEUS_NAMESPACE": "monitoring"}
KUBE_DNS = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
OWN_NAMESPACE = {"podSelector": {}}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
DATASETS = ["handbook-corpus-prepare", "support-chats-prepare", "ticket-routing-tasks-prepare"]
RUNS = ["acme-1b-base-train", "acme-1b-support-train", "acme-1b-router-train"]
STORES = [run.removesuffix("-train") + "-rendezvous" for run in RUNS]
"""The policies of the runs' rendezvous store pods."""
SERVING = "acme-router-serve"


def _pod_labels(policy: dict[str, Any]) -> dict[str, str]:
    return dict(policy["spec"]["podSelector"]["matchLabels"])


@pytest.fixture(scope="module")
def configured() -> Rendered:
    out = forge_render(*ACME_PIPELINE, settings=CONFIGURED, namespace="ml")
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def unconfigured() -> Rendered:
    out = forge_render(*ACME_PIPELINE, namespace="ml")
    assert out.returncode == 0, out.stderr
    return out


def _opens_everything(peer: dict[str, Any]) -> bool:
    block = peer.get("ipBlock")
    return bool(block) and ipaddress.ip_network(block["cidr"], strict=False).prefixlen == 0


def test_every_egress_rule_names_its_peers(configured: Rendered) -> None:
    policies = configured.of_kind("NetworkPolicy")
    assert sorted(p["metadata"]["name"] for p in policies) == sorted([*DATASETS, *RUNS, *STORES, SERVING])
    for policy in policies:
        name, egress = policy["metadata"]["name"], policy["spec"]["egress"]
        assert all(rule.get("to") for rule in egress), f"{name}: a rule without peers allows any address"
        assert not any(_opens_everything(p) for rule in egress for p in rule["to"]), name
        kubernetes_validate.validate(policy, "1.30.0", strict=True)


@pytest.mark.parametrize("name", [*DATASETS, *RUNS, SERVING])
def test_dns_goes_to_kube_dns_and_the_store_to_its_cidr_only(configured: Rendered, name: str) -> None:
    egress = configured.policy(name)["spec"]["egress"]
    store = {"to": [{"ipBlock": {"cidr": STORE_CIDR}}], "ports": [{"protocol": "TCP", "port": 443}]}
    assert KUBE_DNS in egress and store in egress
    others = [r for r in egress if r not in (KUBE_DNS, store)]
    if name in RUNS:  # NCCL and the workers' store: the run's own pods; the rendezvous: the run's store pod
        labels = _pod_labels(configured.policy(name))
        store = _pod_labels(configured.policy(name.removesuffix("-train") + "-rendezvous"))
        assert others == [{"to": [{"podSelector": {"matchLabels": labels}}]},
                          {"to": [{"podSelector": {"matchLabels": store}}], "ports": [{"protocol": "TCP", "port": 29400}]}]
    else:
        assert others == []


def test_an_in_cluster_store_is_reached_by_its_namespace_and_pod_labels_on_its_pods_port() -> None:
    out = forge_render(PIPELINE / "01-datasets.yaml", namespace="ml", settings={
        "FORGE_STORE_ENDPOINT": "minio.storage.svc:80", "FORGE_STORE_SECURE": "false",
        "FORGE_STORE_PEER_NAMESPACE_LABELS": '{"kubernetes.io/metadata.name": "storage"}',
        "FORGE_STORE_PEER_POD_LABELS": '{"app": "minio"}', "FORGE_STORE_PEER_PORT": "9000"})
    assert out.returncode == 0, out.stderr
    egress = out.policy(DATASETS[0])["spec"]["egress"]
    assert egress == [KUBE_DNS, {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
                                         "podSelector": {"matchLabels": {"app": "minio"}}}],
                                 "ports": [{"protocol": "TCP", "port": 9000}]}]


@pytest.mark.parametrize("rendered", ["configured", "unconfigured"])
def test_a_rendezvous_store_answers_its_runs_pods_on_its_port_and_reaches_nothing(rendered: str,
                                                                                 request: pytest.FixtureRequest) -> None:
    out: Rendered = request.getfixturevalue(rendered)
    for run, name in zip(RUNS, STORES, strict=True):
        spec = out.policy(name)["spec"]
        assert spec["egress"] == [] and spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["ingress"] == [{"from": [{"podSelector": {"matchLabels": _pod_labels(out.policy(run))}}],
                                    "ports": [{"protocol": "TCP", "port": 29400}]}]


def test_without_a_store_peer_nothing_reaches_the_store_and_it_says_so(unconfigured: Rendered) -> None:
    assert "no store peer is configured" in unconfigured.stderr
    for policy in unconfigured.of_kind("NetworkPolicy"):
        if policy["metadata"]["name"] in STORES:  # no egress at all (the test above)
            continue
        egress = policy["spec"]["egress"]
        assert all(rule.get("to") for rule in egress)
        assert not any("ipBlock" in p for rule in egress for p in rule["to"]), "no address outside the cluster"
        assert KUBE_DNS in egress
        assert "denied" in policy["metadata"]["annotations"]["forge.ai/store-egress"]


def test_dns_peers_are_configurable() -> None:
    out = forge_render(PIPELINE / "01-datasets.yaml", namespace="ml", settings={
        "FORGE_STORE_PEER_CIDRS": STORE_CIDR, "FORGE_DNS_NAMESPACE_LABELS": '{"dns": "yes"}',
        "FORGE_DNS_POD_LABELS": "", "FORGE_DNS_PEER_CIDRS": "169.254.20.10/32"})
    assert out.returncode == 0, out.stderr
    dns = out.policy(DATASETS[0])["spec"]["egress"][0]
    assert dns["to"] == [{"ipBlock": {"cidr": "169.254.20.10/32"}}, {"namespaceSelector": {"matchLabels": {"dns": "yes"}}}]


def test_a_bad_store_peer_setting_is_refused_by_name() -> None:
    out = forge_render(*ACME_PIPELINE, settings={"FORGE_STORE_PEER_CIDRS": "10.0.0.1"})
    assert out.returncode == 2 and out.objects == []
    assert "store_peer_cidrs" in out.stderr and "'10.0.0.1' is not a CIDR" in out.stderr


def test_metrics_and_serving_ports_answer_the_namespace_and_prometheus_only(configured: Rendered) -> None:
    for name in DATASETS:
        assert configured.policy(name)["spec"]["ingress"] == []
    for name in RUNS:
        labels = _pod_labels(configured.policy(name))
        assert configured.policy(name)["spec"]["ingress"] == [
            {"from": [{"podSelector": {"matchLabels": labels}}]},
            {"from": [OWN_NAMESPACE, PROMETHEUS], "ports": [{"protocol": "TCP", "port": 9400}]}]
    assert configured.policy(SERVING)["spec"]["ingress"] == [
        {"from": [OWN_NAMESPACE, PROMETHEUS], "ports": [{"protocol": "TCP", "port": 8000}]}]


def test_without_a_prometheus_namespace_only_the_namespace_scrapes(unconfigured: Rendered) -> None:
    assert unconfigured.policy(SERVING)["spec"]["ingress"] == [
        {"from": [OWN_NAMESPACE], "ports": [{"protocol": "TCP", "port": 8000}]}]
    for name in RUNS:
        assert unconfigured.policy(name)["spec"]["ingress"][1]["from"] == [OWN_NAMESPACE]


EXTRA_EGRESS = [{"to": [{"ipBlock": {"cidr": "10.99.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 5000}]}]
ALLOW_FROM = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
               "podSelector": {"matchLabels": {"app": "envoy"}}}]


def _widened(tmp_path: Path, network: dict[str, Any]) -> Path:
    """A copy of the pipeline whose every resource carries `network` (the deployment also allowFrom)."""
    out = tmp_path / "pipeline"
    out.mkdir()
    for source in ACME_PIPELINE:
        shutil.copy(source, out)
    for path in out.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for doc in docs:
            extra = {"allowFrom": ALLOW_FROM} if doc["kind"] == "ForgeDeployment" else {}
            doc["spec"]["network"] = {**network, **extra}
        path.write_text(yaml.safe_dump_all(docs))
    return out


def test_extra_egress_appends_and_allow_from_adds_clients_and_neither_narrows(configured: Rendered,
                                                                            tmp_path: Path) -> None:
    widened = forge_render(_widened(tmp_path, {"extraEgress": EXTRA_EGRESS}), settings=CONFIGURED, namespace="ml")
    assert widened.returncode == 0, widened.stderr
    for name in [*DATASETS, *RUNS, SERVING]:
        before, after = configured.policy(name)["spec"], widened.policy(name)["spec"]
        assert after["egress"] == before["egress"] + EXTRA_EGRESS, name
        if name != SERVING:
            assert after["ingress"] == before["ingress"], name
    serving = widened.policy(SERVING)["spec"]["ingress"]
    assert serving == [{"from": [OWN_NAMESPACE, PROMETHEUS, *ALLOW_FROM], "ports": [{"protocol": "TCP", "port": 8000}]}]
    kubernetes_validate.validate(widened.policy(SERVING), "1.30.0", strict=True)


def test_a_bad_allow_from_peer_is_refused_naming_the_field(tmp_path: Path) -> None:
    manifest = tmp_path / "dep.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment", "metadata": {"name": "web"},
        "spec": {"modelRef": "tuned", "network": {"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}}}))
    out = forge_render(manifest, settings=CONFIGURED)
    assert out.returncode == 1 and out.objects == []
    assert "spec.network.allowFrom.0: set either ipBlock or namespaceSelector/podSelector" in out.stderr
