"""Where traffic goes: the replica split between stable and canary, the traffic mode, and in
gateway mode the HTTPRoute (weighted split, mirror, header routes) and its per-role Services. Pure.

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

import re
from dataclasses import dataclass
from typing import Mapping

from ..api.v1alpha1 import HeaderRouteMatch, HeaderRouteStep, StringMatch
from ..spec import ModelDeployment, RolloutStep
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
class HeaderMatch:
    """One Gateway API HTTPHeaderMatch: `type` Exact or RegularExpression."""

    name: str
    type: str
    value: str


@dataclass(frozen=True)
class HeaderRule:
    """An HTTPRoute rule ahead of the weighted one: requests with every header match go to `service`."""

    name: str  # the setHeaderRoute step's route name
    headers: tuple[HeaderMatch, ...]
    service: str  # the canary's role Service


@dataclass(frozen=True)
class RoutePlan:
    """Gateway mode: one HTTPRoute `<name>` with weighted backendRefs (and an optional mirror),
    preceded by one rule per active header route."""

    parent_refs: tuple[Mapping, ...]
    hostnames: tuple[str, ...]
    backends: tuple[RouteBackend, ...]
    mirror_service: str | None = None  # the canary Service, when mirroring
    mirror_percent: int | None = None
    header_rules: tuple[HeaderRule, ...] = ()


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
               canary_weight: int, mirror: bool, header_routes: tuple[HeaderRouteStep, ...] = ()) -> RoutePlan:
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
        header_rules=tuple(header_rule(r, role_service(md.name, "canary")) for r in header_routes)
        if canary is not None else (),
    )


# --------------------------------------------------------------------------- header routes (A/B)
#
# A `setHeaderRoute` step adds (with matches) or removes (without) a named route that sends the
# requests it matches to the canary, whatever the weight. Which routes are active is a pure fold
# of the steps before the current one: nothing to store, so routes survive an operator restart
# and a lost status alike. The plan drops them when the rollout ends (promotion, abort, cancel).

# An HTTPRoute holds at most 16 rules (gateway.networking.k8s.io/v1); one is the weighted split.
MAX_HEADER_ROUTES = 15
COOKIE_HEADER = "Cookie"
# Characters that are special in RE2, PCRE and POSIX ERE alike (the Gateway API leaves the regex
# dialect of RegularExpression header matches to the implementation): escaped, nothing else.
_REGEX_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def active_header_routes(steps: tuple[RolloutStep, ...], step: int) -> tuple[HeaderRouteStep, ...]:
    """The header routes in force while working on `step`: the fold of every setHeaderRoute step
    before it, in the order routes were first added (a replacement keeps its place)."""
    routes: dict[str, HeaderRouteStep] = {}
    for s in steps[:max(0, step)]:
        r = s.set_header_route
        if r is None:
            continue
        if r.match:
            routes[r.name] = r
        else:
            routes.pop(r.name, None)
    return tuple(routes.values())


def header_routes_unavailable(mode: str) -> str | None:
    """Why setHeaderRoute steps cannot take effect in this traffic mode (None: they can)."""
    if mode == "gateway":
        return None
    return ("header routes need the HTTPRoute CRD (gateway.networking.k8s.io/v1), and this rollout splits traffic "
            "by replicas (the CRD was not served when it started)")


def regex_escape(text: str) -> str:
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def _unanchored(regex: str) -> str:
    """A user's regex for a value embedded in a larger one: its own ^ and $ anchors dropped (the
    embedding anchors the whole value)."""
    if regex.startswith("^"):
        regex = regex[1:]
    if regex.endswith("$") and not regex.endswith("\\$"):
        regex = regex[:-1]
    return regex


def _value_pattern(value: StringMatch) -> str:
    """A regex for the whole of a value (no anchors)."""
    if value.exact is not None:
        return regex_escape(value.exact)
    if value.prefix is not None:
        return regex_escape(value.prefix) + ".*"
    return f"(?:{_unanchored(value.regex or '')})"


def header_match(m: HeaderRouteMatch) -> HeaderMatch:
    """One condition as a Gateway API header match. The Gateway API has no prefix type and no cookie
    match: a prefix is the pattern `^<escaped>.*$`, a cookie a pattern on the `Cookie` header. Every
    pattern covers the whole value, anchored at both ends, so it means the same under full-match
    (Envoy) and search (NGINX) semantics; a user's regex matches the whole value too."""
    if m.header_name is not None:
        value = m.header_value
        assert value is not None
        if value.exact:  # an empty exact value cannot be an Exact match (minLength 1)
            return HeaderMatch(m.header_name, "Exact", value.exact)
        return HeaderMatch(m.header_name, "RegularExpression", f"^{_value_pattern(value)}$")
    assert m.cookie_name is not None and m.cookie_value is not None
    # Cookie: a=1; b=2 -- the cookie is the first pair or follows "; ", and ends at ";" or the end.
    pattern = f"^(?:.*;\\s*)?{regex_escape(m.cookie_name)}={_value_pattern(m.cookie_value)}(?:;.*)?$"
    return HeaderMatch(COOKIE_HEADER, "RegularExpression", pattern)


def header_rule(route: HeaderRouteStep, service: str) -> HeaderRule:
    return HeaderRule(route.name, tuple(header_match(m) for m in route.match), service)

