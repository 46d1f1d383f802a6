"""The doubles behave like the API server where the operator's correctness depends on it:
server-side apply field ownership and conflicts, optimistic concurrency, label selectors,
garbage collection, CRD validation. Each test here failed on the doubles before they were
made honest (apply never conflicted, dropped fields regardless of other managers, ignored a
resourceVersion in apply and JSON patch, and the collector deleted any dependent of a
deleted owner, even one with another owner)."""
from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from apiserver_double import ApiServerDouble
from kube_double import ApiError, ObjectStore, selector_matches
from modelship_operator.kube import Connection, Kube, PermanentError, TemporaryError

DEP = {"apiVersion": "apps/v1", "kind": "Deployment",
       "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "a"}},
       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "img:1"}]}}}}
MERGE = "application/merge-patch+json"


@pytest.fixture
def store() -> ObjectStore:
    return ObjectStore()


def dep_type(store: ObjectStore) -> Any:
    return store.type_for("apps/v1", "Deployment")


def managers(obj: dict) -> dict[tuple[str, str], dict]:
    return {(f["manager"], f["operation"]): f["fieldsV1"] for f in obj["metadata"]["managedFields"]}


# --------------------------------------------------------------------------- server-side apply


def test_apply_of_a_field_another_manager_changed_conflicts_unless_forced(store: ObjectStore) -> None:
    rtype = dep_type(store)
    store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator")
    store.patch(rtype, "default", "web", MERGE, {"spec": {"replicas": 0}}, manager="kubectl")  # kubectl scale
    owned = managers(store.get(rtype, "default", "web"))
    assert owned[("kubectl", "Update")] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in owned[("operator", "Apply")]["f:spec"]

    with pytest.raises(ApiError) as err:
        store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator")
    assert err.value.status == 409 and 'conflict with "kubectl"' in err.value.message
    assert ".spec.replicas" in err.value.message
    assert store.get(rtype, "default", "web")["spec"]["replicas"] == 0  # nothing written

    healed = store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator", force=True)
    assert healed["spec"]["replicas"] == 2
    owned = managers(healed)
    assert ("kubectl", "Update") not in owned  # it owned nothing else
    assert owned[("operator", "Apply")]["f:spec"]["f:replicas"] == {}


def test_applying_the_same_value_another_manager_owns_is_no_conflict(store: ObjectStore) -> None:
    rtype = dep_type(store)
    store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator")
    store.patch(rtype, "default", "web", MERGE, {"spec": {"replicas": 2}}, manager="kubectl")  # no change
    other = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
             "spec": {"replicas": 2}}
    store.apply(rtype, "default", "web", other, "helm")  # the same value: shared, no conflict
    owned = managers(store.get(rtype, "default", "web"))
    assert owned[("helm", "Apply")] == {"f:spec": {"f:replicas": {}}}
    assert owned[("operator", "Apply")]["f:spec"]["f:replicas"] == {}


def test_a_field_we_stop_applying_goes_only_if_nobody_else_owns_it(store: ObjectStore) -> None:
    rtype = dep_type(store)
    body = copy.deepcopy(DEP)
    body["metadata"]["labels"] = {"app": "web", "tier": "a", "team": "ml"}
    store.apply(rtype, "default", "web", body, "operator")
    store.apply(rtype, "default", "web", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
        "name": "web", "labels": {"team": "ml"}}}, "argocd")  # shares the team label
    store.patch(rtype, "default", "web", MERGE, {"metadata": {"labels": {"owner": "alice"}}}, manager="kubectl")

    store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator")  # without the team label
    labels = store.get(rtype, "default", "web")["metadata"]["labels"]
    assert labels == {"app": "web", "tier": "a", "team": "ml", "owner": "alice"}

    slim = copy.deepcopy(DEP)
    del slim["metadata"]["labels"]["tier"]
    store.apply(rtype, "default", "web", slim, "operator")  # tier was ours alone: removed
    assert store.get(rtype, "default", "web")["metadata"]["labels"] == {"app": "web", "team": "ml",
                                                                         "owner": "alice"}


def test_a_no_op_apply_changes_neither_the_object_nor_its_managed_fields(store: ObjectStore) -> None:
    rtype = dep_type(store)
    first = store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator")
    again = store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator")
    assert again == first


# --------------------------------------------------------------------------- optimistic concurrency


