"""Markers that declare the CRD next to the Python types (what kubebuilder's `+kubebuilder:`
comments are for Go types). Each marker does two jobs from one declaration: `crdgen` writes
it into the OpenAPI schema, and pydantic enforces it when a body is parsed.

- `OA(...)`: OpenAPI value validations (minimum, maxLength, pattern, maxItems, ...), `format`,
  a `description` for nodes that are not fields (list items, map values), and `ext` for
  `x-kubernetes-*` extensions.
- `Rule(...)`: one `x-kubernetes-validations` CEL rule with its message, plus `check`, the same
  predicate over the typed value, so the operator enforces it without a CEL interpreter.
  tests/operator/test_cel_rules.py (every rule, both ways) and the property test in
  tests/operator/test_spec.py prove the two agree (cel-python against `check`).
- `PassThrough`: a Kubernetes object stored as written (x-kubernetes-preserve-unknown-fields).
- `Shaped(Model)`: a dict validated against `Model`'s schema but kept as the dict written
  (core EnvVar, Toleration, ParentReference: the planning code passes them on unchanged).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticCustomError, core_schema

_NUMERIC = ("minimum", "maximum", "exclusiveMinimum")
_KNOWN = {"minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "pattern", "minItems",
          "maxItems", "format", "description"}


def re2_anchored(pattern: str) -> str:
    """A Python regex that ends where RE2's does: RE2's `$` (no multiline) matches only at
    the very end, Python's also before a trailing newline."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern


_NOT_RE2_GROUPS = ("?=", "?!", "?<=", "?<!", "?>", "?(", "?P=")  # lookaround, atomic, conditional, backref


def re2_error(pattern: str) -> str | None:
    """Why RE2 (Kubernetes' CEL, Go, Envoy) would reject `pattern`, as far as Python can tell; None
    when it compiles. Python's `re` accepts more than RE2: lookaround, backreferences, atomic groups,
    possessive quantifiers, \\Z and the a/L/u/x flags are refused here as RE2 refuses them."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    i, n, in_class, prev = 0, len(pattern), False, ""
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if not in_class and nxt and (nxt in "123456789Z"):
                return f"\\{nxt} is not RE2 syntax"
            i, prev = i + 2, "x"
            continue
        if in_class:
            in_class = c != "]"
            i += 1
            continue
        if c == "[":
            i += 1
            i += pattern.startswith("^", i)
            i += pattern.startswith("]", i)  # a literal ] first in the class
            in_class, prev = True, "x"
            continue
        if c == "(" and pattern.startswith("?", i + 1):
            bad = next((g for g in _NOT_RE2_GROUPS if pattern.startswith(g, i + 1)), None)
            flags = re.match(r"\?([a-zA-Z-]*)[:)]", pattern[i + 1:])
            if bad is None and flags and set(flags.group(1)) & set("aLux"):
                bad = f"?{flags.group(1)}"
            if bad is not None:
                return f"({bad}...) is not RE2 syntax"
        if c == "+" and prev and prev in "*+?}":
            return "possessive quantifiers are not RE2 syntax"
        prev, i = c, i + 1
    return None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(re2_anchored(pattern))


def matches(text: str, pattern: str) -> bool:
    """CEL's / OpenAPI's `matches`: an unanchored RE2 search."""
    return _compiled(pattern).search(text) is not None


def _fail(kind: str, message: str) -> PydanticCustomError:
    # The message goes through the context: rule messages may contain braces.
    return PydanticCustomError(kind, "{message}", {"message": message})


class OA:
    """OpenAPI keywords of one schema node (camelCase, as they appear in the CRD)."""

    def __init__(self, *, ext: Mapping[str, Any] | None = None, title: str = "", **keywords: Any) -> None:
        unknown = set(keywords) - _KNOWN
        if unknown:
            raise TypeError(f"unknown OpenAPI keyword(s): {sorted(unknown)}")
        self.keywords = dict(keywords)
        self.ext = dict(ext or {})
        self.title = title  # what the pattern means, for error messages ("a host name")

    def openapi(self) -> dict[str, Any]:
        out = dict(self.keywords)
        out.update(self.ext)
        return out

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def check(self, value: Any) -> Any:
        k = self.keywords
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo = k.get("minimum")
            if lo is not None and (value < lo or (k.get("exclusiveMinimum") and value == lo)):
                raise _fail("minimum", f"must be {'above' if k.get('exclusiveMinimum') else 'at least'} {lo}, not {value}")
            hi = k.get("maximum")
            if hi is not None and value > hi:
                raise _fail("maximum", f"must be at most {hi}, not {value}")
        elif isinstance(value, str):
            if len(value) < k.get("minLength", 0):
                raise _fail("minLength", "must not be empty" if k["minLength"] == 1
                            else f"must be at least {k['minLength']} characters")
            if "maxLength" in k and len(value) > k["maxLength"]:
                raise _fail("maxLength", f"must be at most {k['maxLength']} characters")
            if "pattern" in k and not matches(value, k["pattern"]):
                raise _fail("pattern", f"{value!r} is not {self.title}" if self.title
                            else f"{value!r} does not match {k['pattern']}")
        elif isinstance(value, Sequence):
            if len(value) < k.get("minItems", 0):
                raise _fail("minItems", f"needs at least {k['minItems']} entr{'y' if k['minItems'] == 1 else 'ies'}")
            if "maxItems" in k and len(value) > k["maxItems"]:
                raise _fail("maxItems", f"has {len(value)} entries; at most {k['maxItems']} are allowed")
        return value


@dataclass(frozen=True)
class Rule:
    """One CEL rule (`x-kubernetes-validations`) of the node it annotates.

    `check` is the same predicate over the parsed value (a model instance for objects, the
    plain value otherwise); it is what the operator runs, so no CEL interpreter is needed
    at run time."""

    rule: str
    message: str
    check: Callable[[Any], bool] = field(compare=False)

    def openapi(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(self.enforce, handler(source))

    def enforce(self, value: Any) -> Any:
        if not self.check(value):
            raise _fail("rule", self.message)
        return value


class _PassThrough:
    """A Kubernetes object kept as written (x-kubernetes-preserve-unknown-fields). Bodies are
    parsed from JSON text, so the dict is already the parse's own (no copy needed)."""

    def openapi(self) -> dict[str, Any]:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


