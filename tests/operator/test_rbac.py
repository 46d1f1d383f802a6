"""The operator's RBAC grants exactly what its code calls (issue 9 item 10): every (group,
resource, verb) the operator uses is granted, nothing else is, and deploy/ and the chart agree.

`USED` is the table of what the code calls, built from the code's own declarations where it
has them (the child kinds, the Lease) and otherwise annotated with the call site. A scan of the
operator's sources keeps the table honest: a new kind of API call fails here until its verb is
in the table (and then in both RBAC files).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from modelship_operator.kube import KNOWN
from modelship_operator.planning.children import owner_reference
from modelship_operator.reconcile import CHILD_KINDS
from modelship_operator.runtime.leader import LEASE
from modelship_operator.spec import ModelDeployment

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "modelship_operator"
CHART_FILES = ROOT / "charts" / "modelship" / "files"
Triple = tuple[str, str, str]


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def used() -> dict[Triple, str]:
    """(group, resource, verb) -> where the operator's code needs it."""
    table: dict[Triple, str] = {
        ("modelship.dev", "modeldeployments", "get"): "runtime/reconciler.py reads the object before a reconcile",
        ("modelship.dev", "modeldeployments", "list"): "watch cache (caches.py): LIST; resync and resume",
        ("modelship.dev", "modeldeployments", "watch"): "watch cache (caches.py): a change reconciles the object",
        ("modelship.dev", "modeldeployments", "patch"): "reconcile removes consumed action annotations "
                                                        "(JSON patch on metadata)",
        ("modelship.dev", "modeldeployments/status", "patch"): "reconcile writes status (merge patch)",
        ("modelship.dev", "modeldeployments/finalizers", "update"): "children's ownerReference has blockOwnerDeletion "
                                                                    "(OwnerReferencesPermissionEnforcement)",
        ("", "pods", "list"): "canary_metrics lists the canary's pods to scrape; reconcile lists them for restarts",
        ("", "events", "create"): "recorder.py / kube.create_event; kopf posts warnings",
        ("", "events", "get"): "recorder.py reads an Event series before bumping it",
        ("", "events", "patch"): "recorder.py bumps an Event series' count",
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "kopf's resource scanning",
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "kopf's resource scanning",
        ("", "namespaces", "list"): "kopf when watching a list of namespaces",
        ("", "namespaces", "watch"): "kopf when watching a list of namespaces",
    }
    for api_version, kind, _ in CHILD_KINDS:
        plural = KNOWN[(api_version, kind)].plural
        for verb, where in (("list", "watch caches (watchcache.py)"), ("watch", "watch caches (watchcache.py)"),
                            ("patch", "kube.apply: server-side apply"), ("create", "kube.apply creating the child"),
                            ("delete", "reconcile prunes it")):
            table[(_group(api_version), plural, verb)] = where
    return table


# The Lease (runtime/leader.py): a Role of its own, in the operator's namespace.
LEASE_USED = {(_group(LEASE[0]), "leases", verb) for verb in ("get", "create", "patch")}

# kube.Kube methods -> the verb each needs (None: no API request, or discovery, which any
# authenticated client may read).
METHOD_VERBS: dict[str, str | None] = {
    "get": "get", "list": "list", "owned": "list", "list_all": "list", "watch": "watch", "apply": "patch",
    "create": "create", "create_event": "create", "delete": "delete", "patch": "patch", "patch_metadata": "patch",
    "patch_status": "patch", "served": None, "resource": None, "path": None, "close": None,
}


def triples(rules: list[dict]) -> set[Triple]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def deploy_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]


def test_deploy_rbac_grants_exactly_what_the_code_calls() -> None:
    (role,) = [d for d in deploy_docs() if d["kind"] == "ClusterRole"]
    granted = triples(role["rules"])
    assert not any("resourceNames" in rule for rule in role["rules"])
    assert granted - set(used()) == set(), "granted but never used"
    assert set(used()) - granted == set(), "used but not granted"
    assert not any("*" in part for triple in granted for part in triple)


def test_the_chart_grants_the_same_rules() -> None:
    namespaced = triples(yaml.safe_load((CHART_FILES / "rbac-namespaced-rules.yaml").read_text()))
    cluster = triples(yaml.safe_load((CHART_FILES / "rbac-cluster-rules.yaml").read_text()))
    assert namespaced | cluster == set(used())
    # Cluster-wide in namespaced mode: only what is cluster-scoped, and read-only.
    cluster_scoped = {info.plural for info in KNOWN.values() if not info.namespaced}
    assert {r for _, r, _ in cluster} <= cluster_scoped and {v for _, _, v in cluster} <= {"get", "list", "watch"}
    assert not {r for _, r, _ in namespaced} & cluster_scoped


def test_the_lease_role_covers_leader_election_and_nothing_else() -> None:
    (role,) = [d for d in deploy_docs() if d["kind"] == "Role"]
    assert triples(role["rules"]) == LEASE_USED
    chart = (ROOT / "charts" / "modelship" / "templates" / "rbac.yaml").read_text()
    lease_rules = yaml.safe_load(chart.split("-leader-election\n", 1)[1].split("rules:\n", 1)[1].split("---", 1)[0]
                                 .replace("{{ $fullname }}", "release"))
    assert triples(lease_rules) == LEASE_USED


def test_blocking_owner_references_come_with_the_finalizers_right() -> None:
    md = ModelDeployment.from_body({"metadata": {"name": "m", "namespace": "ml", "uid": "u"},
                                    "spec": {"model": {"uri": "file:///m/model.pt", "version": "1"}}})
    assert owner_reference(md)["blockOwnerDeletion"] is True
    assert ("modelship.dev", "modeldeployments/finalizers", "update") in used()


def test_every_kind_of_api_call_in_the_operator_is_in_the_table() -> None:
    """The kube methods the operator's own code calls (not the CLI, which runs with the user's
    credentials) each need a verb the table grants somewhere; a new method fails here."""
    calls: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py", "kube.py"):
            continue
        calls |= set(re.findall(r"\bkube\.(\w+)\(", path.read_text()))
    unknown = calls - set(METHOD_VERBS)
    assert not unknown, f"new kube calls {unknown}: add their verbs to USED and both RBAC files"
    verbs = {v for _, _, v in used()} | {v for _, _, v in LEASE_USED}
    assert {METHOD_VERBS[c] for c in calls} - {None} <= verbs
    # Every child kind the operator applies is one the caches watch and reconcile prunes.
    assert {(_group(a), KNOWN[(a, k)].plural) for a, k, _ in CHILD_KINDS} <= {(g, r) for g, r, _ in used()}
