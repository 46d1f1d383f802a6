"""Where traffic goes: the replica split between stable and canary, the traffic mode, and in
gateway mode the HTTPRoute and its per-role Services. Pure.

In ``replicas`` mode one Service selects the pods of every revision, so the share of traffic a
revision gets is its share of the *ready* pods. The rollout asks for a weight; this module turns
the total (``spec.replicas``, which the HPA writes through ``/scale``) and that weight into pod
counts per role, and gates the counts on readiness so that

* canary pods never take traffic before they are ready (the Service only routes to ready
  endpoints, and the gateway weight is held back until canary pods are ready), and
* the stable revision never drops below what the split needs: it gives up a pod only once a
  ready canary pod has taken its place (the rolling-update "maxUnavailable: 0" rule).

Rounding (decided here; DESIGN.md is silent):

* ``canary = round_half_up(total * weight / 100)``, clamped to ``1 .. total-1`` while
  ``0 < weight < 100`` so both revisions really serve; ``stable = total - canary``.
* ``total == 1`` with ``0 < weight < 100``: one stable pod *and* one canary pod, i.e. the pods
  exceed ``spec.replicas`` by one (effective weight 50). Argo Rollouts' basic canary does the
  same: it rounds both sides up (``ceil``), so a one-replica Rollout at 10% runs 1 + 1 pods. Unlike
  Argo, for ``total >= 2`` we keep the sum exactly at ``total`` (Argo may surge by one there too).
* ``total == 0`` (scaled to zero): no pods, effective weight 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..spec import ModelDeployment
from .children import REVISION_LABEL
from .observed import Observed
from .pods import RevisionPlan


@dataclass(frozen=True)
class Split:
    stable: int
    canary: int
    effective_weight: int  # 0..100: the canary's share of these pods, rounded


@dataclass(frozen=True)
class ScalePlan:
    """Desired replica counts per role, gated on readiness, and the weights they realise."""

    requested_weight: int  # the rollout step's weight, clamped to 0..100
    target: Split  # where the split converges once every pod is ready
    stable_replicas: int  # desired .spec.replicas of the stable Deployment now
    canary_replicas: int  # desired .spec.replicas of the canary Deployment now
    effective_weight: int  # the canary's share of READY pods now: what status must report
    route_weight: int  # gateway mode: the canary backendRef weight that ready pods can carry

    @property
    def converged(self) -> bool:
        """True when the desired counts are the target split (no readiness gate holds them)."""
        return (self.stable_replicas, self.canary_replicas) == (self.target.stable, self.target.canary)


def _round_half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with halves going up, in exact integer arithmetic."""
    return (2 * numerator + denominator) // (2 * denominator)


def _share(canary: int, stable: int) -> int:
    pods = canary + stable
    return 0 if pods <= 0 else _round_half_up(100 * canary, pods)


def split_replicas(total: int, weight: int) -> Split:
    """Split ``total`` pods so the canary's share approximates ``weight`` percent."""
    total = max(0, int(total))
    weight = min(100, max(0, int(weight)))
    if total == 0:
        return Split(0, 0, 0)
    if weight == 0:
        return Split(total, 0, 0)
    if weight == 100:
        return Split(0, total, 100)
    if total == 1:
        return Split(1, 1, 50)  # surge by one so the split is real (see module docstring)
    canary = min(total - 1, max(1, _round_half_up(total * weight, 100)))
    stable = total - canary
    return Split(stable, canary, _share(canary, stable))


def scale_plan(total: int, weight: int, canary_ready: int, stable_ready: int) -> ScalePlan:
    """Desired counts per role for this reconcile, given the pods ready right now.

    * The canary Deployment gets its target count at once: new pods are not routed to before
      their readiness probe passes, and a lower weight (abort, cancel) removes canary pods now.
    * The stable Deployment keeps ``total - canary_ready`` pods while that is more than its
      target, so ready capacity never drops below ``total`` while the canary starts up.
    * ``effective_weight`` is the canary's share of the ready pods (what the Service realises).
    * ``route_weight`` (gateway mode) gives the canary the share of its ready pods only: each
      ready canary pod carries what the split planned for one canary pod, never more than asked.
    """
    weight = min(100, max(0, int(weight)))
    total = max(0, int(total))
    canary_ready = max(0, int(canary_ready))
    stable_ready = max(0, int(stable_ready))
    target = split_replicas(total, weight)

    canary_replicas = target.canary
    stable_replicas = max(target.stable, min(total, total - canary_ready))

    # Pods beyond the desired count are on their way out; don't credit them.
    serving_canary = min(canary_ready, canary_replicas)
    serving_stable = min(stable_ready, stable_replicas)
    effective = _share(serving_canary, serving_stable)

    route = 0 if target.canary == 0 else min(weight, _round_half_up(weight * serving_canary, target.canary))
    return ScalePlan(weight, target, stable_replicas, canary_replicas, effective, route)


