"""The alerts and the dashboard only query metrics the operator really exports (its own registry says
which), read the resources' series of the leading replica only, and the alerts the issue asks for are there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from forge_operator.metrics import REGISTRY

FILES = Path(__file__).resolve().parents[2] / "helm" / "forge-operator" / "files"
RULES = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
DASHBOARD = json.loads((FILES / "grafana-dashboard.json").read_text())
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}


def exported_metrics() -> set[str]:
    """Every sample name the operator's /metrics can serve."""
    names = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    names = set()
    for matcher in re.findall(r'__name__\s*=~?\s*"([^"]*)"', expr):
        names |= set(matcher.split("|"))
    expr = re.sub(r'"[^"]*"', "", expr)                       # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)                     # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                    # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = m.group(0), expr[m.end():].lstrip()
        if word.lower() in KEYWORDS or rest.startswith("("):   # keywords and functions
            continue
        names.add(word)
    return names


def rule_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in RULES["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    # Grafana's label_values(<selector>, <label>) queries the selector
    return exprs + [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["definition"])
                    for v in DASHBOARD["templating"]["list"] if v.get("definition")]


def test_the_parser_sees_metrics_and_not_functions() -> None:
    assert metric_names('sum by (kind) (rate(forge_reconcile_total{result="error"}[10m])) > 0.1') == {
        "forge_reconcile_total"}
    assert metric_names("(a_b < c_d) and (delta(a_b[30m]) == 0)") == {"a_b", "c_d"}


def test_every_alert_uses_only_exported_metrics() -> None:
    known = exported_metrics()
    rules = rule_exprs()
    assert len(rules) == 9, sorted(rules)  # the loop below checks each of them
    for alert, expr in rules.items():
        used = metric_names(expr)
        assert used, alert
        assert used <= known, f"{alert} reads metrics the operator does not export: {used - known}"


def test_every_dashboard_query_uses_only_exported_metrics() -> None:
    known = exported_metrics()
    used: set[str] = set()
    exprs = dashboard_exprs()
    assert len(exprs) >= len(DASHBOARD["panels"]), exprs  # every panel has at least one query
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"{expr!r} reads {names - known}"
        used |= names
    # the dashboard shows every per-resource gauge the operator exports
    assert {n for n in known if n.startswith(("forge_run_", "forge_dataset_", "forge_deployment_"))} <= used


LEADER_ONLY = "and on(instance) (forge_leader == 1)"
RESOURCE_SERIES = re.compile(r"\b(forge_resources|forge_store_reachable|forge_(run|dataset|deployment)_\w+)\b")


def test_every_read_of_a_resources_series_keeps_the_leaders_only() -> None:
    """Issue 20 item 9: every operator replica is scraped, and a replica that stopped leading must not
    count twice (a failed run alerting once per replica) or show a frozen value beside the leader's."""
    exprs = list(rule_exprs().values()) + [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    checked = 0
    for expr in exprs:
        reads = len(RESOURCE_SERIES.findall(expr))
        if reads:
            assert expr.count(LEADER_ONLY) == reads, expr
            checked += 1
    assert checked >= 20  # the alerts on runs, datasets and deployments, and every per-resource panel


def test_the_dashboard_shows_the_leader_and_the_missing_capabilities() -> None:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    assert "forge_leader" in exprs
    assert any("forge_server_capability_missing" in e for e in exprs)


def test_the_alerts_the_platform_needs_are_there() -> None:
    alerts = rule_exprs()
    assert {"ForgeTrainingRunFailed", "ForgeTrainingRunStalled", "ForgeDatasetFailed",
            "ForgeDeploymentUnavailable", "ForgeOperatorReconcileErrors", "ForgeOperatorNoLeader",
            "ForgeServerCapabilityMissing"} <= set(alerts)
    for group in RULES["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_dashboard_panels_are_laid_out_without_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
