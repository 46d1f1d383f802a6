"""Watch caches (watchcache.py, caches.py) against the HTTP API server double: reads cost no
request, our own writes are seen at once and do not come back as changes, changes by others
reach the owner's reconcile, a 410 re-lists."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiserver_double import ApiServerDouble
from modelship_operator import caches, watchcache
from modelship_operator.kube import Connection, Kube
from modelship_operator.watchcache import KindCache, WatchCache

ROOT = Path(__file__).resolve().parents[2]
NS = "ml"
OURS = {"app.kubernetes.io/managed-by": "modelship-operator", "app.kubernetes.io/instance": "m"}


def owner(uid: str = "uid-1", name: str = "m") -> list[dict]:
    return [{"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment", "name": name, "uid": uid,
             "controller": True}]


def service(name: str, *, labels: dict | None = None, refs: list | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels if labels is not None else OURS}
    if refs is not None:
        meta["ownerReferences"] = refs
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {"a": "b"}, "ports": [{"name": "http", "port": 80}]}}


def reads(double: ApiServerDouble, since: int) -> dict[str, int]:
    return {v: n for v, n in double.verbs(since, user_agent="modelship-operator").items() if v != "watch"}


@pytest.fixture
def double(apiserver: ApiServerDouble) -> ApiServerDouble:
    apiserver.call(lambda: apiserver.store.create(apiserver.store.type_for("v1", "Namespace"), None,
                                                  {"metadata": {"name": NS}}))
    return apiserver


def run(double: ApiServerDouble, body) -> Any:
    async def go() -> Any:
        kube = Kube(Connection(server=double.url, token=double.token))
        try:
            return await body(kube)
        finally:
            if kube.cache is not None:
                await kube.cache.stop()
            await kube.close()
    return asyncio.run(go())


async def _eventually(check, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def test_reads_are_served_from_the_cache_with_no_request(double: ApiServerDouble) -> None:
    store = double.store
    double.call(lambda: store.create(store.type_for("v1", "Service"), NS, service("a", refs=owner())))
    double.call(lambda: store.create(store.type_for("v1", "Service"), NS, service("copy")))  # labels only
    double.call(lambda: store.create(store.type_for("v1", "Service"), NS, service("other", labels={"x": "y"})))

    async def body(kube: Kube) -> None:
        cache = WatchCache(kube, namespaces=(NS,), label_selectors={("v1", "Service"): "app.kubernetes.io/managed-by=modelship-operator"})
        kube.cache = cache
        cache.start("v1", "Service")
        await cache.wait_synced()
        mark = len(double.request_log)
        owned = await kube.owned("v1", "Service", NS, "uid-1", OURS)
        listed = await kube.list("v1", "Service", NS, OURS)
        assert reads(double, mark) == {}
        assert [o["metadata"]["name"] for o in owned] == ["a"]  # the copy keeps the labels, not the owner
        assert sorted(o["metadata"]["name"] for o in listed) == ["a", "copy"]
        assert "managedFields" not in owned[0]["metadata"]
        # A read the label-filtered cache cannot answer goes to the API server.
        assert [o["metadata"]["name"] for o in await kube.list("v1", "Service", NS, {"x": "y"})] == ["other"]
        assert reads(double, mark) == {"list": 1}
        # Set-based terms are the API server's to evaluate (the cache serves k=v terms only).
        assert sorted(o["metadata"]["name"] for o in await kube.list("v1", "Service", NS, "x notin (y)")) == [
            "a", "copy"]
        assert reads(double, mark) == {"list": 2}
        # Callers may change what they got; the cache does not change with them.
        owned[0]["spec"]["selector"] = {}
        assert (await kube.owned("v1", "Service", NS, "uid-1"))[0]["spec"]["selector"] == {"a": "b"}
    run(double, body)


def test_our_writes_are_seen_at_once_and_only_others_changes_are_reported(double: ApiServerDouble) -> None:
    store = double.store
    changes: list[tuple[str, str, str]] = []

    async def body(kube: Kube) -> None:
        cache = WatchCache(kube, namespaces=(NS,), on_change=lambda k, t, o: changes.append((k, t, o["metadata"]["name"])))
        kube.cache = cache
        cache.start("v1", "Service")
        await cache.wait_synced()
        applied = await kube.apply(service("a", refs=owner()))
        # Read-your-writes: no watch event needed.
        assert (await kube.get("v1", "Service", NS, "a"))["metadata"]["resourceVersion"] == \
            applied["metadata"]["resourceVersion"]
        await asyncio.sleep(0.5)  # the watch event of our own write arrives: not a change
        assert changes == []
        double.call(lambda: store.patch(store.type_for("v1", "Service"), NS, "a", "application/merge-patch+json",
                                        {"spec": {"selector": {"a": "elsewhere"}}}))
        await _eventually(lambda: changes)
        assert changes == [("Service", "MODIFIED", "a")]
        live = await kube.get("v1", "Service", NS, "a")
        assert live["spec"]["selector"] == {"a": "elsewhere"}
        await kube.delete("v1", "Service", NS, "a")
        assert await kube.get("v1", "Service", NS, "a") is None
        await asyncio.sleep(0.5)
        assert changes == [("Service", "MODIFIED", "a")]  # our delete is not reported either
    run(double, body)


def test_a_watch_answered_410_lists_again_and_reports_what_changed(double: ApiServerDouble,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchcache, "WATCH_TIMEOUT_S", 1)
    store = double.store
    changes: list[str] = []

    async def body(kube: Kube) -> None:
        cache = WatchCache(kube, namespaces=(NS,), on_change=lambda k, t, o: changes.append(o["metadata"]["name"]))
        kube.cache = cache
        cache.start("v1", "Service")
        await cache.wait_synced()
        mark = len(double.request_log)
        double.fail_next(410, "too old resource version", method="GET", path_part=f"/namespaces/{NS}/services",
                         reason="Expired")
        # The watch ends (1 s), its resumption is answered 410: the cache lists again ...
        await _eventually(lambda: double.verbs(mark, user_agent="modelship-operator").get("list"), timeout=10)
        # ... and watches on from there: nothing is missed.
        double.call(lambda: store.create(store.type_for("v1", "Service"), NS, service("late", refs=owner())))
        await _eventually(lambda: "late" in changes, timeout=10)
        assert [o["metadata"]["name"] for o in await kube.owned("v1", "Service", NS, "uid-1")] == ["late"]
    run(double, body)


def test_the_cache_never_steps_back() -> None:
    cache = KindCache("v1", "Service", NS, None)

    def obj(rv: int, name: str = "a") -> dict:
        return {"metadata": {"name": name, "namespace": NS, "resourceVersion": str(rv),
                             "ownerReferences": owner()}}
    assert cache.upsert(obj(5))
    assert not cache.upsert(obj(3))  # a late watch event of an older version
    assert cache.objects[(NS, "a")].obj()["metadata"]["resourceVersion"] == "5"
    cache.remove(obj(5), tombstone=True)  # we deleted it
    assert not cache.upsert(obj(5))  # its last MODIFIED event, still on the way
    assert cache.by_owner == {}
    assert cache.upsert(obj(9))  # created again, later
    assert cache.by_owner == {"uid-1": {(NS, "a")}}


def test_a_changed_child_reconciles_its_owner_once_per_burst(double: ApiServerDouble) -> None:
    """caches.start: what the operator runs. Changes by others to any child kind reconcile the
    ModelDeployment in its controller ownerReference; a burst coalesces; our writes do not."""
    store = double.store
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text())
    double.call(lambda: store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, crd))
    md = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    md["metadata"] = {"name": "m", "namespace": NS}
    # a real owner: the garbage collector deletes a child whose owner does not exist
    uid = double.call(lambda: store.create(store.type_for("modelship.dev/v1alpha1", "ModelDeployment"), NS, md))[
        "metadata"]["uid"]
    calls: list[tuple[str, str, str]] = []

    async def reconcile_owner(namespace: str, name: str, trigger: str) -> None:
        calls.append((namespace, name, trigger))

    async def body(kube: Kube) -> None:
        watches = await caches.start(kube, (NS,), reconcile_owner)
        try:
            await kube.apply(service("m", refs=owner(uid)))
            await asyncio.sleep(0.5)
            assert calls == []
            svc = store.type_for("v1", "Service")

            def burst() -> None:
                for port in (81, 82, 83):
                    store.patch(svc, NS, "m", "application/json-patch+json",
                                [{"op": "replace", "path": "/spec/ports/0/port", "value": port}])
            double.call(burst)
            await _eventually(lambda: calls)
            await asyncio.sleep(0.3)
            assert calls[0][:2] == (NS, "m") and calls[0][2].startswith("service m modified")
            assert len(calls) <= 2  # coalesced (a second run only for changes after the first began)
            # Not controlled by a ModelDeployment: nobody to reconcile.
            calls.clear()
            double.call(lambda: store.create(svc, NS, service("stray")))
            await asyncio.sleep(0.5)
            assert calls == []
        finally:
            await watches.stop()
    run(double, body)