PassThrough = _PassThrough()


class _WriteEmptyDefault:
    """Write an empty list/map default into the CRD (the API server then stores it); without
    this marker an empty default stays out of the CRD and reads as absent."""


WriteEmptyDefault = _WriteEmptyDefault()


class Shaped:
    """A dict validated against `model`'s schema (and rules), kept as the dict written."""

    def __init__(self, model: type) -> None:
        self.model = model

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        inner = handler.generate_schema(self.model)

        def keep_written(value: Any, validate: Any) -> Any:
            validate(value)
            return value  # parsed from JSON text: already the parse's own object

        return core_schema.no_info_wrap_validator_function(keep_written, inner)


@dataclass(frozen=True)
class Since:
    """The field was added after revisions existed (API release `version`). While it holds its
    default it is left out of the revision identity (`Checked.identity_fields`), so an operator
    upgrade that adds it does not give every ModelDeployment a new revision."""

    version: str


def rules_of(cls: type) -> tuple[Rule, ...]:
    """Class-level rules of a model (they sit on the object's own node)."""
    return tuple(cls.__dict__.get("__rules__", ()))


class Checked:
    """Base of the API objects: runs the class-level `__rules__` after the fields validate."""

    def __post_init__(self) -> None:
        for rule in rules_of(type(self)):
            rule.enforce(self)

    def identity_fields(self) -> list[str]:
        """The attributes a revision's identity covers: all but `Since` fields at their default."""
        names = []
        for name, info in type(self).__pydantic_fields__.items():  # type: ignore[attr-defined]
            added_later = any(isinstance(m, Since) for m in info.metadata)
            if added_later and getattr(self, name) == info.get_default(call_default_factory=True):
                continue
            names.append(name)
        return names
