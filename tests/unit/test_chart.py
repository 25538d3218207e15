"""The Helm chart, rendered and linted by Helm itself (helm-python-sdk embeds it), every object checked
against the Kubernetes schemas, and the chart's values checked the way a platform engineer meets them."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from forge_operator.plan.capabilities import FULLY_SUPPORTED, OLDEST, missing_capabilities
from forge_operator.settings import DEFAULT_TRAINER_IMAGE, OperatorSettings
from tests.support.chart import CHART, ROOT, render

# Kinds that are not built into Kubernetes; kubernetes-validate has no schema for them.
EXTERNAL_KINDS = {"ServiceMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}
ALL_ON = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                      "grafanaDashboard": {"enabled": True}}}


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of `kind`."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0])


def test_chart_lints_clean_in_strict_mode() -> None:
    for values in ({}, ALL_ON):
        report = helm.lint(CHART, values, strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [{}, ALL_ON, {"watchNamespaces": ["team-a", "team-b"]},
                                    {"replicaCount": 1, "leaderElection": {"enabled": False}}])
def test_every_rendered_object_is_valid_kubernetes(values: dict[str, Any]) -> None:
    objects = render(values)
    checked = 0
    for obj in objects:
        if obj["kind"] in EXTERNAL_KINDS:
            continue
        kubernetes_validate.validate(obj, "1.25.0", strict=True)
        checked += 1
    assert checked >= 8


def test_values_schema_rejects_typos_and_bad_types() -> None:
    chart = helm.Chart.load(CHART)
    chart.validate_schema({"replicaCount": 3})
    for bad in ({"replicaCont": 3}, {"metrics": {"serviceMonitor": {"enable": True}}},
                {"store": {"bucket": "forge", "endpiont": "minio:9000"}}, {"replicaCount": "two"},
                {"image": {"pullPolicy": "Sometimes"}}, {"reconcileInterval": 0}):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


def test_every_value_is_commented() -> None:
    """Each key in values.yaml has a comment right above it, unless a commented parent covers it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prev = next((p for p in reversed(lines[:i]) if p.strip()), "")
        documented = prev.strip().startswith("#") and len(prev) - len(prev.lstrip()) == indent
        nxt = next((n for n in lines[i + 1:] if n.strip()), "")
        is_parent = not m.group(3).strip() and len(nxt) - len(nxt.lstrip()) > indent
        if not is_parent and not documented and not any(d for _, d in stack):
            undocumented.append(m.group(2))
        stack.append((indent, documented))
    assert undocumented == []


