"""Structured logging for the operator: one JSON object per line, or readable text.

kopf logs through the standard `logging` module with per-object context in `record.k8s_ref`
(or our own `extra={"object": ...}`); both end up as fields of the JSON line.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

# Attributes every LogRecord has; anything else was passed as `extra` and is worth printing.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)  # set by kopf's object loggers
        if isinstance(ref, dict):
            line["object"] = {k: ref[k] for k in ("namespace", "name", "kind") if ref.get(k)}
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in ("k8s_ref", "k8s_skip", "settings") and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(where)s")

    def format(self, record: logging.LogRecord) -> str:
        ref = getattr(record, "k8s_ref", None)
        record.where = f" [{ref.get('namespace')}/{ref.get('name')}]" if isinstance(ref, dict) else ""
        if not record.where and isinstance(obj := getattr(record, "object", None), dict):
            record.where = f" [{obj.get('namespace')}/{obj.get('name')}]"
        return super().format(record)


def configure(log_format: str, *, level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Install one handler on the root logger (replacing any), in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The HTTP client logs every request at INFO; that is noise in an operator's log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
