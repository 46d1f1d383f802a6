"""The ModelDeployment CRD as data, and offline validation against it.

`validate(obj)` gives the verdict an API server would: it applies the schema's defaults,
checks the structural OpenAPI schema with jsonschema (unknown fields are errors, as with
kubectl's strict field validation), and evaluates every `x-kubernetes-validations` CEL
rule at the node where it sits when the `cel-python` package (celpy) is installed. Without
celpy the cross-field rules are checked by the typed model in `spec` instead.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import spec as spec_mod

CRD_FILENAME = "modeldeployments.modelship.dev.yaml"
# The canonical file lives in crds/ of the repository; the package carries a byte-identical
# copy (crd/) so an installed operator or CLI finds it too.
_REPO_CRD = Path(__file__).resolve().parents[2] / "crds" / CRD_FILENAME


def crd_text() -> str:
    """The CRD's YAML text: the package copy when installed, else the repository's file."""
    try:
        packaged = resources.files(__package__).joinpath("crd", CRD_FILENAME)
        if packaged.is_file():
            return packaged.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover - odd installs
        pass
    if _REPO_CRD.is_file():
        return _REPO_CRD.read_text(encoding="utf-8")
    raise FileNotFoundError(f"{CRD_FILENAME} is neither package data nor in {_REPO_CRD.parent}")


@functools.lru_cache(maxsize=1)
def _crd_cached() -> dict[str, Any]:
    return yaml.safe_load(crd_text())


def load_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict (a fresh copy; callers may mutate it)."""
    return copy.deepcopy(_crd_cached())


def openapi_schema(crd: Mapping[str, Any] | None = None, version: str = spec_mod.VERSION) -> dict[str, Any]:
    """The openAPIV3Schema of one served version."""
    crd = crd if crd is not None else _crd_cached()
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return copy.deepcopy(v["schema"]["openAPIV3Schema"])
    raise KeyError(f"the CRD has no version {version!r}")


# ---------------------------------------------------------------------------
# Defaulting (what the API server does before validation)
# ---------------------------------------------------------------------------
def apply_defaults(obj: Any, schema: Mapping[str, Any]) -> Any:
    """Return a copy of `obj` with the schema's `default`s filled in, top-down."""
    obj = copy.deepcopy(obj)
    _default_in_place(obj, schema)
    return obj


