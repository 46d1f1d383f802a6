"""The Plan: desired state of one ModelDeployment, built from the spec, its live status and
what reconcile observed. Pure: no I/O and no clock reads (`now` is passed in).

`plan` picks one of three shapes: a single revision (first deploy, steady state, a cancelled
canary, a direct replacement), a canary next to the stable (walking `rollout.steps`), or the
promotion of a canary that carries everything. The other planning modules decide the parts:
pods (the pod template), revisions (identity, history), traffic (split, routes), rollout
(steps, analysis), health and status (phase and `.status`), events.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ..analysis import series_relabelings
from ..settings import Settings
from ..spec import AnalysisSpec, ModelDeployment
from .children import (METRICS_PATH, METRICS_PORT_NAME, REVISION_LABEL, SERVER_PORT, common_labels, owner_reference,
                       peers_service, selector_labels)
from .events import Event, spec_warnings, transition_events
from .health import Health, assess, canary_health, deployment_failure
from .observed import DeploymentState, Observed
from .pods import RevisionPlan, revision_plan, server_image
from .recovery import canary_record, progress_changed, recover, stable_record
from .revisions import (history_entry, previous_history, revision_hash, revision_number, revision_source,
                        shaping_spec)
from .rollout import (ACTION_ANNOTATIONS, Outcome, Progress, advance, analysis_window, describe_step, new_verdict,
                      next_wake, requested_weight, shadow_percent)
from .scaling import AutoscalingPlan, autoscaling_plan, desired_replicas, wants_pdb
from .shadow import ShadowPlan, may_mirror, shadow_plan, shadow_replicas
from .status import assemble_status, canary_status, revision_status
from .traffic import (RoutePlan, active_header_routes, header_routes_unavailable, route_plan, scale_plan,
                      service_selector, split_replicas, traffic_mode)
from .values import as_int, aware, previous_status, timestamp


@dataclass(frozen=True)
class Plan:
    name: str
    namespace: str
    owner: Mapping  # the ownerReference every child carries ({} offline: no uid known)
    labels: Mapping  # common labels of every child
    selector: Mapping  # pods of all revisions (Service, PDB, /scale)
    port: int
    revisions: tuple[RevisionPlan, ...]
    autoscaling: AutoscalingPlan | None
    pdb: bool
    service_monitor: bool
    # Deployments of outgoing revisions that reconcile must leave alone (not prune) this
    # time: they keep serving until the new revision is fully available.
    retain: tuple[str, ...]
    status: Mapping  # the complete desired .status (camelCase, JSON-ready)
    events: tuple[Event, ...] = field(default=())
    # Deployments of outgoing revisions that still have pods: reconcile scales each to 0 and
    # keeps it until its pods are gone (a pod whose ReplicaSet was deleted leaves the
    # PodDisruptionBudget without a controller to count it), then prunes it.
    retire: tuple[str, ...] = ()
    # Rollout (canary) side. Reconcile removes these annotations from the ModelDeployment
    # after applying the plan: the plan has acted on them.
    consumed_actions: tuple[str, ...] = ()
    # Seconds until the next timed thing (a pause ends, an analysis is due); None: nothing timed.
    requeue_after: float | None = None
    traffic_mode: str = "replicas"  # replicas | gateway (what was rendered)
    route: RoutePlan | None = None  # gateway mode: the HTTPRoute and the per-role Services
    # The analysis to run while the canary takes traffic (None: no analysis now). Pods of
    # a role carry INSTANCE_LABEL and REVISION_LABEL = `Plan.revision(role).hash`; the
    # Deployment is `Plan.revision(role).name`.
    analysis: AnalysisSpec | None = None
    # The headless Service `<name>-peers` over the pods of every revision, on their admin port: its
    # DNS name is MODELSHIP_FEEDBACK_PEERS, and the ServiceMonitor scrapes through it; None when
    # no revision keeps predictions for feedback and no ServiceMonitor is rendered.
    peers_service: str | None = None
    # The Service `<name>` (status.url) selects these pods: every revision in replicas mode, the
    # stable alone in gateway mode (the HTTPRoute's weights decide what the canary gets).
    service_selector: Mapping = field(default_factory=dict)
    # Prometheus: the pods' metrics port (by name) and path, how often to scrape, and the
    # relabelings (source meta label, target label) that copy the labels the PromQL analysis
    # selects by into every series (analysis.SERIES_LABELS).
    metrics_port_name: str = METRICS_PORT_NAME
    metrics_path: str = METRICS_PATH
    scrape_interval: str = "30s"
    series_relabelings: tuple[tuple[str, str], ...] = ()
    # The rollout record (observed.ROLLOUT_RECORD) each revision Deployment carries, by name.
    records: Mapping[str, str] = field(default_factory=dict)
    # Shadow steps (planning/shadow.py): the mirror of the current shadow step (reconcile pushes it
    # to the stable's pods while it is active; replicas mode renders the canary's role Service for
    # it), and the revisions whose pods may still mirror and must be set to percent 0.
    shadow: ShadowPlan | None = None
    shadow_off: tuple[str, ...] = ()

    def revision(self, role: str) -> RevisionPlan | None:
        return next((r for r in self.revisions if r.role == role), None)


def plan(md: ModelDeployment, observed: Observed, settings: Settings, now: datetime) -> Plan:
    # The rollout state from status, or from the records on the Deployments where status lost it.
    recovered, notes = recover(previous_status(md), observed.records(), timestamp(now),
                               revision_hash(md, settings))
    if not notes:
        return _plan(md, observed, settings, now)
    result = _plan(dataclasses.replace(md, raw_status=recovered), observed, settings, now)
    event = Event("Normal", "RolloutStateRecovered",
                  "status did not hold the rollout state; recovered from the Deployments: " + "; ".join(notes))
    return dataclasses.replace(result, events=(event, *result.events))


def _plan(md: ModelDeployment, observed: Observed, settings: Settings, now: datetime) -> Plan:
    previous = previous_status(md)
    hash_ = revision_hash(md, settings)
    stable_before = previous.get("stable") or {}
    canary_before = previous.get("canary") or {}
    if stable_before.get("hash") and stable_before.get("hash") != hash_:
        source = revision_source(md, settings, stable_before)
        stable_state = next((d for d in observed.deployments if d.revision == stable_before.get("hash")), None)
        # A stable that serves nothing has no traffic to protect: the new revision replaces it
        # directly (e.g. fixing a first deploy that never became ready).
        serving = stable_state is not None and stable_state.available_replicas > 0
        if source is not None and (serving or canary_before.get("hash")):
            return _canary_plan(md, observed, settings, now, hash_, source)
    return _single_plan(md, observed, settings, now, hash_)


def _base_plan(md: ModelDeployment, observed: Observed, settings: Settings, **fields: Any) -> Plan:
    scaling = autoscaling_plan(md, settings, observed.scaledobject_served)
    revisions: tuple[RevisionPlan, ...] = fields.pop("revisions")
    stable_only = fields.pop("stable_only", False)  # a shadow step: clients reach the stable alone
    stable = next(r for r in revisions if r.role == "stable")
    retain: tuple[str, ...] = fields["retain"]
    rendered = {r.name for r in revisions}
    retire = tuple(sorted(d.name for d in observed.deployments
                          if d.name not in rendered and d.name not in retain and not d.drained))
    return Plan(
        name=md.name,
        namespace=md.namespace,
        owner=owner_reference(md),
        labels=common_labels(md.name),
        selector=selector_labels(md.name),
        port=SERVER_PORT,
        revisions=revisions,
        autoscaling=scaling,
        pdb=wants_pdb(desired_replicas(md), tuple(r.replicas for r in revisions),
                      len(revisions) + len(retain) + len(retire), scaling),
        retire=retire,
        service_monitor=observed.servicemonitor_served,
        # The headless Service carries the admin port: feedback peers and the ServiceMonitor use it.
        peers_service=peers_service(md.name)
        if any(r.feedback for r in revisions) or observed.servicemonitor_served else None,
        service_selector=service_selector(selector_labels(md.name), fields.get("traffic_mode", "replicas"), stable.hash)
        if not stable_only else {**selector_labels(md.name), REVISION_LABEL: stable.hash},
        scrape_interval=f"{settings.prometheus_scrape_interval:g}s",
        series_relabelings=series_relabelings(),
        **fields,
    )


def _single_plan(md: ModelDeployment, observed: Observed, settings: Settings, now: datetime, hash_: str) -> Plan:
    """One revision (no canary): the first deploy, a steady state, a cancelled canary, or a
    direct replacement of a stable that serves nothing."""
    previous = previous_status(md)
    stamp = timestamp(now)
    mode = traffic_mode(md, observed, previous)
    rev = revision_plan(md, settings, hash_, revision_number(hash_, previous), "stable", desired_replicas(md))
    state = next((d for d in observed.deployments if d.revision == hash_), None)
    canary_before = previous.get("canary") or {}
    history = previous_history(previous)
    rollout_events: list[Event] = []
    stable_before = previous.get("stable") or {}
    if canary_before.get("hash") and canary_before.get("hash") != hash_:
        # The spec went back to the stable revision: the canary is removed at once.
        rollout_events.append(
            Event("Normal", "CanaryCancelled",
                  f"the spec is back at stable revision {rev.number} ({hash_}): canary revision "
                  f"{as_int(canary_before.get('revision'))} ({canary_before.get('hash')}) removed")
        )
        if not canary_before.get("aborted"):  # an aborted canary is in history already
            history.append(history_entry(canary_before, "Cancelled", stamp))
    if stable_before.get("hash") and stable_before.get("hash") != hash_:
        history.append(history_entry(stable_before, "Superseded", stamp))
    consumed = tuple(a for a in ACTION_ANNOTATIONS if a in md.annotations)
    if consumed:
        rollout_events.append(
            Event("Normal", "ActionIgnored", f"no canary rollout in progress: {', '.join(consumed)} has nothing to act on")
        )
    # Outgoing revisions (a direct replacement, a cancelled canary) keep serving until the new
    # one is fully available, then are pruned: capacity never drops while the stable scales up.
    outgoing = [d for d in observed.deployments if d.revision != hash_ and d.available_replicas > 0]
    health = assess(rev, state, sum(d.available_replicas for d in outgoing), previous)
    kept = [] if health.phase == "Healthy" else sorted(outgoing, key=lambda d: d.name)
    counted = ([state] if state else []) + kept
    status = assemble_status(
        md, settings, stamp, health=health, available=sum(d.available_replicas for d in counted),
        wanted=rev.replicas, stable=revision_status(rev, state, shaping_spec(md)), history=history,
        counted=counted, mode=mode,
    )
    warnings = spec_warnings(rev, autoscaling_plan(md, settings, observed.scaledobject_served), md, mode)
    return _base_plan(
        md, observed, settings,
        revisions=(rev,),
        retain=tuple(d.name for d in kept),
        status=status,
        events=transition_events(previous, status, rev, warnings, rollout_events),
        consumed_actions=consumed,
        traffic_mode=mode,
        route=route_plan(md, rev, None, 0, False) if mode == "gateway" else None,
        records={rev.name: stable_record(status["stable"])},
        # A cancelled canary that shadowed: the stable's pods stop mirroring to it.
        shadow_off=(hash_,) if canary_before.get("hash") and canary_before.get("hash") != hash_
        and may_mirror(md.spec.rollout.steps, canary_before) else (),
    )


def _canary_plan(
    md: ModelDeployment,
    observed: Observed,
    settings: Settings,
    now: datetime,
    hash_: str,
    source: tuple[ModelDeployment, Settings],
) -> Plan:
    """A stable revision plus the spec's revision as the canary, walking rollout.steps."""
    previous = previous_status(md)
    stamp = timestamp(now)
    mode = traffic_mode(md, observed, previous, rollout=(previous.get("canary") or {}).get("hash") == hash_)
    total = desired_replicas(md)
    steps = md.spec.rollout.steps
    limits = md.spec.rollout.analysis
    stable_before = previous.get("stable") or {}
    canary_before = previous.get("canary") or {}
    history = previous_history(previous)
    events: list[Event] = []

    old_md, old_settings = source
    stable_hash = str(stable_before["hash"])
    stable_number = as_int(stable_before.get("revision")) or revision_number(stable_hash, previous)
    number = revision_number(hash_, previous)
    by_hash = {d.revision: d for d in sorted(observed.deployments, key=lambda d: d.name)}
    stable_state, canary_state = by_hash.get(stable_hash), by_hash.get(hash_)
    canary_ready = canary_state.ready_replicas if canary_state else 0
    stable_ready = stable_state.ready_replicas if stable_state else 0

    lost = None
    if canary_before.get("hash") != hash_:
        if hash_ in observed.pinned() and not canary_before.get("hash"):
            # The canary runs, but neither status nor its Deployment's record knows how far it
            # got: it starts over; actions present now cannot be told apart from consumed ones.
            lost = "the rollout state of this canary was lost, so it restarted at step 1; set it again"
            events.append(Event("Warning", "RolloutRestarted",
                                f"no rollout state found for canary revision {number} ({hash_}) in status or on its "
                                "Deployment: it restarts at step 1 (never a promotion without its analysis)"))
        if canary_before.get("hash"):
            events.append(
                Event("Normal", "CanaryReplaced",
                      f"canary revision {as_int(canary_before.get('revision'))} ({canary_before.get('hash')}) "
                      f"is replaced by revision {number} ({hash_}); the steps restart")
            )
            if not canary_before.get("aborted"):
                history.append(history_entry(canary_before, "Replaced", stamp))
        events.append(
            Event("Normal", "CanaryStarted",
                  f"revision {number} ({hash_}, version {md.spec.model.version}) is the canary of stable revision "
                  f"{stable_number} ({stable_hash}, version {stable_before.get('version', '')}); "
                  + (f"{len(steps)} step(s)" if steps else "no steps: promoted once ready"))
        )
        progress = Progress.start(stamp)
    else:
        progress = Progress.from_status(canary_before, stamp)

    def ready_at(weight: int) -> bool:
        return canary_ready >= split_replicas(total, weight).canary

    def shadow_ready(percent: int) -> bool:
        return canary_ready >= shadow_replicas(total, percent)

    verdict = new_verdict(observed.analysis, hash_, progress)
    actions = {a: md.annotations[a] for a in ACTION_ANNOTATIONS if a in md.annotations}
    pods = None if observed.pods is None else tuple(p for p in observed.pods if p.revision == hash_)
    no_routes = header_routes_unavailable(mode)
    outcome = advance(progress, steps, limits, actions, verdict, ready_at, aware(now), stamp,
                      rollout=md.spec.rollout, pods=pods, ignore_actions=lost, shadow_ready=shadow_ready, header_routes_unavailable=no_routes)
    progress = outcome.progress
    events.extend(outcome.events)
    weight = 0 if progress.aborted else requested_weight(steps, progress.step)
    if outcome.aborted_now:
        history.append(history_entry({**canary_before, "revision": number, "hash": hash_,
                                      "version": md.spec.model.version, "uri": md.spec.model.uri,
                                      "spec": shaping_spec(md), "image": server_image(md, settings)},
                                     "Aborted", stamp))

    scale = scale_plan(total, weight, canary_ready, stable_ready)
    promote = (
        not progress.aborted
        and progress.step >= len(steps)
        and canary_state is not None
        and canary_ready >= total
        and canary_state.available_replicas >= total
    )
    if promote:
        assert canary_state is not None
        return _promoted_plan(md, observed, settings, now, hash_, number, canary_state, history, events, outcome)

    # Header routes (A/B) in force: gateway mode only, never for an aborted canary, and not at a
    # shadow step (the canary takes no user traffic there).
    shadowing = progress.step < len(steps) and steps[progress.step].shadow is not None
    routes = () if progress.aborted or no_routes or shadowing else active_header_routes(steps, progress.step)
    if mode == "gateway":
        # Stable keeps every pod: the route, not the pod count, moves traffic. A header route
        # needs a canary pod even at weight 0.
        stable_replicas = total
        canary_replicas = max(scale.target.canary, split_replicas(total, 1).canary if routes else 0)
        effective = scale.route_weight
    else:
        stable_replicas, canary_replicas = scale.stable_replicas, scale.canary_replicas
        effective = scale.effective_weight
    if progress.aborted and stable_ready < total:
        # Keep capacity: the aborted canary's ready pods stay until the stable has all its
        # replicas ready (minutes for a GPU model), then go. Gateway mode routes them nothing
        # meanwhile; in replicas mode they keep their share of the one Service (taking them out
        # would change their pod template, i.e. restart them).
        canary_replicas = min(canary_ready, canary_state.replicas if canary_state else 0)
        if mode == "replicas":
            ready_pods = canary_replicas + stable_ready  # the canary's share of them, rounded half up
            effective = 0 if ready_pods == 0 else (200 * canary_replicas + ready_pods) // (2 * ready_pods)
    # A shadow step: the canary's pods are extra to the split and take no user traffic; aborted
    # there, they never served a client and go at once (planning/shadow.py).
    at_shadow = shadow_percent(steps, progress.step)
    if at_shadow is not None:
        stable_replicas, effective = total, 0
        canary_replicas = 0 if progress.aborted else max(canary_replicas, shadow_replicas(total, at_shadow))
    mirror = None if progress.aborted else shadow_plan(md.name, at_shadow, hash_, stable_hash, canary_ready)
    stable_rev = revision_plan(old_md, old_settings, stable_hash, stable_number, "stable", stable_replicas)
    canary_rev = revision_plan(md, settings, hash_, number, "canary", canary_replicas)

    mirroring = mirror is not None and mirror.active
    # The header routes rendered now (derived from the steps, never read back): once a canary pod is ready.
    rendered = routes if canary_ready > 0 else ()
    # Analysis runs while the canary serves users: by weight, through header routes, or mirrored.
    analysing = not progress.aborted and (effective > 0 or mirroring or bool(rendered))
    analysis = analysis_window(progress, analysing, stamp)
    label = f"canary revision {number} ({hash_}, version {canary_rev.version})"
    failure = deployment_failure(canary_state) if canary_state else None
    health = canary_health(label, progress, failure, outcome.paused, steps, effective, weight, canary_ready, total)
    if (no_routes and health.phase == "Paused" and not progress.held and progress.step < len(steps)
            and steps[progress.step].set_header_route is not None):
        # Fails closed: the step holds, never skipped; said once per hold (level-triggered on status).
        health = Health("Paused", "HeaderRoutesUnavailable", f"{label} at {effective}%: {outcome.holding}")
        if canary_before.get("hash") != hash_ or canary_before.get("holdReason") != outcome.holding:
            events.append(Event("Warning", "HeaderRoutesUnavailable",
                                f"{describe_step(steps, progress.step)} holds: {outcome.holding}"))
    canary = canary_status(canary_rev, progress, effective=effective, weight=weight, ready=canary_ready,
                           analysis=analysis, holding=outcome.holding)
    if rendered:
        canary["headerRoutes"] = [r.name for r in rendered]
    if mirror is not None and mirror.active:
        canary["shadowPercent"] = mirror.percent
    before = canary_before if canary_before.get("hash") == hash_ else {}
    if progress_changed(before, canary):
        canary["seq"] = as_int(before.get("seq")) + 1

    states = [s for s in (stable_state, canary_state) if s is not None]
    # /scale (what the HPA divides by): in gateway mode the canary's pods are extra to spec.replicas.
    # So are they at a shadow step, in both modes.
    scaled = states if mode == "replicas" and at_shadow is None else [s for s in (stable_state,) if s is not None]
    status = assemble_status(
        md, settings, stamp, health=health, available=sum(s.available_replicas for s in states), wanted=total,
        stable=revision_status(stable_rev, stable_state, stable_before.get("spec") or {}),
        canary=canary,
        history=history, counted=scaled, mode=mode,
    )
    warnings = spec_warnings(canary_rev, autoscaling_plan(md, settings, observed.scaledobject_served), md, mode)
    # Gateway mode: the canary backend and the mirror only once canary pods are ready.
    return _base_plan(
        md, observed, settings,
        revisions=(stable_rev, canary_rev),
        retain=(),
        status=status,
        events=transition_events(previous, status, stable_rev, warnings, events),
        consumed_actions=outcome.consumed,
        requeue_after=next_wake(outcome, analysis, limits, analysing, now),
        traffic_mode=mode,
        route=route_plan(md, stable_rev, canary_rev, effective, canary_ready > 0 and not progress.aborted, rendered)
        if mode == "gateway" else None,
        analysis=limits if analysing else None,
        records={stable_rev.name: stable_record(status["stable"]), canary_rev.name: canary_record(canary)},
        shadow=mirror,
        shadow_off=(stable_hash,) if not mirroring and may_mirror(steps, canary_before) else (),
        stable_only=at_shadow is not None,
    )