def test_writes_naming_a_stale_resource_version_conflict(store: ObjectStore) -> None:
    rtype = dep_type(store)
    created = store.apply(rtype, "default", "web", copy.deepcopy(DEP), "operator")
    stale = created["metadata"]["resourceVersion"]
    store.patch(rtype, "default", "web", MERGE, {"spec": {"replicas": 3}}, manager="kubectl")

    stale_apply = copy.deepcopy(DEP)
    stale_apply["metadata"]["resourceVersion"] = stale
    for write in (
        lambda: store.apply(rtype, "default", "web", copy.deepcopy(stale_apply), "operator", force=True),
        lambda: store.patch(rtype, "default", "web", "application/json-patch+json",
                            [{"op": "replace", "path": "/metadata/resourceVersion", "value": stale},
                             {"op": "replace", "path": "/spec/replicas", "value": 1}]),
        lambda: store.patch(rtype, "default", "web", MERGE,
                            {"metadata": {"resourceVersion": stale}, "spec": {"replicas": 1}}),
        lambda: store.patch(rtype, "default", "web", MERGE,
                            {"metadata": {"resourceVersion": stale}, "spec": {"replicas": 1}}, subresource="scale"),
    ):
        with pytest.raises(ApiError) as err:
            write()
        assert err.value.status == 409
    assert store.get(rtype, "default", "web")["spec"]["replicas"] == 3
    current = store.get(rtype, "default", "web")["metadata"]["resourceVersion"]
    stale_apply["metadata"]["resourceVersion"] = current
    assert store.apply(rtype, "default", "web", stale_apply, "operator", force=True)["spec"]["replicas"] == 2


# --------------------------------------------------------------------------- label selectors


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ("app=web", {"app": "web"}, True),
    ("app==web,tier!=b", {"app": "web"}, True),  # != matches a missing key
    ("tier in (a, b)", {"tier": "b"}, True),
    ("tier in (a,b)", {}, False),
    ("tier notin (a,b)", {}, True),
    ("tier notin (a,b)", {"tier": "a"}, False),
    ("tier", {"tier": ""}, True),
    ("!tier", {"tier": "a"}, False),
    ("!tier,app in (web),modelship.dev/role", {"app": "web", "modelship.dev/role": "canary"}, True),
])
def test_label_selectors_equality_and_set_based(selector: str, labels: dict, matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


@pytest.mark.parametrize("bad", ["app=web=x", "tier in a,b", "=web", "app in ()", "a b"])
def test_a_malformed_selector_is_a_400_even_over_an_empty_list(store: ObjectStore, bad: str) -> None:
    with pytest.raises(ApiError) as err:
        store.list(dep_type(store), "default", bad)
    assert err.value.status == 400


def test_selectors_over_http_list_and_watch(apiserver: ApiServerDouble, double_kubeconfig: Path) -> None:
    async def go() -> tuple[list[str], list[str], Exception]:
        kube = Kube(Connection.from_kubeconfig(double_kubeconfig), field_manager="test")
        try:
            for name, tier in (("a", "x"), ("b", "y"), ("c", None)):
                body = copy.deepcopy(DEP)
                body["metadata"].update(name=name, namespace="ml", labels={"app": "web"} | (
                    {"tier": tier} if tier else {}))
                await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}}) \
                    if name == "a" else None
                await kube.apply(body)
            notin = [d["metadata"]["name"] for d in await kube.list("apps/v1", "Deployment", "ml", "tier notin (x)")]
            missing = [d["metadata"]["name"] for d in await kube.list("apps/v1", "Deployment", "ml", "!tier")]
            try:
                await kube.list("apps/v1", "Deployment", "ml", "tier in x")
            except PermanentError as exc:
                return notin, missing, exc
            raise AssertionError("a malformed selector was accepted")
        finally:
            await kube.close()

    notin, missing, exc = asyncio.run(go())
    assert notin == ["b", "c"] and missing == ["c"]
    assert isinstance(exc, PermanentError) and exc.status == 400


# --------------------------------------------------------------------------- garbage collection


def owner_ref(obj: dict, controller: bool = True) -> dict:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": controller, "blockOwnerDeletion": True}


def cm(store: ObjectStore, name: str, *owners: dict, controller: bool = True) -> dict:
    rtype = store.type_for("v1", "ConfigMap")
    refs = [owner_ref(o, controller and i == 0) for i, o in enumerate(owners)]
    return store.create(rtype, "default", {"metadata": {"name": name, **({"ownerReferences": refs} if refs else {})}})


def names(store: ObjectStore) -> list[str]:
    return [o["metadata"]["name"] for o in store.list(store.type_for("v1", "ConfigMap"), "default")]


def test_gc_background_deletes_dependents_whose_every_owner_is_gone(store: ObjectStore) -> None:
    one, two = cm(store, "owner-1"), cm(store, "owner-2")
    cm(store, "child-of-1", one)
    cm(store, "child-of-both", one, two)
    cm(store, "grandchild", store.get(store.type_for("v1", "ConfigMap"), "default", "child-of-1"))
    store.delete(store.type_for("v1", "ConfigMap"), "default", "owner-1")
    assert names(store) == ["child-of-both", "owner-2"]  # grandchild went with its owner
    kept = store.get(store.type_for("v1", "ConfigMap"), "default", "child-of-both")
    assert [r["name"] for r in kept["metadata"]["ownerReferences"]] == ["owner-2"]  # the dangling ref dropped
    store.delete(store.type_for("v1", "ConfigMap"), "default", "owner-2")
    assert names(store) == []


