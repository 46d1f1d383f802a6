"""Shadow steps: how many canary pods, which Service the stable's pods mirror to, and which
stable pods must be told to stop. Pure.

At a `shadow: {percent, duration}` step the canary takes no user traffic (weight 0 in both
traffic modes). It runs `ceil(total * percent / 100)` pods (at least one; none when scaled to
zero) as pods EXTRA to the split: the stable keeps all `spec.replicas` pods and serves every
client, so the stable's capacity never depends on the canary. The stable's pods copy `percent`
of their inference requests, after answering, to the canary through its role Service
`<name>-canary` (rendered in replicas mode too for the step; gateway mode has it anyway); in
replicas mode the Service `<name>` selects the stable revision alone meanwhile, so clients never
reach the canary. Reconcile pushes the mirror config to each stable pod (shadow_config.py).

Turning mirroring off is level-triggered like turning it on: whenever a rollout with a shadow
step has none active (a later step, an abort, a promotion, a cancelled canary), the plan names
the revisions whose pods may still mirror (`Plan.shadow_off`) and reconcile sets those pods to
percent 0 where they are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..spec import RolloutStep
from .traffic import RouteBackend, role_service


@dataclass(frozen=True)
class ShadowPlan:
    """The mirror of a shadow step (its role Service is rendered for the whole step)."""

    percent: int  # of each stable pod's inference requests
    canary: str  # the canary revision hash: the `revision` the stable pods label their comparison with
    stable: str  # the revision whose pods mirror
    service: str  # the canary's role Service: the mirror's address is its clusterIP
    active: bool = True  # a canary pod is ready to receive the mirror: the stable's pods run it now

    @property
    def backend(self) -> RouteBackend:
        """The canary's role Service, as the role-service template renders it."""
        return RouteBackend(self.service, "canary", self.canary, 0)


def shadow_replicas(total: int, percent: int) -> int:
    """Canary pods at a shadow step: the share of the stable's pods whose requests they receive,
    rounded up, at least one (none when the ModelDeployment is scaled to zero)."""
    total = max(0, int(total))
    if total == 0:
        return 0
    return max(1, -(-total * max(0, min(100, int(percent))) // 100))


def has_shadow_steps(steps: tuple[RolloutStep, ...]) -> bool:
    return any(s.shadow is not None for s in steps)


def shadow_plan(name: str, percent: int | None, canary: str, stable: str, canary_ready: int) -> ShadowPlan | None:
    """The mirror of a shadow step (`percent`), active once a canary pod is ready to receive it."""
    if percent is None:
        return None
    return ShadowPlan(percent, canary, stable, role_service(name, "canary"), active=canary_ready > 0)


def may_mirror(steps: tuple[RolloutStep, ...], canary_before: Mapping[str, Any]) -> bool:
    """Whether stable pods may have been told to mirror in this rollout: it has shadow steps, or
    the status says a shadow ran (the steps may have been edited since)."""
    return has_shadow_steps(steps) or bool(canary_before.get("shadowPercent"))
