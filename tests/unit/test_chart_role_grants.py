"""The chart's RBAC is least privilege, checked both ways: it grants exactly GRANTS below, with no
wildcards, and GRANTS is exactly what the operator's code calls (found by reading the code: the Kube facade's
calls, the kinds the renderers emit for server-side apply, the kinds Kopf handlers watch) plus what Kopf
itself calls: every grant is used and every use is granted. Watching every namespace, one ClusterRole holds
it all; with watchNamespaces, a Role per namespace holds the namespaced part and the ClusterRole only the
cluster-scoped part. tests/integration/test_chart_install.py then runs the operator under these roles
against a real API server."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

from forge_operator.api import API_VERSION, KINDS
from tests.support.chart import render

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "forge_operator"

# (apiGroup, resource) -> verbs. The one table the chart's templates/rbac.yaml must match.
GRANTS: dict[tuple[str, str], set[str]] = {
    **{("forge.ai", k.plural): {"get", "list", "watch", "patch"} for k in KINDS},
    **{("forge.ai", f"{k.plural}/status"): {"patch"} for k in KINDS},
    ("batch", "jobs"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"create", "patch"},
    ("", "services"): {"create", "patch"},
    ("", "pods"): {"list"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create"},
    ("networking.k8s.io", "networkpolicies"): {"create", "patch"},
    ("apps", "deployments"): {"get", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"create", "patch", "delete"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    ("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"},
    ("kopf.dev", "kopfpeerings"): {"list", "watch", "patch"},
}
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"),
                  ("kopf.dev", "clusterkopfpeerings")}

# What Kopf itself calls, whatever the handlers do: it scans CRDs and namespaces, posts Events about the
# resources, and keeps its peering objects (leader election).
KOPF_NEEDS: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    ("", "events"): {"create"},
    ("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"},
    ("kopf.dev", "kopfpeerings"): {"list", "watch", "patch"},
}

# Plural resource names of the kinds the operator touches; a kind missing here fails the test.
PLURALS = {"Job": "jobs", "ConfigMap": "configmaps", "Service": "services", "Secret": "secrets", "Pod": "pods",
           "Deployment": "deployments", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
           "NetworkPolicy": "networkpolicies", "ClusterKopfPeering": "clusterkopfpeerings",
           "KopfPeering": "kopfpeerings", **{k.kind: k.plural for k in KINDS}}
FACADE_VERBS = {"get": {"get"}, "list": {"list"}, "patch": {"patch"}, "delete": {"delete"},
                "apply": {"create", "patch"},  # server-side apply is a PATCH that may create
                "create": {"create"}, "patch_status": {"patch"}}


def _module_of(path: Path) -> Any:
    rel = path.relative_to(ROOT / "operator").with_suffix("")
    return importlib.import_module(".".join(rel.parts))


def _value(node: ast.expr, module: Any) -> str | None:
    """A call argument's string value: a literal, or a module-level constant (GROUP, KIND, API_VERSION)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and isinstance(getattr(module, node.id, None), str):
        return str(getattr(module, node.id))
    if isinstance(node, ast.Attribute) and node.attr == "hpa_api_version":
        return "autoscaling/v2"  # the plan's version of the HPA (v2 or v2beta2): the group is what is granted
    return None


def _resource(api_version: str, kind: str) -> tuple[str, str]:
    assert kind in PLURALS, f"the operator uses kind {kind}: add its plural to PLURALS and a grant to GRANTS"
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return group, PLURALS[kind]


def derive_needs() -> tuple[dict[tuple[str, str], set[str]], list[str]]:
    """(resource -> verbs) that the operator's code calls, and the calls whose kind the scan could not
    resolve (each must be covered another way, e.g. patch_status on a handled kind)."""
    needs: dict[tuple[str, str], set[str]] = {}
    unresolved: list[str] = []
    handled: set[str] = set()

    def add(res: tuple[str, str], verbs: set[str]) -> None:
        needs.setdefault(res, set()).update(verbs)

    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "kube":
            continue
        tree = ast.parse(path.read_text())
        module = None
        for node in ast.walk(tree):
            # Kube.read_pod_log: the one read of a container's log (a failure's status quotes its last lines)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "read_pod_log":
                add(("", "pods/log"), {"get"})
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
                via_kube = (isinstance(target, ast.Attribute) and target.attr == "kube") or (
                    isinstance(target, ast.Name) and target.id == "kube")
                if via_kube and node.func.attr in FACADE_VERBS:
                    module = module or _module_of(path)
                    verbs = FACADE_VERBS[node.func.attr]
                    if node.func.attr in ("apply", "create"):
                        continue  # the applied and created kinds are the rendered ones, below
                    else:
                        api_version, kind = (_value(a, module) for a in node.args[:2])
                        if node.func.attr in ("patch_status", "get") and kind is None and api_version == API_VERSION:
                            continue  # the status of a Forge kind, or its re-read: every handled kind's, below
                        if api_version is None or kind is None:
                            unresolved.append(f"{path.name}:{node.lineno} {node.func.attr}")
                            continue
                        group, plural = _resource(api_version, kind)
                        add((group, plural + "/status" if node.func.attr == "patch_status" else plural), verbs)
                # @kopf.on.create(GROUP, VERSION, PLURAL), @kopf.timer(...), @kopf.daemon(...)
                func = ast.unparse(node.func)
                if func.startswith(("kopf.on.", "kopf.timer", "kopf.daemon")) and len(node.args) >= 3:
                    module = module or _module_of(path)
                    kopf_group, kopf_plural = _value(node.args[0], module), _value(node.args[2], module)
                    if kopf_group and kopf_plural:
                        handled.add(kopf_plural)
                        add((kopf_group, kopf_plural), {"list", "watch", "patch"})
            # manifests the renderers build for server-side apply: {"apiVersion": "...", "kind": "...", ...}
            if path.parent.name == "render" and isinstance(node, ast.Dict):
                keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
                        if isinstance(k, ast.Constant)}
                kind_node, version_node = keys.get("kind"), keys.get("apiVersion")
                if isinstance(kind_node, ast.Constant) and isinstance(version_node, ast.Constant):
                    add(_resource(str(version_node.value), str(kind_node.value)), FACADE_VERBS["apply"])
    for plural in handled:  # publish_status patches the status of whatever kind it is handed; reconcile re-reads it
        add(("forge.ai", f"{plural}/status"), {"patch"})
        add(("forge.ai", plural), {"get"})
    return needs, unresolved