def _default_in_place(obj: Any, schema: Mapping[str, Any]) -> None:
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                _default_in_place(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in obj:
                if key not in props:
                    _default_in_place(obj[key], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for item in obj:
            _default_in_place(item, schema["items"])


def re2_anchored(pattern: str) -> str:
    """A Python regex that ends where RE2's does: RE2's `$` (no multiline) matches only at
    the very end, Python's also before a trailing newline."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern


# ---------------------------------------------------------------------------
# Structural schema → JSON Schema (draft 4: OpenAPI 3.0's boolean exclusiveMinimum)
# ---------------------------------------------------------------------------
def to_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Strict JSON Schema for an OpenAPI v3 structural schema: objects with declared
    properties reject unknown fields unless they preserve unknown fields."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(v) for v in value]
        elif key == "pattern":
            out[key] = re2_anchored(value)
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("nullable"):
        out.pop("nullable", None)
        if "type" in out:
            out["type"] = [out["type"], "null"]
    return out


def _path(parts: Iterator[Any] | Any) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "<root>"


def _schema_errors(obj: Any, schema: Mapping[str, Any]) -> list[str]:
    import jsonschema  # imported here: only offline validation needs it

    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    errors = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties" and err.validator_value is False:
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            message = f"unknown field(s): {', '.join(map(repr, extra))}"
        else:
            message = err.message
        errors.append(f"{_path(err.absolute_path)}: {message}")
    return errors


# ---------------------------------------------------------------------------
# CEL rules
# ---------------------------------------------------------------------------
def iter_rules(schema: Mapping[str, Any], obj: Any, path: tuple[Any, ...] = ()) -> Iterator[
        tuple[tuple[Any, ...], Any, Mapping[str, Any]]]:
    """(path, value, rule) for every x-kubernetes-validations rule that applies to a value
    present in `obj` (rules sit on the node they validate; absent optional nodes skip)."""
    for rule in schema.get("x-kubernetes-validations") or ():
        yield path, obj, rule
    if isinstance(obj, Mapping):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                yield from iter_rules(sub, value, path + (key,))
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(obj):
            yield from iter_rules(schema["items"], item, path + (i,))


def cel_available() -> bool:
    try:
        import celpy  # noqa: F401
    except ImportError:
        return False
    return True


def _cel_matches(text: Any, pattern: Any) -> Any:
    import re

    import celpy

    return celpy.celtypes.BoolType(re.search(re2_anchored(str(pattern)), str(text)) is not None)


@functools.lru_cache(maxsize=256)
def _cel_program(rule: str) -> Any:
    env = _cel_env()
    return env.program(env.compile(rule), functions={"matches": _cel_matches})


@functools.lru_cache(maxsize=1)
def _cel_env() -> Any:
    import celpy

    return celpy.Environment()


def eval_rule(rule: str, value: Any) -> bool | str:
    """Evaluate one CEL rule with `self` bound to `value`: True, False, or an error text."""
    import celpy

    try:
        result = _cel_program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except Exception as exc:  # celpy raises for type errors, e.g. no such key
        return f"rule could not be evaluated: {exc}"
    if isinstance(result, celpy.evaluation.CELEvalError):
        return f"rule could not be evaluated: {result}"
    return bool(result) if isinstance(result, celpy.celtypes.BoolType) else f"rule returned {result!r}"


def _cel_errors(obj: Any, schema: Mapping[str, Any]) -> list[str]:
    errors = []
    for path, value, rule in iter_rules(schema, obj):
        verdict = eval_rule(rule["rule"], value)
        if verdict is not True:
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            detail = f" ({verdict})" if isinstance(verdict, str) else ""
            errors.append(f"{_path(path)}: {message}{detail}")
    return errors


def _list_map_errors(obj: Any, schema: Mapping[str, Any], path: tuple[Any, ...] = ()) -> list[str]:
    """Duplicate keys in `x-kubernetes-list-type: map` lists, which the API server rejects."""
    errors = []
    if isinstance(obj, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = set()
        for item in obj:
            if isinstance(item, Mapping):
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    errors.append(f"{_path(path)}: duplicate entry with {', '.join(keys)} {key}")
                seen.add(key)
    if isinstance(obj, Mapping):
        for key, sub in (schema.get("properties") or {}).items():
            if key in obj:
                errors += _list_map_errors(obj[key], sub, path + (key,))
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(obj):
            errors += _list_map_errors(item, schema["items"], path + (i,))
    return errors


def validate(obj: Any, *, cel: bool | None = None) -> list[str]:
    """Everything an API server with this CRD would reject in `obj`, as readable lines
    (empty when valid). `cel=None` evaluates the CEL rules when celpy is installed; without
    it (or without jsonschema) the typed model in `spec` gives the verdict, first error only."""
    if not isinstance(obj, Mapping):
        return ["<root>: a ModelDeployment must be a mapping"]
    errors = []
    if obj.get("apiVersion") != spec_mod.API_VERSION:
        errors.append(f"apiVersion: must be {spec_mod.API_VERSION}, not {obj.get('apiVersion')!r}")
    if obj.get("kind") != spec_mod.KIND:
        errors.append(f"kind: must be {spec_mod.KIND}, not {obj.get('kind')!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        errors.append("metadata.name: required")
    if errors:
        return errors
    schema = openapi_schema()
    defaulted = apply_defaults(dict(obj), schema)
    try:
        errors = _schema_errors(defaulted, schema)
    except ImportError:  # no jsonschema: the typed model checks structure and rules alike
        return _typed_model_errors(defaulted)
    errors += _list_map_errors(defaulted, schema)
    if errors:
        # The API server stops before CEL when the structure is wrong; so do we.
        return errors
    use_cel = cel_available() if cel is None else cel
    return _cel_errors(defaulted, schema) if use_cel else _typed_model_errors(defaulted)


def _typed_model_errors(obj: Mapping[str, Any]) -> list[str]:
    try:
        spec_mod.ModelDeployment.from_body(obj)
    except spec_mod.SpecError as exc:
        return [str(exc)]
    return []
