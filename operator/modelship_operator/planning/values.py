"""Small conversions the planning modules share: status values in and out. Pure.

Status is JSON written by earlier reconciles (or by hand, or restored from a backup), so every
read is defensive; timestamps are RFC 3339 UTC with second precision, as Kubernetes writes them.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any, Mapping

from ..spec import ModelDeployment


def jsonable(value: Any) -> Any:
    """Dataclasses, mappings and tuples as plain JSON values (spec models are dataclasses)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # API objects name the fields their identity covers (new fields at their default are left out).
        names = value.identity_fields() if hasattr(value, "identity_fields") else [f.name for f in dataclasses.fields(value)]
        return {name: jsonable(getattr(value, name)) for name in names}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def previous_status(md: ModelDeployment) -> Mapping:
    """The live status the plan starts from ({} when there is none or it is not an object)."""
    return md.raw_status if isinstance(md.raw_status, Mapping) else {}


def aware(now: datetime) -> datetime:
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def timestamp(now: datetime) -> str:
    return aware(now).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    """A status timestamp (RFC 3339, as `timestamp` writes it) back to an aware datetime."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def seconds_until(at: datetime | None, now: datetime) -> float | None:
    if at is None:
        return None
    # At least a second: a due analysis that reconcile could not measure must not spin.
    return max(1.0, (at - aware(now)).total_seconds())


def find_condition(status: Mapping, type_: str) -> Mapping | None:
    """The condition of `type_` in a status (a `.status` mapping with `conditions`), if any."""
    return next(
        (c for c in status.get("conditions") or () if isinstance(c, Mapping) and c.get("type") == type_), None
    )