# --------------------------------------------------------------------------- mode and routes


@dataclass(frozen=True)
class RouteBackend:
    service: str  # the per-role Service `<name>-stable` / `<name>-canary`
    role: str
    hash: str  # the revision its Service selects
    weight: int


@dataclass(frozen=True)
class RoutePlan:
    """Gateway mode: one HTTPRoute `<name>` with weighted backendRefs (and an optional mirror)."""

    parent_refs: tuple[Mapping, ...]
    hostnames: tuple[str, ...]
    backends: tuple[RouteBackend, ...]
    mirror_service: str | None = None  # the canary Service, when mirroring
    mirror_percent: int | None = None


MODES = ("replicas", "gateway")


def wants_gateway(md: ModelDeployment) -> bool:
    """The spec asks for gateway mode (explicitly, or `auto` with a gateway to attach to)."""
    rollout = md.spec.rollout
    return rollout.gateway is not None and rollout.traffic in ("auto", "gateway")


def traffic_mode(md: ModelDeployment, observed: Observed, previous: Mapping | None = None,
                 rollout: bool = False) -> str:
    """How traffic is split: `gateway` (HTTPRoute + role Services) or `replicas`.

    * The spec decides first: no `rollout.gateway`, or `traffic: replicas`, is replicas mode.
    * During a rollout (`rollout`: the canary in `previous` status continues) the mode in
      `previous.trafficMode` holds for the life of the rollout: discovery cannot flip it (one
      wrong "HTTPRoute not served" answer would prune the role Services the live HTTPRoute sends
      traffic to), and a Gateway API installed meanwhile waits for the next rollout.
    * Otherwise gateway mode needs the HTTPRoute CRD to be served, and once an object is in
      gateway mode it stays there while the spec asks for it (a fall-back would break the routes
      in use); only an object that never used gateway mode falls back to replicas.
    """
    if not wants_gateway(md):
        return "replicas"
    recorded = (previous or {}).get("trafficMode")
    if rollout and recorded in MODES:
        return recorded
    return "gateway" if observed.httproute_served or recorded == "gateway" else "replicas"


def service_selector(selector: Mapping[str, str], mode: str, stable_hash: str) -> dict[str, str]:
    """Pods of the Service `<name>` (status.url): every revision in replicas mode (the replica
    split is the weight); only the stable revision in gateway mode, so that clients of the
    Service never bypass the HTTPRoute's weights (they see the canary only once it is promoted)."""
    if mode == "gateway":
        return {**selector, REVISION_LABEL: stable_hash}
    return dict(selector)


def role_service(name: str, role: str) -> str:
    return f"{name}-{role}"


def route_plan(md: ModelDeployment, stable: RevisionPlan, canary: RevisionPlan | None,
               canary_weight: int, mirror: bool) -> RoutePlan:
    gateway = md.spec.rollout.gateway
    assert gateway is not None
    backends = [RouteBackend(role_service(md.name, "stable"), "stable", stable.hash, 100 - canary_weight)]
    if canary is not None:
        backends.append(RouteBackend(role_service(md.name, "canary"), "canary", canary.hash, canary_weight))
    percent = gateway.mirror_percent
    mirroring = canary is not None and mirror and bool(percent)
    return RoutePlan(
        parent_refs=tuple(gateway.parent_refs),
        hostnames=tuple(gateway.hostnames),
        backends=tuple(backends),
        mirror_service=role_service(md.name, "canary") if mirroring else None,
        mirror_percent=percent if mirroring else None,
    )