def test_chart_crds_are_the_generated_ones_and_kept_on_uninstall() -> None:
    copies = {p.name: p.read_text() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert copies == {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}, "run `forge crds`"
    crds = [o for o in render() if o["kind"] == "CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in crds} == {
        "forgedatasets.forge.ai", "forgetrainingruns.forge.ai", "forgedeployments.forge.ai"}
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["spec"] == yaml.safe_load((ROOT / "crds" / f"forge.ai_{crd['spec']['names']['plural']}.yaml")
                                             .read_text())["spec"]
    assert not [o for o in render({"crds": {"enabled": False}}) if o["kind"] == "CustomResourceDefinition"]
    unkept = [o for o in render({"crds": {"keep": False}}) if o["kind"] == "CustomResourceDefinition"]
    assert unkept and all("annotations" not in o["metadata"] for o in unkept)


def test_kopf_peering_crds_ship_in_the_chart_crds_dir() -> None:
    docs = [d for d in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()) if d]
    assert {(d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs} == {
        ("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.25.0", strict=True)


def test_two_replicas_elect_a_leader_through_a_peering_object() -> None:
    objects = render()
    deploy = only(objects, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    c = container(objects)
    peering = only(objects, "ClusterKopfPeering")["metadata"]["name"]
    assert f"--peering={peering}" in c["args"] and "--standalone" not in c["args"]
    assert "--priority" in c["command"][2]  # replicas draw distinct priorities; equal ones would all pause
    namespaced = render({"watchNamespaces": ["team-a", "team-b"]})
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in namespaced if p["kind"] == "KopfPeering"} \
        == {("team-a", peering), ("team-b", peering)}
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(container(namespaced)["args"])


def test_standalone_needs_a_single_replica() -> None:
    objects = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    assert "--standalone" in container(objects)["args"]
    assert not [o for o in objects if "Peering" in o["kind"]]
    with pytest.raises(helm.HelmRenderError, match="leaderElection"):
        render({"replicaCount": 2, "leaderElection": {"enabled": False}})


def test_operator_pod_is_locked_down_and_probed() -> None:
    objects = render()
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]
    assert {"mountPath": "/tmp", "name": "tmp"} in c["volumeMounts"]


def test_default_images_are_the_ones_the_dockerfiles_build() -> None:
    c = container(render())
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert c["image"] == "ghcr.io/forge-ai/forge-operator:0.1.0"
    assert env["FORGE_TRAINER_IMAGE"] == DEFAULT_TRAINER_IMAGE
    pinned = container(render({"image": {"digest": "sha256:" + "a" * 64}}))
    assert pinned["image"] == "ghcr.io/forge-ai/forge-operator@sha256:" + "a" * 64


def test_operator_settings_come_from_the_values_and_keys_from_a_secret() -> None:
    values = {"store": {"endpoint": "minio.storage:9000", "secure": False, "bucket": "models", "region": "eu-1",
                        "existingSecret": "s3-keys", "workloadCredentialsSecret": "team-keys"},
              "reconcileInterval": 5, "metrics": {"port": 9100}, "trainer": {"image": "registry.local/trainer:1"}}
    c = container(render(values))
    plain = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    fields = {f"FORGE_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(plain) <= fields, f"env the operator ignores: {set(plain) - fields}"
    settings = OperatorSettings.from_env(plain)
    assert (settings.store_endpoint, settings.store_secure, settings.store_bucket, settings.store_region) == (
        "minio.storage:9000", False, "models", "eu-1")
    assert (settings.credentials_secret, settings.reconcile_interval, settings.metrics_port) == ("team-keys", 5, 9100)
    assert settings.trainer_image == "registry.local/trainer:1"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"FORGE_S3_ACCESS_KEY": {"name": "s3-keys", "key": "accessKey"},
                    "FORGE_S3_SECRET_KEY": {"name": "s3-keys", "key": "secretKey"}}
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in c["ports"]


def test_monitoring_objects_only_when_enabled() -> None:
    kinds = {o["kind"] for o in render()}
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    objects = render(ALL_ON)
    service = only(objects, "Service")
    monitor = only(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert only(objects, "PrometheusRule")["spec"] == rules
    dashboard = [o for o in objects if o["kind"] == "ConfigMap"]
    assert len(dashboard) == 1 and dashboard[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard[0]["data"]["forge.json"] == (CHART / "files" / "grafana-dashboard.json").read_text().rstrip("\n")


def test_every_operator_pod_is_scraped_on_its_own() -> None:
    """Issue 20 item 9: a load-balanced metrics Service answered with either replica's /metrics, and only
    the leader's has the resources' series. Headless, each pod is an endpoint (and a target) of its own."""
    objects = render(ALL_ON)
    service = only(objects, "Service")["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    endpoint = only(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    # the series' namespace/name are the Forge resource's; without honorLabels Prometheus renames them
    assert endpoint["honorLabels"] is True
    pod = only(objects, "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"  # annotation-based scraping too


def test_the_operator_knows_its_own_pod_for_its_start_up_event() -> None:
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container(render())["env"]
                if "fieldRef" in e.get("valueFrom", {})}
    assert downward == {"POD_ID": "metadata.name", "POD_NAME": "metadata.name",
                        "POD_NAMESPACE": "metadata.namespace", "POD_UID": "metadata.uid"}


@pytest.mark.parametrize(("kube_version", "rules"), [("v1.20.0", False), ("v1.24.17", False),
                                                     ("v1.25.0", True), ("v1.31.2", True)])
def test_crds_go_without_validation_rules_where_kubernetes_refuses_them(kube_version: str, rules: bool) -> None:
    """Issue 20 item 3: before 1.25 the API server refuses x-kubernetes-validations (unknown field), so
    the CRDs did not apply at all; the operator still checks every spec and sets InvalidSpec."""
    crds = [o for o in render(kube_version=kube_version) if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 3
    text = yaml.safe_dump(crds)
    assert ("x-kubernetes-validations" in text) is rules
    assert text.count("openAPIV3Schema") == 3  # the rest of each schema is still there
    assert "minNodes" in text and "maxNodes" in text


def test_the_chart_and_the_operator_state_one_kubernetes_range() -> None:
    """The chart installs from the oldest version the operator knows the degradations of (it names them at
    start-up), and lints clean there."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST[0]}.{OLDEST[1]}.0-0"
    assert missing_capabilities(FULLY_SUPPORTED) == [] and missing_capabilities(OLDEST)
    for values in ({}, ALL_ON):
        report = helm.lint(CHART, values, strict=True, kube_version="v1.20.0")
        assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
