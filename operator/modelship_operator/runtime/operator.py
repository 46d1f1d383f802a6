"""Running the operator: wait for the Lease, run kopf while holding it, stop acting when it is lost.

`Runtime` is what the kopf handlers share: the API client, the reconciler and the scheduler.
`operator()` is the process's main coroutine (`python -m modelship_operator`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from aiohttp import web

from .. import caches
from ..kube import Connection, Kube, KubeError
from ..settings import Settings
from ..spec import API_VERSION, KIND
from .kopf_wiring import run_kopf
from .leader import LeaderElector, LeaseConfig
from .reconciler import Reconciler, utcnow
from .scheduler import FOLLOW_UP, Key, Scheduler

log = logging.getLogger(__name__)

LEASE_CLIENT = "modelship-leader-election"  # user agent and field manager of the Lease requests


class LeadershipLost(RuntimeError):
    """This instance lost the Lease and stopped acting; the process should exit (and be restarted
    to wait for the Lease again), as controller-runtime's managers do."""


@dataclass
class Runtime:
    settings: Settings
    connection: Connection
    clock: Callable[[], datetime] = utcnow
    active: Callable[[], bool] = lambda: True  # False: not the leader, reconcile nothing
    kube: Kube | None = None  # made from `connection` unless given
    reconciler: Reconciler = field(init=False)
    scheduler: Scheduler = field(init=False)
    watches: caches.Watches | None = None
    _resume_task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        if self.kube is None:
            self.kube = Kube(self.connection, field_manager=self.settings.field_manager)
        self.reconciler = Reconciler(self.settings, self.kube, clock=self.clock)
        self.scheduler = Scheduler(self.reconciler, self.list_objects, resync_seconds=self.settings.resync_seconds,
                                   expected_errors=(KubeError,), active=self.active)

    async def list_objects(self) -> list[Key]:
        """Every ModelDeployment we watch; a namespace that cannot be listed is skipped this time."""
        assert self.kube is not None
        keys: list[Key] = []
        for namespace in self.settings.namespaces or (None,):
            try:
                items = await self.kube.list(API_VERSION, KIND, namespace)
            except KubeError as exc:
                log.warning("resync: cannot list ModelDeployments in %s: %s", namespace or "all", exc)
                continue
            keys.extend((item["metadata"]["namespace"], item["metadata"]["name"]) for item in items)
        return keys

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """A deleted ModelDeployment: drop its wake-up, back-off state and analysis baselines."""
        self.scheduler.forget(namespace, name)
        self.reconciler.forget(namespace, name)
        if uid:
            self.reconciler.memory.forget(uid)

    async def child_changed(self, namespace: str, name: str, trigger: str) -> None:
        """A child of this ModelDeployment changed (its controller's status, someone's edit): a
        follow-up, after the runs for objects that were themselves created or changed, and
        joined with any run of the object still waiting."""
        self.scheduler.enqueue(namespace, name, trigger, FOLLOW_UP)

    def model_deployment_changed(self, event_type: str, obj: dict) -> None:
        """Someone else created, changed or deleted a ModelDeployment, and the watch cache holds
        it: reconcile it (the workqueue coalesces), or forget a deleted one."""
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta.get("name") or ""
        if event_type == "DELETED":
            self.forget(namespace, name, meta.get("uid"))
        else:
            self.scheduler.enqueue(namespace, name, event_type.lower())

    async def start(self) -> None:
        # Reads from watch caches; a change to any child reconciles its owner, a change to a
        # ModelDeployment reconciles it (caches.py). Then every object once (resume): what
        # changed while no operator ran.
        self.watches = await caches.start(self.kube, self.settings.namespaces, self.child_changed,
                                          self.model_deployment_changed)
        self._resume_task = asyncio.create_task(self._resume(), name="modelship-resume")
        self.scheduler.start()

    async def _resume(self) -> None:
        keys = await self.list_objects()
        await asyncio.gather(*(self.scheduler.run(namespace, name, "resume", FOLLOW_UP) for namespace, name in keys))
        log.info("resumed: %d ModelDeployments reconciled", len(keys))

    async def stop(self) -> None:
        if self._resume_task is not None:
            self._resume_task.cancel()
            await asyncio.gather(self._resume_task, return_exceptions=True)
        await self.scheduler.stop()
        if self.watches is not None:
            await self.watches.stop()
        if self.kube is not None:
            await self.kube.close()


async def operator(settings: Settings, connection: Connection, *,
                   liveness_endpoint: str | None = None,
                   stop_flag: asyncio.Event | None = None) -> None:
    """Run the operator until stopped; with leader election, only while holding the Lease.

    Raises LeadershipLost when the Lease was lost: everything has stopped acting by then.
    """
    stop = stop_flag if stop_flag is not None else asyncio.Event()
    if not settings.leader_election:
        await run_kopf(Runtime(settings, connection), liveness_endpoint=liveness_endpoint, stop_flag=stop)
        return
    # Its own client and user agent: lease traffic is told apart from the reconciles' in API logs.
    lease_kube = Kube(connection, field_manager=LEASE_CLIENT)
    config = LeaseConfig.scaled(settings.lease_namespace or connection.namespace or "default",
                                settings.lease_name, settings.lease_seconds)
    elector = LeaderElector(lease_kube, config)
    try:
        log.info("leader election: lease %s/%s, identity %s", config.namespace, config.name, config.identity)
        async with _while_waiting(liveness_endpoint, stop):
            if not await elector.acquire(stop):
                return  # stopped before ever leading
        lost = asyncio.Event()
        kopf_stop = asyncio.Event()
        keeper = asyncio.create_task(elector.keep(lost.set), name="modelship-lease")
        relay = asyncio.create_task(_set_when_any(kopf_stop, stop, lost), name="modelship-stop-relay")
        try:
            rt = Runtime(settings, connection, active=elector.is_leading)
            await run_kopf(rt, liveness_endpoint=liveness_endpoint, stop_flag=kopf_stop)
        finally:
            for task in (keeper, relay):
                task.cancel()
            await asyncio.gather(keeper, relay, return_exceptions=True)
            if not lost.is_set():
                await elector.release()  # we no longer act: the next instance need not wait
        if lost.is_set():
            raise LeadershipLost(f"lost the lease {config.namespace}/{config.name}")
    finally:
        await lease_kube.close()


async def _set_when_any(target: asyncio.Event, *events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for w in waits:
            w.cancel()


@contextlib.asynccontextmanager
async def _while_waiting(liveness_endpoint: str | None, stop: asyncio.Event) -> AsyncIterator[None]:
    """While waiting for the Lease: answer the liveness probe (a waiting instance is healthy) and
    turn SIGTERM/SIGINT into a clean stop. kopf takes both over once it runs."""
    loop = asyncio.get_running_loop()
    signals = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
    runner = None
    if liveness_endpoint:
        url = urllib.parse.urlsplit(liveness_endpoint)
        app = web.Application()
        app.router.add_get(url.path or "/", lambda _: web.json_response({"waitingForLease": True}))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, url.hostname, url.port or 80, reuse_address=True).start()
    try:
        yield
    finally:
        if runner is not None:
            await runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
