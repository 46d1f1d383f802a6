"""The operator's runtime: when objects are reconciled (scheduler), which instance acts (leader),
and the thin kopf wiring that feeds both. See docs/internals.md."""
from .operator import LeadershipLost, Runtime, operator

__all__ = ["LeadershipLost", "Runtime", "operator"]
