"""Protocol handlers: request bytes in, `Reply` out. No web framework in here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..errors import BadRequest

JSON = b"application/json"
_DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] | None = None


def loads(body: bytes | memoryview) -> Any:
    if not body:
        raise BadRequest("empty request body: expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e}") from None


def _default(obj: Any) -> Any:
    """What orjson's numpy support declines (non-contiguous arrays, numpy scalars)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=_DUMP_OPTS)


def ok(obj: Any) -> Reply:
    return Reply(200, dumps(obj))


def field(obj: Any, key: str, what: str = "request") -> Any:
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be a JSON object")
    try:
        return obj[key]
    except KeyError:
        raise BadRequest(f"{what} lacks the field {key!r}") from None