def role_grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs of a Role or ClusterRole."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def cluster_role_grants(objects: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    return role_grants(next(o for o in objects if o["kind"] == "ClusterRole"))


def test_cluster_role_has_no_wildcards_and_grants_exactly_the_table() -> None:
    role = next(o for o in render() if o["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    assert cluster_role_grants(render()) == GRANTS


def test_the_scan_finds_the_operators_calls() -> None:
    """Guards the scan itself: it must see the calls the dataset handler is known to make."""
    needs, _ = derive_needs()
    assert {"get", "delete", "create", "patch"} <= needs[("batch", "jobs")]
    assert {"create", "patch"} <= needs[("", "configmaps")]
    assert {"list", "watch", "patch"} <= needs[("forge.ai", "forgedatasets")]
    assert "patch" in needs[("forge.ai", "forgedatasets/status")]


def test_the_table_covers_every_call_in_the_code_and_kopfs_own() -> None:
    needs, unresolved = derive_needs()
    # a call whose kind is a variable is a gap in the scan (patch_status of a Forge kind is covered above)
    assert unresolved == []
    for source in (needs, KOPF_NEEDS):
        missing = {res: verbs - GRANTS.get(res, set()) for res, verbs in source.items()
                   if verbs - GRANTS.get(res, set())}
        assert missing == {}, f"the ClusterRole lacks these verbs: {missing}"


def test_every_grant_is_used() -> None:
    """The other direction: a verb nothing calls is a grant an attacker holding the token could use."""
    needs, _ = derive_needs()
    used = {res: needs.get(res, set()) | KOPF_NEEDS.get(res, set()) for res in {*needs, *KOPF_NEEDS}}
    unused = {res: verbs - used.get(res, set()) for res, verbs in GRANTS.items() if verbs - used.get(res, set())}
    assert unused == {}, f"granted but never called: {unused}"


def test_watched_namespaces_get_roles_and_the_cluster_role_keeps_only_cluster_scoped_grants() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]}, namespace="forge-system", release="forge")
    namespaced = {res: verbs for res, verbs in GRANTS.items() if res not in CLUSTER_SCOPED}
    assert set(cluster_role_grants(objects)) <= CLUSTER_SCOPED
    # a namespaced operator leads through a KopfPeering per namespace, never the cluster-wide one
    assert cluster_role_grants(objects) == {res: GRANTS[res] for res in CLUSTER_SCOPED
                                            if res != ("kopf.dev", "clusterkopfpeerings")}
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"
             if o["metadata"]["namespace"] != "forge-system"}
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"
                if o["metadata"]["namespace"] != "forge-system"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, role in roles.items():
        assert role_grants(role) == namespaced
        assert bindings[ns]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                           "name": role["metadata"]["name"]}
        assert bindings[ns]["subjects"] == [{"kind": "ServiceAccount", "name": "forge-forge-operator",
                                             "namespace": "forge-system"}]


def test_the_operator_cannot_read_secrets() -> None:
    """Workload pods get store keys through secretKeyRef (the kubelet reads them); the operator never does."""
    assert ("", "secrets") not in cluster_role_grants(render())


def test_the_operators_own_namespace_may_get_its_start_up_event() -> None:
    """The start-up Event (capabilities the API server lacks) is about the operator's own Pod: where the
    operator does not watch its own namespace, a Role there grants exactly that Event and nothing else."""
    objects = render({"watchNamespaces": ["team-a"]}, namespace="forge-system", release="forge")
    own = [o for o in objects if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["namespace"] == "forge-system"]
    role = next(o for o in own if o["kind"] == "Role")
    assert role_grants(role) == {("", "events"): {"create"}}
    binding = next(o for o in own if o["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "forge-forge-operator"
    # watching its own namespace, the Role there already grants Events: no second one
    watched = render({"watchNamespaces": ["forge-system"]}, namespace="forge-system", release="forge")
    assert [o["metadata"]["name"] for o in watched if o["kind"] == "Role"] == ["forge-forge-operator"]