def test_gc_orphan_keeps_dependents_without_the_reference(store: ObjectStore) -> None:
    owner = cm(store, "owner")
    cm(store, "child", owner)
    store.delete(store.type_for("v1", "ConfigMap"), "default", "owner", propagation="Orphan")
    child = store.get(store.type_for("v1", "ConfigMap"), "default", "child")
    assert "ownerReferences" not in child["metadata"]


def test_gc_foreground_removes_dependents_before_the_owner(store: ObjectStore) -> None:
    owner = cm(store, "owner")
    cm(store, "child", owner)
    mark = store.rv
    store.delete(store.type_for("v1", "ConfigMap"), "default", "owner", propagation="Foreground")
    assert names(store) == ["child", "owner"]  # until the collector runs
    store.collect_garbage()
    events = [(e.type, e.obj["metadata"]["name"], e.obj["metadata"].get("finalizers")) for e in store.history
              if e.rv > mark]
    assert events[0] == ("MODIFIED", "owner", ["foregroundDeletion"])
    assert [e[:2] for e in events[1:]] == [("DELETED", "child"), ("DELETED", "owner")]
    assert names(store) == []


def test_gc_collects_a_child_created_for_an_owner_already_gone(store: ObjectStore) -> None:
    owner = cm(store, "owner")
    store.delete(store.type_for("v1", "ConfigMap"), "default", "owner")
    cm(store, "late-child", owner)  # e.g. a reconcile that read the owner just before its deletion
    store.collect_garbage()
    assert names(store) == []


# --------------------------------------------------------------------------- CRD validation


def test_a_crd_without_a_structural_schema_is_rejected(store: ObjectStore) -> None:
    rtype = store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    crd = {"metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True}]}}
    with pytest.raises(ApiError) as err:
        store.create(rtype, None, copy.deepcopy(crd))
    assert err.value.status == 422 and "schemas are required" in err.value.message
    crd["spec"]["versions"][0]["schema"] = {"openAPIV3Schema": {"type": "object", "properties": {
        "metadata": {"type": "object"}, "spec": {"type": "object"}}}}  # an object without properties
    with pytest.raises(ApiError) as err:
        store.create(rtype, None, copy.deepcopy(crd))
    assert err.value.status == 422 and ".spec: object without properties" in err.value.message


def test_a_crd_in_a_protected_group_needs_the_approval_annotation(store: ObjectStore) -> None:
    """As the real API server (seen there: an HTTPRoute CRD without it got a 422)."""
    rtype = store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    schema = {"openAPIV3Schema": {"type": "object", "properties": {
        "metadata": {"type": "object"}, "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}
    crd = {"metadata": {"name": "widgets.gateway.networking.k8s.io"},
           "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": schema}]}}
    with pytest.raises(ApiError) as err:
        store.create(rtype, None, copy.deepcopy(crd))
    assert err.value.status == 422 and "protected groups must have approval annotation" in err.value.message
    crd["metadata"]["annotations"] = {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api"}
    store.create(rtype, None, copy.deepcopy(crd))
    other = copy.deepcopy(crd)  # any other group needs nothing
    other["metadata"] = {"name": "widgets.example.com"}
    other["spec"]["group"] = "example.com"
    store.create(rtype, None, other)


# --------------------------------------------------------------------------- over HTTP, through kube.py


def test_http_apply_conflict_force_and_managers_from_user_agents(apiserver: ApiServerDouble,
                                                                 double_kubeconfig: Path) -> None:
    conn = Connection.from_kubeconfig(double_kubeconfig)
    body = copy.deepcopy(DEP)
    body["metadata"]["namespace"] = "ml"

    async def go() -> tuple[Exception, dict]:
        ours, theirs = Kube(conn, field_manager="modelship-operator"), Kube(conn, field_manager="kubectl")
        try:
            await ours.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}})
            await ours.apply(body)
            await theirs.patch("apps/v1", "Deployment", "ml", "web", {"spec": {"replicas": 0}})
            try:
                await ours.apply(body, force=False)
            except TemporaryError as exc:  # 409
                conflict: Exception = exc
            else:
                raise AssertionError("no conflict")
            return conflict, await ours.apply(body)  # force=True by default
        finally:
            await ours.close()
            await theirs.close()

    conflict, healed = asyncio.run(go())
    assert isinstance(conflict, TemporaryError) and conflict.status == 409 and "kubectl" in str(conflict)
    assert healed["spec"]["replicas"] == 2
    assert {f["manager"] for f in healed["metadata"]["managedFields"]} == {"modelship-operator"}
