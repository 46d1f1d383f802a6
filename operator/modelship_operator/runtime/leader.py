"""Leader election with a coordination.k8s.io/v1 Lease: only the holder acts.

The semantics are client-go's (what kube-controller-manager and controller-runtime use):

- A Lease `<name>` in the operator's namespace names its holder (`holderIdentity`), how long
  a claim lasts (`leaseDurationSeconds`) and when it was last renewed (`renewTime`).
- A candidate takes the Lease when nobody holds it, or when the holder's record has not
  changed for `leaseDurationSeconds` as measured on the candidate's own monotonic clock (no
  comparison of wall clocks across machines). Every write is conditional on the
  resourceVersion read, so two candidates never both win.
- The holder renews every `retry_period`; when it could not renew for `renew_deadline`
  (shorter than the lease), or it sees another holder, it has lost the lease and must stop
  acting at once. Stopping cleanly, it releases the Lease so a successor need not wait.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

LEASE = ("coordination.k8s.io/v1", "Lease")


class LeaseAPI(Protocol):  # the part of kube.Kube this module uses
    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...
    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str, body: Any) -> dict[str, Any]: ...


def default_identity() -> str:
    """The pod's name (its hostname) plus a random part, unique per process like client-go's."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def micro_time(now: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str = "modelship-operator"
    identity: str = field(default_factory=default_identity)
    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @classmethod
    def scaled(cls, namespace: str, name: str, lease_seconds: float, identity: str | None = None) -> "LeaseConfig":
        """client-go's default proportions (15 s lease, 10 s renew deadline, 2 s retry) for any lease length."""
        return cls(namespace=namespace, name=name, identity=identity or default_identity(),
                   lease_seconds=lease_seconds, renew_deadline=lease_seconds * 2 / 3,
                   retry_period=lease_seconds * 2 / 15)


class LeaderElector:
    def __init__(self, kube: LeaseAPI, config: LeaseConfig, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.kube = kube
        self.config = config
        self._monotonic = monotonic
        self._wall = wall
        self._sleep = sleep
        self._observed: tuple[Any, ...] | None = None  # the holder's record as last read ...
        self._observed_at = 0.0  # ... and when it last changed, on our clock
        self._renewed_at: float | None = None  # our last successful acquire/renew; None: not leading

    @property
    def identity(self) -> str:
        return self.config.identity

    def is_leading(self) -> bool:
        """True while our last successful renewal is younger than the renew deadline."""
        return self._renewed_at is not None and self._monotonic() - self._renewed_at < self.config.renew_deadline

    # ---- one attempt

    async def try_acquire_or_renew(self) -> bool:
        """One attempt to take or keep the Lease; True when we hold it now. Raises nothing for
        a lost race (409) or a holder that is still alive; API errors propagate."""
        cfg = self.config
        now = self._wall()
        live = await self.kube.get(*LEASE, cfg.namespace, cfg.name)
        if live is None:
            body = {"apiVersion": LEASE[0], "kind": LEASE[1],
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                    "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": _seconds(cfg.lease_seconds),
                             "acquireTime": micro_time(now), "renewTime": micro_time(now), "leaseTransitions": 0}}
            if not await self._write(self.kube.create(body)):
                return False
            return self._won()
        spec = live.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, self._monotonic()
        if holder and holder != cfg.identity:
            duration = float(spec.get("leaseDurationSeconds") or cfg.lease_seconds)
            if self._monotonic() - self._observed_at < duration:
                self._renewed_at = None  # someone else holds a live lease
                return False
        transitions = int(spec.get("leaseTransitions") or 0)
        update: dict[str, Any] = {"holderIdentity": cfg.identity, "leaseDurationSeconds": _seconds(cfg.lease_seconds),
                                  "renewTime": micro_time(now)}
        if holder != cfg.identity:
            update.update(acquireTime=micro_time(now), leaseTransitions=transitions + 1)
        patch = {"metadata": {"resourceVersion": live["metadata"]["resourceVersion"]}, "spec": update}
        if not await self._write(self.kube.patch(*LEASE, cfg.namespace, cfg.name, patch)):
            return False
        if holder != cfg.identity:
            log.info("acquired the lease %s/%s as %s (previous holder: %s)", cfg.namespace, cfg.name, cfg.identity,
                     holder or "none")
        return self._won()

    def _won(self) -> bool:
        self._renewed_at = self._monotonic()
        return True

    async def _write(self, call: Awaitable[dict[str, Any]]) -> bool:
        """A conditional write; False when another candidate got there first."""
        try:
            result = await call
        except Exception as exc:
            if getattr(exc, "status", None) == 409:
                return False
            raise
        self._observed = None  # our own write: the next read is a fresh observation
        spec = result.get("spec") or {}
        return spec.get("holderIdentity") == self.config.identity

    # ---- loops

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until we hold the Lease (True) or `stop` is set (False)."""
        cfg = self.config
        waiting_for: str | None = None
        while stop is None or not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    return True
            except Exception as exc:  # noqa: BLE001 - an unreachable API server: keep trying
                log.warning("cannot reach the lease %s/%s: %s", cfg.namespace, cfg.name, exc)
            holder = (self._observed or ("",))[0]
            if holder and holder != waiting_for:
                log.info("waiting for the lease %s/%s held by %s", cfg.namespace, cfg.name, holder)
                waiting_for = holder
            await self._sleep(cfg.retry_period)
        return False

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew every retry period while we lead; call `on_lost` once and return when we no
        longer do (another holder, or no renewal within the renew deadline)."""
        cfg = self.config
        while True:
            await self._sleep(cfg.retry_period)
            try:
                if not await self.try_acquire_or_renew() and self._renewed_at is None:
                    break  # another holder took it
            except Exception as exc:  # noqa: BLE001 - retried until the renew deadline
                log.warning("cannot renew the lease %s/%s: %s", cfg.namespace, cfg.name, exc)
            if not self.is_leading():
                break
        self._renewed_at = None
        log.error("lost the lease %s/%s: this instance stops acting", cfg.namespace, cfg.name)
        on_lost()

    async def release(self) -> None:
        """Give the Lease up (we stop acting): a successor takes it at once instead of waiting
        for it to expire. Does nothing unless we hold it."""
        cfg = self.config
        was_leading, self._renewed_at = self._renewed_at is not None, None
        if not was_leading:
            return
        try:
            live = await self.kube.get(*LEASE, cfg.namespace, cfg.name)
            if live is None or (live.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            await self.kube.patch(*LEASE, cfg.namespace, cfg.name, {
                "metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_time(self._wall())}})
            log.info("released the lease %s/%s", cfg.namespace, cfg.name)
        except Exception as exc:  # noqa: BLE001 - it expires on its own
            log.warning("could not release the lease %s/%s (it expires on its own): %s", cfg.namespace, cfg.name, exc)


def _seconds(value: float) -> int:
    return max(1, round(value))
