"""The runtime's Reconciler over the real client and watch caches (HTTP API server double):
a settled ModelDeployment is not rendered again while nothing it reads changes, and any change
to what it reads (a child edited by someone else, a new spec) is reconciled in full."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from apiserver_double import ApiServerDouble
from kube_double import deployment_status
from modelship_operator import caches
from modelship_operator.kube import Connection, Kube
from modelship_operator.runtime.reconciler import SETTLED_TTL_S, Reconciler
from modelship_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NS = "ml"


def _requests(double: ApiServerDouble, since: int) -> dict[str, int]:
    return {v: n for v, n in double.verbs(since, user_agent="modelship-operator").items() if v != "watch"}


def test_a_settled_object_costs_nothing_until_something_it_reads_changes(apiserver: ApiServerDouble) -> None:
    double, store = apiserver, apiserver.store
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text())
    double.call(lambda: store.create(store.type_for("v1", "Namespace"), None, {"metadata": {"name": NS}}))
    double.call(lambda: store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, crd))
    md = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    md["metadata"] = {"name": "m", "namespace": NS}
    mds = store.type_for("modelship.dev/v1alpha1", "ModelDeployment")
    deps = store.type_for("apps/v1", "Deployment")
    double.call(lambda: store.create(mds, NS, md))

    def deployment() -> dict[str, Any]:
        (dep,) = double.call(lambda: store.list(deps, NS))
        return dep

    def available() -> None:  # the deployment controller's part
        dep = deployment()
        want = int(dep["spec"]["replicas"])
        double.call(lambda: store.set_status(deps, NS, dep["metadata"]["name"], deployment_status(dep, want)))

    async def until(check) -> None:  # the watch cache has seen a change made by someone else
        for _ in range(100):
            if await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the watch cache never saw the change")

    async def go() -> None:
        kube = Kube(Connection(server=double.url, token=double.token))

        async def nothing(*_: Any) -> None:
            return None
        watches = await caches.start(kube, (NS,), nothing)
        clock = [0.0]
        r = Reconciler(Settings(), kube, monotonic=lambda: clock[0])
        try:
            await r(NS, "m", "change")  # children, status, RevisionCreated
            available()
            await until(lambda: _cached_replicas(kube, "readyReplicas", 2))
            await r(NS, "m", "deployment modified")  # status follows the Deployment
            await r(NS, "m", "resync")  # writes nothing: settled
            assert (NS, "m") in r.settled

            mark = len(double.request_log)
            for _ in range(3):
                assert await r(NS, "m", "resync") is None
            assert _requests(double, mark) == {}  # no read, no write: not even rendered

            # Someone scales our Deployment down: a changed input, reconciled in full and healed.
            name = deployment()["metadata"]["name"]
            double.call(lambda: store.patch(deps, NS, name, "application/merge-patch+json",
                                            {"spec": {"replicas": 0}}))
            await until(lambda: _cached_replicas(kube, "replicas", 0, spec=True))
            mark = len(double.request_log)
            await r(NS, "m", "resync")
            assert deployment()["spec"]["replicas"] == 2
            assert _requests(double, mark).get("patch", 0) >= 1

            # A new spec: reconciled in full (the Deployment gets 3 replicas).
            available()
            await until(lambda: _cached_replicas(kube, "readyReplicas", 2))
            await r(NS, "m", "resync")
            await r(NS, "m", "resync")
            assert (NS, "m") in r.settled
            double.call(lambda: store.patch(mds, NS, "m", "application/merge-patch+json", {"spec": {"replicas": 3}}))
            await until(lambda: _cached_generation(kube, 2))
            await r(NS, "m", "change")
            assert deployment()["spec"]["replicas"] == 3

            # Settled again, then reconciled in full once SETTLED_TTL_S has passed anyway.
            available()
            await until(lambda: _cached_replicas(kube, "readyReplicas", 3))
            await r(NS, "m", "resync")
            await r(NS, "m", "resync")
            assert (NS, "m") in r.settled
            settled_at = r.settled[(NS, "m")][1]
            clock[0] += SETTLED_TTL_S + 1
            await r(NS, "m", "resync")
            assert r.settled[(NS, "m")][1] > settled_at  # reconciled (and found settled) again
        finally:
            await watches.stop()
            await kube.close()

    asyncio.run(go())


async def _cached_replicas(kube: Kube, field: str, value: int, *, spec: bool = False) -> bool:
    (dep,) = await kube.list("apps/v1", "Deployment", NS)
    return (dep.get("spec" if spec else "status") or {}).get(field) == value


async def _cached_generation(kube: Kube, generation: int) -> bool:
    md = await kube.get("modelship.dev/v1alpha1", "ModelDeployment", NS, "m")
    return md is not None and md["metadata"].get("generation") == generation
