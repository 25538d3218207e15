"""Every workload (dataset, training, deployment) is fenced by a NetworkPolicy: egress only to kube-dns, the
object store's configured peers and (training) its own peers; `spec.network.extraEgress` appends rules and
never narrows. (tests/unit/test_network_policy_peers.py reads the same policies from `forge render`.)"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from forge_operator.api import ForgeDataset, ForgeDeployment, ForgeTrainingRun
from forge_operator.api.errors import spec_error_message
from forge_operator.plan.dataset import plan_dataset
from forge_operator.plan.deployment import plan_deployment
from forge_operator.plan.training import ResolvedRefs, plan_training_run
from forge_operator.render.dataset import render_dataset
from forge_operator.render.deployment import render_deployment
from forge_operator.render.training import render_training
from forge_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(store_endpoint="minio.storage:9000", store_secure=False, store_bucket="acme-forge",
                            store_peer_namespace_labels={"kubernetes.io/metadata.name": "storage"},
                            store_peer_pod_labels={"app": "minio"})
META = {"namespace": "ml", "uid": "u-1", "generation": 1}
EXTRA = [
    {"to": [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.5.0/24"]}}],
     "ports": [{"port": 443}, {"protocol": "UDP", "port": 8000, "endPort": 8010}]},
    {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "registry"}},
             "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["mirror"]}]}}]},
]
DNS = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
       "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
STORE = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
                 "podSelector": {"matchLabels": {"app": "minio"}}}],
         "ports": [{"protocol": "TCP", "port": 9000}]}


def _dataset_objs(network: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"source": {"uri": "s3://raw/handbook/"}}
    if network is not None:
        spec["network"] = network
    ds = ForgeDataset.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset",
                                      "metadata": {"name": "handbook", **META}, "spec": spec})
    return render_dataset(plan_dataset(ds, SETTINGS))


def _training_objs(network: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny"}}
    if network is not None:
        spec["network"] = network
    run = ForgeTrainingRun.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
                                           "metadata": {"name": "base", **META}, "spec": spec})
    return render_training(plan_training_run(run, SETTINGS, ResolvedRefs(dataset_manifest="s3://b/m.json")))


def _deployment_objs(network: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"modelRef": "tuned"}
    if network is not None:
        spec["network"] = network
    dep = ForgeDeployment.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment",
                                          "metadata": {"name": "chat", **META}, "spec": spec})
    return render_deployment(plan_deployment(dep, SETTINGS, "s3://acme-forge/forge/ml/x/model", "sha256:a"))


RENDERERS = {"dataset": _dataset_objs, "training": _training_objs, "deployment": _deployment_objs}


def _policy(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The policy fencing the workload's own pods (a training run's store pod has a second one)."""
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"
                 and o["metadata"]["labels"]["app.kubernetes.io/component"] != "rendezvous"]
    return policy


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_every_workload_is_fenced_to_dns_and_the_store(kind: str) -> None:
    objs = RENDERERS[kind]()
    policy = _policy(objs)
    assert objs[0] is policy, "the fence is applied before the pods exist"
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert DNS in spec["egress"] and STORE in spec["egress"]
    # every rule names its destination: no rule means "any address"
    assert all(r.get("to") for r in spec["egress"])
    workload = next(o for o in objs if o["kind"] in ("Job", "Deployment")
                    and o["metadata"]["labels"]["app.kubernetes.io/component"] != "rendezvous")
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items(), "the policy selects the pods"
    kubernetes_validate.validate(policy, "1.30.0", strict=True)


def test_only_training_pods_reach_their_peers_and_only_serving_pods_take_clients() -> None:
    train = _policy(_training_objs())["spec"]
    peers = {"podSelector": {"matchLabels": train["podSelector"]["matchLabels"]}}
    assert {"to": [peers]} in train["egress"]
    prepare = _policy(_dataset_objs())["spec"]
    assert prepare["ingress"] == [] and prepare["egress"] == [DNS, STORE]
    serve = _policy(_deployment_objs())["spec"]
    assert serve["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000}]}]


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_extra_egress_is_appended_and_never_narrows(kind: str) -> None:
    default = _policy(RENDERERS[kind]())["spec"]
    widened = _policy(RENDERERS[kind]({"extraEgress": EXTRA}))["spec"]
    assert widened["egress"][: len(default["egress"])] == default["egress"]
    assert widened["ingress"] == default["ingress"] and widened["podSelector"] == default["podSelector"]
    extra = widened["egress"][len(default["egress"]):]
    assert extra == [
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.5.0/24"]}}],
         "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 8000, "endPort": 8010}]},
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "registry"}},
                 "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["mirror"]}]}}]},
    ]
    kubernetes_validate.validate(_policy(RENDERERS[kind]({"extraEgress": EXTRA})), "1.30.0", strict=True)


@pytest.mark.parametrize(("rule", "message"), [
    ({"to": []}, r"spec\.network\.extraEgress\.0\.to: List should have at least 1 item"),
    ({"ports": [{"port": 443}]}, r"spec\.network\.extraEgress\.0\.to: Field required"),
    ({"to": [{}]}, r"spec\.network\.extraEgress\.0\.to\.0: name a destination"),
    ({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
     r"spec\.network\.extraEgress\.0\.to\.0: set either ipBlock or namespaceSelector/podSelector"),
    ({"to": [{"ipBlock": {"cidr": "10.0.0.300/8"}}]},
     r"spec\.network\.extraEgress\.0\.to\.0\.ipBlock\.cidr: '10\.0\.0\.300/8' is not a CIDR"),
    ({"to": [{"ipBlock": {"cidr": "10.0.0.1"}}]}, r"ipBlock\.cidr: '10\.0\.0\.1' is not a CIDR .*prefix length"),
    ({"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]},
     r"ipBlock: except: 192\.168\.0\.0/16 is not inside cidr 10\.0\.0\.0/8"),
    ({"to": [{"podSelector": {}}], "ports": [{"port": 70000}]},
     r"spec\.network\.extraEgress\.0\.ports\.0\.port: Input should be less than or equal to 65535"),
    ({"to": [{"podSelector": {}}], "ports": [{"port": 90, "endPort": 80}]},
     r"ports\.0: endPort \(80\) must not be below port \(90\)"),
    ({"to": [{"podSelector": {}}], "ports": [{"port": 53, "protocol": "ICMP"}]},
     r"ports\.0\.protocol: Input should be 'TCP', 'UDP' or 'SCTP'"),
])
def test_bad_extra_egress_names_the_field(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ForgeTrainingRun.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
                                         "metadata": {"name": "base", **META},
                                         "spec": {"stage": "pretrain", "datasetRef": "corpus",
                                                  "model": {"size": "tiny"}, "network": {"extraEgress": [rule]}}})
    assert re.search(message, spec_error_message(exc.value)), spec_error_message(exc.value)
