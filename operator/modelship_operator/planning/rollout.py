"""The canary's progress through `rollout.steps`: actions, analysis verdicts, steps. Pure.

`advance` takes the canary's progress as read from `status.canary` and returns where it is
now. Everything it needs to resume is in that status (step index, when the step started,
abort flag, analysis tallies), so a restarted operator continues at the same step with the
same timers. The plan (plan.py) and traffic.py decide replica counts and weights from the result.

Step index: `step` is the 0-based index of the step being worked on; `step == len(steps)`
means every step is done and the canary goes to 100% and is promoted once ready.

A `setWeight` step is done once the canary pods are ready for that weight (`ready_at`);
analysis runs in the background at every interval and only ever aborts — it never holds a
step (a quiet canary would otherwise stall). Use `pause` steps to give analysis time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from ..analysis import FAIL, PASS, Verdict
from ..spec import AnalysisSpec, ModelDeployment, RolloutStep
from .events import Event
from .observed import AnalysisResult
from .values import as_int, aware, parse_time, previous_status, seconds_until, timestamp

# Manual rollout actions: annotations on the ModelDeployment that the CLI sets. The plan
# acts on them and lists the ones it consumed in `Plan.consumed_actions`; reconcile then
# removes exactly those (metadata patch with null) so each request acts once.
PROMOTE_ANNOTATION = "modelship.dev/promote"  # "step": finish the current step | "full": promote now
ABORT_ANNOTATION = "modelship.dev/abort"  # any value: abort the canary
RETRY_ANNOTATION = "modelship.dev/retry"  # any value: restart an aborted canary from step 1
ACTION_ANNOTATIONS = (PROMOTE_ANNOTATION, ABORT_ANNOTATION, RETRY_ANNOTATION)
PROMOTE_STEP, PROMOTE_FULL = "step", "full"


@dataclass(frozen=True)
class Progress:
    """The resumable part of `status.canary`."""

    step: int
    step_started_at: str
    aborted: bool = False
    abort_reason: str | None = None
    analysis: Mapping[str, Any] = field(default_factory=dict)  # status.canary.analysis

    @classmethod
    def start(cls, stamp: str) -> "Progress":
        return cls(step=0, step_started_at=stamp)

    @classmethod
    def from_status(cls, canary: Mapping[str, Any], stamp: str) -> "Progress":
        step = canary.get("step")
        return cls(
            step=step if isinstance(step, int) and step >= 0 else 0,
            step_started_at=str(canary.get("stepStartedAt") or stamp),
            aborted=canary.get("aborted") is True,
            abort_reason=canary.get("abortReason") if isinstance(canary.get("abortReason"), str) else None,
            analysis=dict(canary.get("analysis") or {}),
        )


@dataclass(frozen=True)
class Outcome:
    progress: Progress
    events: tuple[Event, ...]
    consumed: tuple[str, ...]  # action annotations acted on (or deliberately ignored)
    paused: bool  # waiting at a `pause: {}` for a manual promote
    wake_at: datetime | None  # a timed pause ends then
    aborted_now: bool = False  # the abort happened in this call (history entry, event)


def requested_weight(steps: tuple[RolloutStep, ...], step: int) -> int:
    """The weight the canary should carry while working on `step`: the last setWeight at or
    before it (0 before any), 100 once every step is done."""
    if step >= len(steps):
        return 100
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
    else:
        what = "pause until promoted"
    return f"step {step + 1} of {len(steps)} ({what})"


def count_verdict(analysis: Mapping[str, Any], verdict: Verdict, stamp: str) -> dict[str, Any]:
    """`status.canary.analysis` after one more counted verdict."""
    tallies = {
        "failures": int(analysis.get("failures") or 0) + (verdict.result == FAIL),
        "successes": int(analysis.get("successes") or 0) + (verdict.result == PASS),
    }
    return {"lastTime": stamp, **verdict.to_status(), **tallies}


def advance(
    progress: Progress,
    steps: tuple[RolloutStep, ...],
    limits: AnalysisSpec,
    actions: Mapping[str, str],
    verdict: tuple[Verdict, str] | None,
    ready_at: Callable[[int], bool],
    now: datetime,
    stamp: str,
) -> Outcome:
    """One pass of the state machine.

    `actions`: the action annotations present (ACTION_ANNOTATIONS), name -> value.
    `verdict`: a new analysis result for this canary and its (window end) timestamp, already
    checked to be newer than `analysis.lastTime`; None when there is none.
    `ready_at(weight)`: whether the canary pods are ready to carry `weight` percent.
    """
    events: list[Event] = []
    consumed: list[str] = []
    n = len(steps)
    p = progress
    aborted_now = False

    def abort(reason: str) -> None:
        nonlocal p, aborted_now
        p = dataclasses.replace(p, aborted=True, abort_reason=reason, step_started_at=stamp)
        aborted_now = True  # the Degraded condition's Warning event carries the reason

    # Manual actions first: they are explicit user intent for this moment.
    if ABORT_ANNOTATION in actions:
        consumed.append(ABORT_ANNOTATION)
        if not p.aborted:
            abort("aborted by user request (modelship.dev/abort)")
    if RETRY_ANNOTATION in actions:
        consumed.append(RETRY_ANNOTATION)
        if p.aborted and ABORT_ANNOTATION not in actions:
            p = Progress.start(stamp)
            events.append(Event("Normal", "CanaryRetried", "the aborted canary restarts from step 1; failures reset"))
        elif not p.aborted:
            events.append(Event("Normal", "RetryIgnored", "retry asked for, but the canary is not aborted"))
    if PROMOTE_ANNOTATION in actions:
        consumed.append(PROMOTE_ANNOTATION)
        if p.aborted:
            events.append(
                Event("Warning", "PromoteIgnored", "the canary is aborted: retry it (modelship.dev/retry) before promoting")
            )
        elif actions[PROMOTE_ANNOTATION].strip().lower() == PROMOTE_FULL:
            if p.step < n:
                events.append(Event("Normal", "PromotedManually", "full promotion asked for: skipping the remaining steps"))
            p = dataclasses.replace(p, step=n, step_started_at=stamp)
        elif p.step < n:
            events.append(Event("Normal", "StepPromoted", f"{describe_step(steps, p.step)} completed by a manual promote"))
            p = dataclasses.replace(p, step=p.step + 1, step_started_at=stamp)

    # A new analysis verdict counts once.
    if verdict is not None and not p.aborted:
        result, at = verdict
        analysis = count_verdict(p.analysis, result, at)
        p = dataclasses.replace(p, analysis=analysis)
        kind = {PASS: ("Normal", "AnalysisPassed"), FAIL: ("Warning", "AnalysisFailed")}.get(
            result.result, ("Normal", "AnalysisInconclusive")
        )
        events.append(Event(kind[0], kind[1], result.message))
        if result.result == FAIL and analysis["failures"] >= limits.failure_limit:
            abort(f"analysis failed {analysis['failures']} time(s), failureLimit {limits.failure_limit}: {result.message}")

    paused = False
    wake_at: datetime | None = None
    if not p.aborted:
        for _ in range(n + 1):  # each pass finishes at most one step
            if p.step >= n:
                break
            s = steps[p.step]
            if s.set_weight is not None:
                done = ready_at(s.set_weight)
            elif s.pause is not None and s.pause.duration is not None:
                started = parse_time(p.step_started_at) or now
                end = started + timedelta(seconds=s.pause.seconds or 0.0)
                done = now >= end
                if not done:
                    wake_at = end
            else:
                paused = True
                done = False
            if not done:
                break
            p = dataclasses.replace(p, step=p.step + 1, step_started_at=stamp)
            if p.step < n:
                nxt = steps[p.step]
                manual = nxt.set_weight is None and nxt.pause is not None and nxt.pause.duration is None
                reason = "RolloutPaused" if manual else "RolloutStep"
                events.append(Event("Normal", reason, describe_step(steps, p.step)
                                    + ("; promote to continue" if manual else "")))
            else:
                events.append(Event("Normal", "RolloutStepsComplete", f"all {n} steps done: going to 100%"))
    return Outcome(p, tuple(events), tuple(consumed), paused, wake_at, aborted_now)


# --------------------------------------------------------------------------- analysis bookkeeping


def next_analysis_at(md: ModelDeployment) -> datetime | None:
    """When the current analysis window of the canary ends (None: no analysis is running).

    The window starts when the canary first takes traffic (the plan then writes
    `status.canary.analysis.lastTime` with no verdict) and restarts at each counted result.
    """
    canary = previous_status(md).get("canary") or {}
    if not canary.get("hash") or canary.get("aborted") or as_int(canary.get("weight")) <= 0:
        return None
    start = parse_time((canary.get("analysis") or {}).get("lastTime"))
    if start is None:
        return None
    return start + timedelta(seconds=md.spec.rollout.analysis.interval_seconds)


def analysis_due(md: ModelDeployment, now: datetime) -> bool:
    """True when reconcile should measure the canary (`status.canary.hash`) and pass the
    result to the plan as `Observed.analysis`: a window of `analysis.interval` has passed
    since `status.canary.analysis.lastTime` while the canary takes traffic and is not aborted."""
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
        analysis["lastTime"] = stamp
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
