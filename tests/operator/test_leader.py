"""Leader election over a coordination.k8s.io/v1 Lease, against the HTTP API server double.

In-process: two `LeaderElector`s, each with its own `Kube` client, race for one Lease.
End to end: two `python -m modelship_operator` processes; only the holder reconciles, and
when it dies the other takes over once the Lease has expired.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apiserver_double import ApiServerDouble

from modelship_operator.kube import Connection, Kube
from modelship_operator.runtime.leader import LEASE, LeaderElector, LeaseConfig

ROOT = Path(__file__).resolve().parents[2]
NS = "modelship-system"
MD = ("modelship.dev/v1alpha1", "ModelDeployment")


@pytest.fixture
def double(tmp_path: Path) -> Iterator[tuple[ApiServerDouble, Path]]:
    api = ApiServerDouble()
    api.start()
    api.call(lambda: api.store.create(api.store.type_for("v1", "Namespace"), None, {"metadata": {"name": NS}}))
    try:
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        api.stop()


def lease_of(api: ApiServerDouble) -> dict[str, Any]:
    (lease,) = api.snapshot(*LEASE, NS)
    return lease["spec"]


def elector(kubeconfig: Path, identity: str, lease_seconds: float = 1.0) -> LeaderElector:
    kube = Kube(Connection.from_kubeconfig(kubeconfig), field_manager=f"test-{identity}")
    return LeaderElector(kube, LeaseConfig.scaled(NS, "modelship-operator", lease_seconds, identity=identity))


async def close(*electors: LeaderElector) -> None:
    for e in electors:
        await e.kube.close()  # type: ignore[attr-defined]


def test_one_candidate_holds_the_lease_and_the_other_waits(double) -> None:
    api, kubeconfig = double

    async def go() -> None:
        a, b = elector(kubeconfig, "a", 15), elector(kubeconfig, "b", 15)
        assert await a.try_acquire_or_renew() is True
        assert await b.try_acquire_or_renew() is False
        assert a.is_leading() and not b.is_leading()
        spec = lease_of(api)
        assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
        first_renew = spec["renewTime"]
        await asyncio.sleep(0.01)
        assert await a.try_acquire_or_renew() is True  # a renewal
        assert lease_of(api)["renewTime"] > first_renew and lease_of(api)["holderIdentity"] == "a"
        assert await b.try_acquire_or_renew() is False  # still held: the record keeps changing
        await close(a, b)

    asyncio.run(go())


def test_a_silent_holder_is_replaced_only_after_the_lease_expires(double) -> None:
    api, kubeconfig = double

    async def go() -> None:
        a, b = elector(kubeconfig, "a"), elector(kubeconfig, "b")  # 1 s leases
        assert await a.try_acquire_or_renew()
        # a stops renewing (it died); b keeps trying every retry period
        start = time.monotonic()
        assert await b.acquire() is True
        waited = time.monotonic() - start
        assert 1.0 <= waited < 2.0, waited
        spec = lease_of(api)
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
        # a comes back: it sees another holder and no longer leads
        assert await a.try_acquire_or_renew() is False and not a.is_leading()
        await close(a, b)

    asyncio.run(go())


def test_release_lets_the_next_candidate_take_over_at_once(double) -> None:
    api, kubeconfig = double

    async def go() -> None:
        a, b = elector(kubeconfig, "a", 15), elector(kubeconfig, "b", 15)
        assert await a.try_acquire_or_renew()
        assert await b.try_acquire_or_renew() is False
        await a.release()
        assert not a.is_leading() and "holderIdentity" not in lease_of(api)
        assert await b.try_acquire_or_renew() is True  # no 15 s wait
        await a.release()  # not the holder: leaves the lease alone
        assert lease_of(api)["holderIdentity"] == "b"
        await close(a, b)

    asyncio.run(go())


def test_two_candidates_racing_for_a_free_lease_never_both_win(double) -> None:
    api, kubeconfig = double

    async def go() -> None:
        for _ in range(5):
            a, b = elector(kubeconfig, "a", 15), elector(kubeconfig, "b", 15)
            results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
            assert sorted(results) == [False, True]
            winner = a if results[0] else b
            assert lease_of(api)["holderIdentity"] == winner.identity
            await winner.release()
            await close(a, b)

    asyncio.run(go())


def test_the_holder_stops_leading_when_it_cannot_renew_in_time(double) -> None:
    api, kubeconfig = double

    async def go() -> None:
        a = elector(kubeconfig, "a", 3)  # renew deadline 2 s, retry every 0.4 s
        assert await a.try_acquire_or_renew()
        lost = asyncio.Event()
        keeper = asyncio.create_task(a.keep(lost.set))
        await asyncio.sleep(1.0)
        assert a.is_leading() and not lost.is_set()  # renewing fine
        for _ in range(20):
            api.fail_next(503, "injected-by-test: etcd unavailable", path_part="/leases/")
        started = time.monotonic()
        await asyncio.wait_for(lost.wait(), 5)
        assert not a.is_leading()
        assert time.monotonic() - started < 2.0 + 0.5  # within the renew deadline (+ one retry)
        await keeper
        await close(a)

    asyncio.run(go())


def test_the_holder_stops_leading_when_another_took_the_lease(double) -> None:
    api, kubeconfig = double

    async def go() -> None:
        a, b = elector(kubeconfig, "a", 3), elector(kubeconfig, "b", 3)
        assert await a.try_acquire_or_renew()
        lost = asyncio.Event()
        keeper = asyncio.create_task(a.keep(lost.set))
        # b wins after a partition: a sees the new holder at its next renewal
        assert await b.kube.patch(*LEASE, NS, "modelship-operator",  # type: ignore[attr-defined]
                                  {"spec": {"holderIdentity": "b"}})
        await asyncio.wait_for(lost.wait(), 2)
        assert not a.is_leading() and lease_of(api)["holderIdentity"] == "b"
        await keeper
        await close(a, b)

    asyncio.run(go())


# --------------------------------------------------------------------------- two operators


class Operator:
    def __init__(self, name: str, kubeconfig: Path, tmp: Path, environ: dict[str, str]) -> None:
        self.name = name
        self.log = tmp / f"operator-{name}.log"
        port = _free_port()
        self.liveness = f"http://127.0.0.1:{port}/healthz"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelship_operator", "--kubeconfig", str(kubeconfig),
                 "--liveness", self.liveness], stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=ROOT)

    def lines(self) -> list[dict]:
        out = []
        for raw in self.log.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"level": "raw", "message": raw})
        return out

    def reconciled(self) -> list[dict]:
        return [line for line in self.lines() if line.get("message", "").startswith("reconciled")]

    def live(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(self.liveness, timeout=2) as rsp:
                return rsp.status == 200
        except OSError:
            return False

    def tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-20:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(check, what: str, timeout: float = 30, *ops: Operator) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last {last!r}\n"
                         + "\n".join(f"--- {o.name}:\n{o.tail()}" for o in ops))


@pytest.mark.slow
def test_two_operators_only_the_lease_holder_reconciles_and_the_other_takes_over(double, tmp_path: Path) -> None:
    api, kubeconfig = double
    namespace = f"ml-{uuid.uuid4().hex[:6]}"

    async def setup() -> None:
        kube = Kube(Connection.from_kubeconfig(kubeconfig), field_manager="test")
        try:
            await kube.apply(yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text()))
            for ns in (namespace,):
                await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        finally:
            await kube.close()
    asyncio.run(setup())
    lease_seconds = 2.0
    environ = dict(os.environ, MODELSHIP_NAMESPACES=namespace, MODELSHIP_LOG_FORMAT="json",
                   MODELSHIP_RESYNC_SECONDS="1", MODELSHIP_LEASE_NAMESPACE=NS,
                   MODELSHIP_LEASE_SECONDS=str(lease_seconds), MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:e2e")
    a = Operator("a", kubeconfig, tmp_path, environ)
    b = None
    try:
        eventually(lambda: api.snapshot(*LEASE, NS), "operator a to take the lease", 30, a)
        holder_a = lease_of(api)["holderIdentity"]
        eventually(a.live, "operator a to be live", 30, a)
        b = Operator("b", kubeconfig, tmp_path, environ)
        eventually(b.live, "operator b to be live while it waits", 30, a, b)
        eventually(lambda: any("waiting for the lease" in line.get("message", "") for line in b.lines()),
                   "operator b to wait for the lease", 30, a, b)

        body = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
        body["metadata"]["namespace"] = namespace
        name = body["metadata"]["name"]
        api.call(lambda: api.store.create(api.store.type_for(*MD), namespace, body))
        eventually(lambda: api.snapshot("apps/v1", "Deployment", namespace), "the child Deployment", 30, a, b)
        time.sleep(2.5)  # a few resyncs (1 s) pass
        assert a.reconciled(), a.tail()
        # b has not even started kopf: nothing but the lease loop runs there
        assert {line.get("logger") for line in b.lines()} <= {"modelship_operator.runtime.operator",
                                                               "modelship_operator.runtime.leader"}, b.tail()
        assert lease_of(api)["holderIdentity"] == holder_a

        # a dies without releasing the lease: b takes over once it has expired, then acts
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        killed = time.monotonic()
        eventually(lambda: lease_of(api).get("holderIdentity") not in (None, holder_a),
                   "operator b to take the lease", 30, a, b)
        assert time.monotonic() - killed >= lease_seconds - 0.5  # not before the lease expired
        api.call(lambda: api.store.patch(api.store.type_for(*MD), namespace, name, "application/merge-patch+json",
                                         {"spec": {"replicas": 3}}))
        eventually(lambda: [d for d in api.snapshot("apps/v1", "Deployment", namespace)
                            if d["spec"]["replicas"] == 3], "operator b to scale the child", 30, a, b)
        eventually(b.reconciled, "operator b to log its reconcile", 10, a, b)

        # b stops cleanly: it releases the lease so a successor need not wait
        b.process.send_signal(signal.SIGTERM)
        assert b.process.wait(30) == 0, b.tail()
        assert "holderIdentity" not in lease_of(api)
        bad = [line for line in b.lines() if line.get("level") in ("error", "critical")]
        assert bad == [], bad
    finally:
        a.stop()
        if b is not None:
            b.stop()
