"""The canary's progress through `rollout.steps`: actions, analysis verdicts, pods, steps. Pure.

`advance` takes the canary's progress (recovered from `status.canary` and the rollout record
on the canary Deployment, see recovery.py) and returns where it is now. Everything it needs to
resume is in that progress (step, when the step started, abort flag, window tallies, consumed
action ids, pod restart counts), so a restarted operator continues at the same step.
The plan (plan.py) and traffic.py decide replica counts and weights from the result.

Step index: `step` is the 0-based index of the step being worked on; `step == len(steps)`
means every step is done and the canary goes to 100% and is promoted once ready.

Evidence (fails closed): a step at which the canary carries traffic (a `setWeight` above 0,
and the pauses after it) is done only after `analysis.minPassedWindows` passing analysis
windows measured during that step; a timed pause also needs its time up. Inconclusive
windows (too few requests, no metrics) hold the step; `analysis.inconclusiveLimit` of them in
a row pause the rollout (or abort it, `onInconclusive: Abort`) until a manual promote.
`failureLimit` failed windows abort. Steps before any setWeight (weight 0) need no windows;
with no steps at all the canary replaces the stable once ready.

Broken canaries: canary pods that restart more than `rollout.maxCanaryRestarts` times, or are
not Ready within `rollout.readyTimeout` of being asked for, abort the rollout; a window in
which a canary pod restarted or lost readiness fails.

Manual actions act once: each consumed action's id (annotation and value) is kept in the
progress until the annotation is seen gone, so an action whose removal failed, or whose
operator died before removing it, is not acted on again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from ..analysis import FAIL, INCONCLUSIVE, PASS, Verdict
from ..spec import AnalysisSpec, ModelDeployment, RolloutSpec, RolloutStep
from .events import Event
from .observed import AnalysisResult, PodState
from .traffic import active_header_routes
from .values import as_int, aware, parse_time, previous_status, seconds_until, timestamp

# Manual rollout actions: annotations on the ModelDeployment that the CLI sets. The plan
# acts on them and lists the ones it consumed in `Plan.consumed_actions`; reconcile then
# removes exactly those (metadata patch with null) after the state that records them is written.
PROMOTE_ANNOTATION = "modelship.dev/promote"  # "step": finish the current step | "full": promote now
ABORT_ANNOTATION = "modelship.dev/abort"  # any value: abort the canary
RETRY_ANNOTATION = "modelship.dev/retry"  # any value: restart an aborted canary from step 1
ACTION_ANNOTATIONS = (PROMOTE_ANNOTATION, ABORT_ANNOTATION, RETRY_ANNOTATION)
PROMOTE_STEP, PROMOTE_FULL = "step", "full"
# The CLI appends "@<request id>" to the value, so two requests never look alike.
ACTION_ID_SEPARATOR = "@"


def action_verb(value: str) -> str:
    """The meaning of an action value without its request id: "full@2026...-1a2b" -> "full"."""
    return value.split(ACTION_ID_SEPARATOR, 1)[0].strip().lower()


def action_id(annotation: str, value: str) -> str:
    """The identity of one request: which annotation, with which exact value."""
    return f"{annotation.rsplit('/', 1)[-1]}={value}"


@dataclass(frozen=True)
class Progress:
    """The resumable part of `status.canary` (and of the canary's rollout record)."""

    step: int
    step_started_at: str
    aborted: bool = False
    abort_reason: str | None = None
    analysis: Mapping[str, Any] = field(default_factory=dict)  # status.canary.analysis
    actions: tuple[str, ...] = ()  # ids of consumed actions whose annotation is still present
    held: str | None = None  # why the rollout paused itself (inconclusive windows); promote resumes
    restarts: int = 0  # container restarts of canary pods since the canary started
    pod_restarts: Mapping[str, int] = field(default_factory=dict)  # restartCount per live canary pod
    unready_since: str | None = None  # since when fewer canary pods are ready than the step needs
    shadow_since: str | None = None  # since when the canary pods are ready to shadow at this step
    seq: int = 0  # counts changes of the recorded state: the newer of status and record wins

    @classmethod
    def start(cls, stamp: str) -> "Progress":
        return cls(step=0, step_started_at=stamp)

    @classmethod
    def from_status(cls, canary: Mapping[str, Any], stamp: str) -> "Progress":
        step = canary.get("step")
        restarts = canary.get("podRestarts")
        return cls(
            step=step if isinstance(step, int) and step >= 0 else 0,
            step_started_at=str(canary.get("stepStartedAt") or stamp),
            aborted=canary.get("aborted") is True,
            abort_reason=canary.get("abortReason") if isinstance(canary.get("abortReason"), str) else None,
            analysis=dict(canary.get("analysis") or {}),
            actions=tuple(str(a) for a in canary.get("actions") or () if isinstance(a, str)),
            held=canary.get("heldReason") if isinstance(canary.get("heldReason"), str) else None,
            restarts=as_int(canary.get("restarts")),
            pod_restarts={str(k): as_int(v) for k, v in restarts.items()} if isinstance(restarts, Mapping) else {},
            unready_since=canary.get("unreadySince") if isinstance(canary.get("unreadySince"), str) else None,
            shadow_since=canary.get("shadowSince") if isinstance(canary.get("shadowSince"), str) else None,
            seq=as_int(canary.get("seq")),
        )


@dataclass(frozen=True)
class Outcome:
    progress: Progress
    events: tuple[Event, ...]
    consumed: tuple[str, ...]  # action annotations acted on (or deliberately ignored)
    paused: bool  # waiting at a `pause: {}` for a manual promote, or held after inconclusive windows
    wake_at: datetime | None  # a timed pause ends, or the canary pods' readyTimeout runs out
    aborted_now: bool = False  # the abort happened in this call (history entry, event)
    holding: str | None = None  # why the current step does not advance (status.canary.holdReason)


def requested_weight(steps: tuple[RolloutStep, ...], step: int) -> int:
    """The weight the canary should carry while working on `step`: the last setWeight at or
    before it (0 before any), 100 once every step is done; 0 at a shadow step (the canary takes
    no user traffic then: the stable's pods copy requests to it, see shadow_percent)."""
    if step >= len(steps):
        return 100
    if steps[step].shadow is not None:
        return 0
    weights = [s.set_weight for s in steps[: step + 1] if s.set_weight is not None]
    return weights[-1] if weights else 0


def describe_step(steps: tuple[RolloutStep, ...], step: int) -> str:
    if step >= len(steps):
        return f"all {len(steps)} steps done"
    s = steps[step]
    if s.set_weight is not None:
        what = f"setWeight {s.set_weight}"
    elif s.pause is not None and s.pause.duration is not None:
        what = f"pause {s.pause.duration}"
    elif s.shadow is not None:
        what = f"shadow {s.shadow.percent}% for {s.shadow.duration}"
    elif s.set_header_route is not None:
        what = f"setHeaderRoute {s.set_header_route.name}" + ("" if s.set_header_route.match else " (remove)")
    else:
        what = "pause until promoted"
    return f"step {step + 1} of {len(steps)} ({what})"


STEP_TALLIES = ("stepPassed", "stepFailed", "stepInconclusive", "inconclusiveStreak")
SHADOW_RESULTS = ("compared", "disagreement", "meanAbsDiff")


def count_verdict(analysis: Mapping[str, Any], verdict: Verdict, stamp: str, restarts: int = 0) -> dict[str, Any]:
    """`status.canary.analysis` after one more counted verdict (the next window starts at `stamp`)."""
    result = verdict.result
    tallies = {
        "failures": as_int(analysis.get("failures")) + (result == FAIL),
        "successes": as_int(analysis.get("successes")) + (result == PASS),
        "stepPassed": as_int(analysis.get("stepPassed")) + (result == PASS),
        "stepFailed": as_int(analysis.get("stepFailed")) + (result == FAIL),
        "stepInconclusive": as_int(analysis.get("stepInconclusive")) + (result == INCONCLUSIVE),
        "inconclusiveStreak": as_int(analysis.get("inconclusiveStreak")) + 1 if result == INCONCLUSIVE else 0,
    }
    # The latest shadow comparison stays reported through later (non-shadow) windows.
    shadow = {k: analysis[k] for k in SHADOW_RESULTS if k in analysis}
    return {"lastTime": stamp, **shadow, **verdict.to_status(), **tallies, "restartsAtStart": restarts}


def new_step_window(analysis: Mapping[str, Any], stamp: str, restarts: int) -> dict[str, Any]:
    """A step changed: its windows are counted afresh, the first one starts now."""
    kept = {k: v for k, v in analysis.items() if k not in STEP_TALLIES}
    if kept.get("lastTime"):  # only a canary that carries traffic has a window running
        kept.update(lastTime=stamp, restartsAtStart=restarts)
    return kept


def needs_evidence(steps: tuple[RolloutStep, ...], step: int) -> bool:
    """Steps at which the canary carries traffic (a weight, or mirrored requests at a shadow
    step) advance only on passing windows."""
    return step < len(steps) and (requested_weight(steps, step) > 0 or steps[step].shadow is not None)


def shadow_percent(steps: tuple[RolloutStep, ...], step: int) -> int | None:
    """The share of the stable's requests copied to the canary at `step` (None: not a shadow step)."""
    if step >= len(steps) or steps[step].shadow is None:
        return None
    return steps[step].shadow.percent


def step_tallies(analysis: Mapping[str, Any]) -> str:
    return (f"{as_int(analysis.get('stepPassed'))} passed, {as_int(analysis.get('stepInconclusive'))} inconclusive, "
            f"{as_int(analysis.get('stepFailed'))} failed")


def window_pod_trouble(progress: Progress, pods: tuple[PodState, ...]) -> str | None:
    """Why the window that ends now cannot pass on the pods' account: a canary container
    restarted (crash, OOM kill, failed liveness) or a started pod lost readiness during it."""
    analysis = progress.analysis
    restarted = progress.restarts - as_int(analysis.get("restartsAtStart"), progress.restarts)
    start = parse_time(analysis.get("lastTime"))
    problem = next((p.problem for p in pods if p.problem), "")
    if restarted > 0:
        return f"canary pods restarted {restarted} time(s) during the window" + (f" ({problem})" if problem else "")
    flapped = [p.name for p in pods if p.started and not p.ready and start is not None
               and p.ready_changed_at is not None and p.ready_changed_at > start]
    if flapped:
        return f"canary pod(s) {', '.join(sorted(flapped)[:3])} lost readiness during the window" + (
            f" ({problem})" if problem else "")
    return None


def count_pods(progress: Progress, pods: tuple[PodState, ...]) -> Progress:
    """Add the container restarts of canary pods since the last look (new pods count in full)."""
    live = {p.name: p.restarts for p in pods if not p.terminating}
    added = sum(max(0, n - progress.pod_restarts.get(name, 0)) for name, n in live.items())
    if not added and live == dict(progress.pod_restarts):
        return progress
    return dataclasses.replace(progress, restarts=progress.restarts + added, pod_restarts=live)


def advance(
    progress: Progress,
    steps: tuple[RolloutStep, ...],
    limits: AnalysisSpec,
    actions: Mapping[str, str],
    verdict: tuple[Verdict, str] | None,
    ready_at: Callable[[int], bool],
    now: datetime,
    stamp: str,
    *,
    rollout: RolloutSpec | None = None,
    pods: tuple[PodState, ...] | None = None,
    ignore_actions: str | None = None,
    shadow_ready: Callable[[int], bool] | None = None,
    header_routes_unavailable: str | None = None,
) -> Outcome:
    """One pass of the state machine.

    `actions`: the action annotations present (ACTION_ANNOTATIONS), name -> value.
    `verdict`: a new analysis result for this canary and its (window end) timestamp, already
    checked to be newer than `analysis.lastTime`; None when there is none.
    `ready_at(weight)`: whether the canary pods are ready to carry `weight` percent.
    `pods`: the canary's pods as observed now (None: not observed, no pod checks).
    `ignore_actions`: consume the actions present without acting, saying why (the state
    that would tell whether they were acted on already was lost).
    `shadow_ready(percent)`: whether the canary pods are ready to shadow `percent` (a shadow
    step's pods are extra to the split); ready_at(percent) when not given.
    `header_routes_unavailable`: why setHeaderRoute steps cannot take effect (no HTTPRoute): such a
    step then holds (fails closed) instead of being skipped; otherwise it takes effect and the
    rollout moves on at once, and while a header route is active the canary needs a Ready pod.
    """
    events: list[Event] = []
    consumed: list[str] = []
    n = len(steps)
    p = progress
    aborted_now = False
    spec = rollout or RolloutSpec()

    def abort(reason: str) -> None:
        nonlocal p, aborted_now
        p = dataclasses.replace(p, aborted=True, abort_reason=reason, step_started_at=stamp, held=None)
        aborted_now = True  # the Degraded condition's Warning event carries the reason

    def next_step(to: int) -> None:
        nonlocal p
        p = dataclasses.replace(p, step=to, step_started_at=stamp, held=None, shadow_since=None,
                                analysis=new_step_window(p.analysis, stamp, p.restarts))

    # Manual actions first: they are explicit user intent for this moment. Each acts once.
    present = {name: actions[name] for name in ACTION_ANNOTATIONS if name in actions}
    ids = {name: action_id(name, value) for name, value in present.items()}
    done = set(p.actions)
    fresh = {name: value for name, value in present.items() if ids[name] not in done}
    consumed = list(present)  # acted on now, or earlier (then only the removal is left)
    p = dataclasses.replace(p, actions=tuple(sorted({*(i for i in p.actions if i in ids.values()), *ids.values()})))
    if fresh and ignore_actions:
        events.append(Event("Warning", "ActionIgnored", f"{', '.join(fresh)} not acted on: {ignore_actions}"))
        fresh = {}
    if ABORT_ANNOTATION in fresh:
        if not p.aborted:
            abort("aborted by user request (modelship.dev/abort)")
    if RETRY_ANNOTATION in fresh:
        if p.aborted and ABORT_ANNOTATION not in fresh:
            p = dataclasses.replace(Progress.start(stamp), actions=p.actions, restarts=0,
                                    pod_restarts={name: n for name, n in p.pod_restarts.items()}, seq=p.seq)
            events.append(Event("Normal", "CanaryRetried", "the aborted canary restarts from step 1; failures reset"))
        elif not p.aborted:
            events.append(Event("Normal", "RetryIgnored", "retry asked for, but the canary is not aborted"))
    if PROMOTE_ANNOTATION in fresh:
        if p.aborted:
            events.append(
                Event("Warning", "PromoteIgnored", "the canary is aborted: retry it (modelship.dev/retry) before promoting")
            )
        elif action_verb(fresh[PROMOTE_ANNOTATION]) == PROMOTE_FULL:
            if p.step < n:
                events.append(Event("Normal", "PromotedManually", "full promotion asked for: skipping the remaining steps"))
            next_step(n)
        elif p.step < n:
            what = "resumed and " if p.held else ""
            events.append(Event("Normal", "StepPromoted",
                                f"{describe_step(steps, p.step)} {what}completed by a manual promote"))
            next_step(p.step + 1)

    # The canary's pods: restarts (when observed), and readiness within readyTimeout.
    seen = pods or ()
    problem = next((q.problem for q in sorted(seen, key=lambda q: (q.ready, q.name)) if q.problem), "")
    detail = f": {problem}" if problem else ""
    if pods is not None and not p.aborted:
        p = count_pods(p, pods)
        if p.restarts > spec.max_canary_restarts:
            abort(f"canary pods restarted {p.restarts} time(s), more than maxCanaryRestarts "
                  f"{spec.max_canary_restarts}{detail}")
    ready_deadline: datetime | None = None
    if not p.aborted:
        wanted = requested_weight(steps, p.step)
        if not wanted and header_routes_unavailable is None and active_header_routes(steps, p.step):
            wanted = 1  # matching requests go to the canary: at least one pod must serve them
        short = wanted > 0 and not ready_at(wanted)
        if shadow_percent(steps, p.step) is not None:  # a shadow step needs its shadow pods ready
            short = not (shadow_ready or ready_at)(shadow_percent(steps, p.step) or 0)
            if not short and p.shadow_since is None:  # mirroring starts now: the duration counts from here
                p = dataclasses.replace(p, shadow_since=stamp)
        since = (p.unready_since or stamp) if short else None
        p = dataclasses.replace(p, unready_since=since)
        started = parse_time(since)
        if started is not None:
            ready_deadline = started + timedelta(seconds=spec.ready_timeout_seconds)
            if now >= ready_deadline:
                abort(f"canary pods not Ready within readyTimeout {spec.ready_timeout} "
                      f"(asked for at {since}){detail}")

    # A new analysis verdict counts once; restarts and lost readiness in its window fail it.
    if verdict is not None and not p.aborted:
        result, at = verdict
        trouble = window_pod_trouble(p, seen)
        if trouble is not None and result.result != FAIL:
            result = dataclasses.replace(result, result=FAIL, reasons=(trouble, *result.reasons))
        elif trouble is not None:
            result = dataclasses.replace(result, reasons=(*result.reasons, trouble))
        analysis = count_verdict(p.analysis, result, at, p.restarts)
        p = dataclasses.replace(p, analysis=analysis)
        kind = {PASS: ("Normal", "AnalysisPassed"), FAIL: ("Warning", "AnalysisFailed")}.get(
            result.result, ("Normal", "AnalysisInconclusive")
        )
        events.append(Event(kind[0], kind[1], result.message))
        if result.result == FAIL and analysis["failures"] >= limits.failure_limit:
            abort(f"analysis failed {analysis['failures']} time(s), failureLimit {limits.failure_limit}: {result.message}")
        elif result.result == INCONCLUSIVE and analysis["inconclusiveStreak"] >= limits.inconclusive_limit \
                and p.held is None and (p.step >= n or needs_evidence(steps, p.step)):
            # (A step that needs no evidence -- weight 0, users only through header routes -- is
            # judged for failures; too little traffic there does not pause it.)
            why = (f"{analysis['inconclusiveStreak']} inconclusive analysis windows in a row "
                   f"(inconclusiveLimit {limits.inconclusive_limit}) at {describe_step(steps, p.step)}: "
                   f"{result.message}")
            if limits.on_inconclusive == "Abort":
                abort(why)
            else:
                p = dataclasses.replace(p, held=why)
                events.append(Event("Warning", "InconclusiveAnalysis",
                                    f"rollout paused: {why}; promote to continue, or abort"))

    paused = False
    wake_at: datetime | None = None
    holding: str | None = None
    if not p.aborted:
        for _ in range(n + 1):  # each pass finishes at most one step
            if p.step >= n:
                break
            s = steps[p.step]
            weight = requested_weight(steps, p.step)
            passed = as_int(p.analysis.get("stepPassed"))
            evidence = not needs_evidence(steps, p.step) or passed >= limits.min_passed_windows
            wanting = (f"waiting for {limits.min_passed_windows} passing analysis window(s) at {weight}% "
                       f"({step_tallies(p.analysis)})")
            if p.held is not None:
                paused, done, holding = True, False, f"paused: {p.held}; promote to continue"
            elif s.set_weight is not None:
                ready = ready_at(s.set_weight)
                done = ready and evidence
                if not ready:
                    holding = f"waiting for the canary pods to be ready for {s.set_weight}%"
                elif not evidence:
                    holding = wanting
            elif s.pause is not None and s.pause.duration is not None:
                started = parse_time(p.step_started_at) or now
                end = started + timedelta(seconds=s.pause.seconds or 0.0)
                done = now >= end and evidence
                if now < end:
                    wake_at, holding = end, f"pausing until {timestamp(end)}"
                elif not evidence:
                    holding = wanting
            elif s.set_header_route is not None:  # takes effect at once, never a wait
                done = header_routes_unavailable is None
                if not done:
                    paused, holding = True, f"{header_routes_unavailable}; promote to skip this step, or abort"
            elif s.shadow is not None:  # its duration (from when its pods were ready), its pods ready, its windows
                started = parse_time(p.shadow_since) or now
                end = started + timedelta(seconds=s.shadow.seconds)
                ready = (shadow_ready or ready_at)(s.shadow.percent)
                done = ready and now >= end and evidence
                if not ready:
                    holding = f"waiting for the canary pods to be ready to shadow {s.shadow.percent}%"
                elif now < end:
                    wake_at, holding = end, f"shadowing {s.shadow.percent}% until {timestamp(end)}"
                elif not evidence:
                    holding = (f"waiting for {limits.min_passed_windows} passing analysis window(s) while "
                               f"shadowing {s.shadow.percent}% ({step_tallies(p.analysis)})")
            else:
                paused, done, holding = True, False, "paused until promoted"
            if not done:
                break
            next_step(p.step + 1)
            if p.step < n:
                nxt = steps[p.step]
                manual = nxt.set_weight is None and nxt.pause is not None and nxt.pause.duration is None
                reason = "RolloutPaused" if manual else "RolloutStep"
                events.append(Event("Normal", reason, describe_step(steps, p.step)
                                    + ("; promote to continue" if manual else "")))
            else:
                events.append(Event("Normal", "RolloutStepsComplete", f"all {n} steps done: going to 100%"))
    if ready_deadline is not None and not p.aborted:
        wake_at = min(w for w in (wake_at, ready_deadline) if w is not None)
    return Outcome(p, tuple(events), tuple(consumed), paused, wake_at, aborted_now, holding)


# --------------------------------------------------------------------------- analysis bookkeeping


def next_analysis_at(md: ModelDeployment) -> datetime | None:
    """When the current analysis window of the canary ends (None: no analysis is running).

    The window starts when the canary first takes traffic (the plan then writes
    `status.canary.analysis.lastTime` with no verdict) and restarts at each counted result.
    """
    canary = previous_status(md).get("canary") or {}
    if not canary.get("hash") or canary.get("aborted") or (
            as_int(canary.get("weight")) <= 0 and as_int(canary.get("shadowPercent")) <= 0
            and not canary.get("headerRoutes")):
        return None
    start = parse_time((canary.get("analysis") or {}).get("lastTime"))
    if start is None:
        return None
    return start + timedelta(seconds=md.spec.rollout.analysis.interval_seconds)


def analysis_due(md: ModelDeployment, now: datetime) -> bool:
    """True when reconcile should measure the canary (`status.canary.hash`) and pass the
    result to the plan as `Observed.analysis`: a window of `analysis.interval` has passed
    since `status.canary.analysis.lastTime` while the canary takes traffic (a weight, or
    `shadowPercent` of the stable's requests) and is not aborted."""
    due = next_analysis_at(md)
    return due is not None and aware(now) >= due


def new_verdict(result: AnalysisResult | None, hash_: str, progress: Progress) -> tuple[Verdict, str] | None:
    """The observed analysis result as a verdict to count, or None when it is for another
    revision or was counted already (its window does not end after `analysis.lastTime`)."""
    last = parse_time((progress.analysis or {}).get("lastTime"))
    if result is not None and result.hash == hash_ and (last is None or aware(result.time) > last):
        return result.verdict, timestamp(result.time)
    return None


def analysis_window(progress: Progress, analysing: bool, stamp: str) -> dict[str, Any]:
    """`status.canary.analysis`: the first window starts with the canary's first traffic."""
    analysis = dict(progress.analysis)
    if analysing and not analysis.get("lastTime"):
        analysis.update(lastTime=stamp, restartsAtStart=progress.restarts)
    return analysis


def next_wake(outcome: Outcome, analysis: Mapping[str, Any], limits: AnalysisSpec, analysing: bool,
              now: datetime) -> float | None:
    """Seconds until the next timed thing of the canary: a pause ends or an analysis window closes."""
    wake = [outcome.wake_at]
    if analysing:
        start = parse_time(analysis.get("lastTime"))
        wake.append(start + timedelta(seconds=limits.interval_seconds) if start else None)
    waits = [w for w in (seconds_until(at, now) for at in wake) if w is not None]
    return min(waits) if waits else None