def _promoted_plan(
    md: ModelDeployment,
    observed: Observed,
    settings: Settings,
    now: datetime,
    hash_: str,
    number: int,
    state: DeploymentState,
    history: list[dict],
    events: list[Event],
    outcome: Outcome,
) -> Plan:
    """The canary carries everything and is ready: it becomes the stable, the old stable goes."""
    previous = previous_status(md)
    stamp = timestamp(now)
    mode = traffic_mode(md, observed, previous, rollout=True)
    stable_before = previous.get("stable") or {}
    rev = revision_plan(md, settings, hash_, number, "stable", desired_replicas(md))
    # Back to a revision that was stable before: the one it replaces was rolled back.
    rolled_back = any(h.get("hash") == hash_ for h in history if h.get("outcome") in ("Superseded", "RolledBack"))
    history.append(history_entry(stable_before, "RolledBack" if rolled_back else "Superseded", stamp))
    events.append(
        Event("Normal", "Promoted",
              f"revision {number} ({hash_}, version {rev.version}) is now stable; revision "
              f"{as_int(stable_before.get('revision'))} ({stable_before.get('hash')}, version "
              f"{stable_before.get('version', '')}) is removed")
    )
    status = assemble_status(
        md, settings, stamp, health=assess(rev, state, 0, previous), available=state.available_replicas,
        wanted=rev.replicas, stable=revision_status(rev, state, shaping_spec(md)), history=history,
        counted=[state], mode=mode,
    )
    warnings = spec_warnings(rev, autoscaling_plan(md, settings, observed.scaledobject_served), md, mode)
    return _base_plan(
        md, observed, settings,
        revisions=(rev,),
        retain=(),
        status=status,
        events=transition_events(previous, status, rev, warnings, events, announce_replacement=False),
        consumed_actions=outcome.consumed,
        traffic_mode=mode,
        route=route_plan(md, rev, None, 0, False) if mode == "gateway" else None,
        records={rev.name: stable_record(status["stable"])},
        # The old stable's pods stop mirroring (they are retired now, but serve until they go).
        shadow_off=(str(stable_before.get("hash")),)
        if stable_before.get("hash") and may_mirror(md.spec.rollout.steps, previous.get("canary") or {}) else (),
    )
