"""What reconciles a ModelDeployment: the operator's own watch cache, not kopf (real client, real
watch caches, the HTTP API server double).

- created, edited or deleted by someone else → reconciled (or forgotten) once the cache holds
  that version, so the reconcile never reads an older object than the one that triggered it;
- nothing is written to the object but its status (no kopf annotation, no finalizer);
- a spec change made while our status write is under way comes back inside our write's answer
  (no watch event of its own reaches anyone): the reconcile that wrote asks for another run.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from apiserver_double import ApiServerDouble
from modelship_operator import caches
from modelship_operator.kube import Connection, Kube
from modelship_operator.runtime.operator import Runtime
from modelship_operator.runtime.reconciler import Reconciler
from modelship_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NS = "ml"
MD = ("modelship.dev/v1alpha1", "ModelDeployment")


def _setup(double: ApiServerDouble) -> Any:
    store = double.store
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text())
    double.call(lambda: store.create(store.type_for("v1", "Namespace"), None, {"metadata": {"name": NS}}))
    double.call(lambda: store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, crd))
    return store.type_for(*MD)


def _md(name: str, replicas: int = 1) -> dict[str, Any]:
    md = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    md["metadata"] = {"name": name, "namespace": NS}
    md["spec"]["replicas"] = replicas
    return md


async def _eventually(check: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


def test_model_deployments_are_reconciled_from_the_watch_cache(apiserver: ApiServerDouble) -> None:
    double, store = apiserver, apiserver.store
    mds = _setup(double)
    deps = store.type_for("apps/v1", "Deployment")
    double.call(lambda: store.create(mds, NS, _md("before")))  # exists when the operator starts

    def deployments() -> dict[str, int]:
        return {d["metadata"]["ownerReferences"][0]["name"]: int(d["spec"]["replicas"])
                for d in double.call(lambda: store.list(deps, NS))}

    async def go() -> None:
        settings = Settings(namespaces=(NS,), resync_seconds=3600.0)  # no resync in this test
        rt = Runtime(settings, Connection(server=double.url, token=double.token))
        await rt.start()
        try:
            await _eventually(lambda: deployments().get("before") == 1, "the object found at start reconciled")
            double.call(lambda: store.create(mds, NS, _md("new", replicas=2)))
            await _eventually(lambda: deployments().get("new") == 2, "a new object reconciled")
            double.call(lambda: store.patch(mds, NS, "new", "application/merge-patch+json", {"spec": {"replicas": 3}}))
            await _eventually(lambda: deployments().get("new") == 3, "an edited spec reconciled")

            def status(name: str) -> dict[str, Any]:
                return double.call(lambda: store.get(mds, NS, name)).get("status") or {}
            await _eventually(lambda: status("new").get("observedGeneration") == 2, "status of generation 2")
            for name in ("before", "new"):  # we write status only: no annotation, no finalizer
                meta = double.call(lambda n=name: store.get(mds, NS, n))["metadata"]
                assert not meta.get("finalizers"), meta
                assert not [k for k in meta.get("annotations") or {} if "kopf" in k], meta
            writers = {r.user_agent.split("/")[0] for r in double.request_log
                       if r.verb in ("patch", "update", "create") and "/modeldeployments/" in r.path
                       and not r.path.split("?")[0].endswith("/status")}
            assert writers == set(), writers  # no metadata write to the objects at all

            rt.scheduler.schedule(NS, "new", 3000.0)  # a pending wake-up, to see it forgotten
            double.call(lambda: store.delete(mds, NS, "new"))
            await _eventually(lambda: (NS, "new") not in rt.scheduler.wakeups, "a deleted object forgotten")
        finally:
            await rt.stop()

    asyncio.run(go())


def test_a_spec_change_folded_into_our_status_write_is_reconciled_again(apiserver: ApiServerDouble) -> None:
    double, store = apiserver, apiserver.store
    mds = _setup(double)
    double.call(lambda: store.create(mds, NS, _md("m")))

    async def go() -> None:
        kube = Kube(Connection(server=double.url, token=double.token))
        seen: list[tuple[str, str]] = []

        async def nothing(*_: Any) -> None:
            return None
        watches = await caches.start(kube, (NS,), nothing,
                                     lambda event, obj: seen.append((event, obj["metadata"]["name"])))
        try:
            r = Reconciler(Settings(), kube)
            write_status = kube.patch_status

            async def racing(*args: Any, **kwargs: Any) -> dict[str, Any]:
                # Someone edits the spec just before our status write reaches the server.
                double.call(lambda: store.patch(mds, NS, "m", "application/merge-patch+json",
                                                {"spec": {"replicas": 3}}))
                return await write_status(*args, **kwargs)
            kube.patch_status = racing  # type: ignore[method-assign]
            assert await r(NS, "m", "added") == 0.0  # look again at once: the spec changed meanwhile
            kube.patch_status = write_status  # type: ignore[method-assign]
            await asyncio.sleep(0.5)
            assert seen == []  # the edit's watch event was our write's: it reached no one

            assert await r(NS, "m", "requeue") is None  # the edit reconciled: nothing more to do
            (dep,) = await kube.list("apps/v1", "Deployment", NS)
            assert dep["spec"]["replicas"] == 3
        finally:
            await watches.stop()
            await kube.close()

    asyncio.run(go())
