"""Offline validation of ModelDeployments and of the CRD itself, with the API server's semantics,
from the CRD that `crdgen` generates from the models.

`validate(obj)` gives the verdict an API server (with kubectl's strict field validation) would
give: nulls of non-nullable fields pruned, defaults applied as the API server applies them (a
default applies where the field is absent and its parent exists, and the nested defaults of an
inserted default are applied too), the structural schema checked with jsonschema, list-map keys
unique, then every `x-kubernetes-validations` CEL rule evaluated at its node with cel-python.
Without cel-python (or jsonschema) the typed model, which enforces the same bounds and rules,
gives the verdict.

`crd_errors(crd)` is what the API server checks when the CRD is created: a structural schema,
and every `default` valid against its own node's schema and CEL rules EXACTLY AS WRITTEN, with no
nested defaults filled in first (apiextensions-apiserver schema/defaulting/validation.go).
"""
from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from . import crdgen
from . import v1alpha1 as v
from .crdgen import apply_defaults
from .markers import re2_anchored, re2_error

__all__ = ["apply_defaults", "cel_available", "crd_errors", "crd_text", "default_errors", "eval_rule",
           "iter_rules", "load_crd", "openapi_schema", "prune_nulls", "re2_anchored", "structural_errors",
           "to_json_schema", "validate"]


def load_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict (a fresh copy; callers may mutate it)."""
    return crdgen.crd()


def crd_text() -> str:
    """The CRD's YAML, generated from the models (what crds/ holds)."""
    return crdgen.crd_yaml()


def openapi_schema(crd: Mapping[str, Any] | None = None, version: str = v.VERSION) -> dict[str, Any]:
    """The openAPIV3Schema of one served version."""
    crd = crd if crd is not None else crdgen._crd()
    for ver in crd["spec"]["versions"]:
        if ver["name"] == version:
            return copy.deepcopy(ver["schema"]["openAPIV3Schema"])
    raise KeyError(f"the CRD has no version {version!r}")


def _path(parts: Any) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "<root>"


# --------------------------------------------------------------------------- pruning nulls
def prune_nulls(obj: Any, schema: Mapping[str, Any]) -> Any:
    """A copy of `obj` without null values of non-nullable fields that have no default (the API
    server drops them before defaulting; nulls with a default get the default)."""
    obj = copy.deepcopy(obj)
    _prune(obj, schema)
    return obj


def _prune(x: Any, s: Mapping[str, Any] | None) -> None:
    if not s or s.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(x, dict):
        props = s.get("properties") or {}
        extra = s.get("additionalProperties") if isinstance(s.get("additionalProperties"), Mapping) else None
        for key in list(x):
            sub = props.get(key, extra)
            if x[key] is None and sub is not None and not sub.get("nullable") and "default" not in sub:
                del x[key]
            elif sub is not None:
                _prune(x[key], sub)
    elif isinstance(x, list) and isinstance(s.get("items"), Mapping):
        for item in x:
            _prune(item, s["items"])


# --------------------------------------------------------------------------- structural schema
def to_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Strict JSON Schema (draft 4: OpenAPI 3.0's boolean exclusiveMinimum) for a structural
    schema: objects with declared properties reject unknown fields unless they preserve them."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(sub) for k, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key == "pattern":
            out[key] = re2_anchored(value)
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out.pop("nullable", None)
        out["type"] = [out["type"], "null"]
    return out


def schema_errors(obj: Any, schema: Mapping[str, Any], where: tuple[Any, ...] = ()) -> list[str]:
    import jsonschema  # imported here: only offline validation needs it

    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    errors = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties" and err.validator_value is False:
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            message = f"unknown field(s): {', '.join(map(repr, extra))}"
        else:
            message = err.message
        errors.append(f"{_path(where + tuple(err.absolute_path))}: {message}")
    return errors


def list_map_errors(obj: Any, schema: Mapping[str, Any], path: tuple[Any, ...] = ()) -> list[str]:
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
                errors += list_map_errors(obj[key], sub, path + (key,))
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(obj):
            errors += list_map_errors(item, schema["items"], path + (i,))
    return errors


def walk(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node with its path (properties, items, additionalProperties, anyOf)."""
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), Mapping):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from walk(node["additionalProperties"], f"{path}{{}}")
    for i, sub in enumerate(node.get("anyOf") or ()):
        yield from walk(sub, f"{path}<anyOf{i}>")


def structural_errors(root: Mapping[str, Any]) -> list[str]:
    """Violations of the structural-schema rules the API server enforces on a CRD."""
    problems = []
    for path, node in walk(root):
        if ">" in path:  # anyOf branches may only carry value validations
            if set(node) - {"type"}:
                problems.append(f"{path}: anyOf branch with more than a type")
            continue
        if "type" not in node and not node.get("x-kubernetes-int-or-string") \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        if node.get("type") == "object":
            has_props, has_extra = "properties" in node, "additionalProperties" in node
            if has_props and has_extra:
                problems.append(f"{path}: properties and additionalProperties together")
            if not (has_props or has_extra or node.get("x-kubernetes-preserve-unknown-fields")) \
                    and path != ".metadata":
                problems.append(f"{path}: object without properties or preserve-unknown-fields")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: array without items")
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            item = node.get("items") or {}
            if not keys or any(k not in item.get("required", []) for k in keys):
                problems.append(f"{path}: list-map keys must be required fields of the items")
        if "default" in node and (path.startswith(".metadata") or path.startswith(".status")):
            problems.append(f"{path}: defaults belong in spec")
    if root.get("properties", {}).get("metadata") != {"type": "object"}:
        problems.append(".metadata: only `type: object` is allowed there")
    return problems


# --------------------------------------------------------------------------- CEL rules
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
    import celpy

    if (error := re2_error(str(pattern))) is not None:  # Kubernetes' CEL compiles RE2: an error there too
        raise ValueError(f"error parsing regexp: {error}")
    return celpy.celtypes.BoolType(re.search(re2_anchored(str(pattern)), str(text)) is not None)


def _cel_lower_ascii(text: Any) -> Any:
    """Kubernetes' CEL has the strings extension (`lowerAscii`); cel-python lacks it."""
    import celpy

    return celpy.celtypes.StringType("".join(c.lower() if c.isascii() else c for c in str(text)))


@functools.lru_cache(maxsize=256)
def _cel_program(rule: str) -> Any:
    env = _cel_env()
    return env.program(env.compile(rule), functions={"matches": _cel_matches, "lowerAscii": _cel_lower_ascii})


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


def cel_errors(obj: Any, schema: Mapping[str, Any], where: tuple[Any, ...] = ()) -> list[str]:
    errors = []
    for path, value, rule in iter_rules(schema, obj):
        verdict = eval_rule(rule["rule"], value)
        if verdict is not True:
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            detail = f" ({verdict})" if isinstance(verdict, str) else ""
            errors.append(f"{_path(where + path)}: {message}{detail}")
    return errors


# --------------------------------------------------------------------------- the CRD itself
def default_errors(root: Mapping[str, Any]) -> list[str]:
    """Every `default` checked as the API server checks it at CRD creation: as written (no
    nested defaults filled in), free of unknown fields, valid against its node's schema, and
    passing its node's CEL rules (and those of the nodes inside it that the default sets)."""
    problems = []
    for path, node in walk(root):
        if "default" not in node:
            continue
        value = node["default"]
        where = (f"{path.lstrip('.') or '<root>'}.default",)
        problems += schema_errors(value, node, where)  # includes unknown fields (pruning)
        problems += list_map_errors(value, node, where)
        if cel_available():
            problems += cel_errors(value, node, where)
    return problems


def crd_errors(crd: Mapping[str, Any] | None = None) -> list[str]:
    """What the API server would reject when this CRD is created (structure and defaults)."""
    root = openapi_schema(crd)
    return structural_errors(root) + default_errors(root)


# --------------------------------------------------------------------------- objects
def validate(obj: Any, *, cel: bool | None = None) -> list[str]:
    """Everything an API server with this CRD would reject in `obj`, as readable lines
    (empty when valid). `cel=None` evaluates the CEL rules when celpy is installed; without
    it (or without jsonschema) the typed model gives the verdict, first error only."""
    if not isinstance(obj, Mapping):
        return ["<root>: a ModelDeployment must be a mapping"]
    errors = []
    if obj.get("apiVersion") != v.API_VERSION:
        errors.append(f"apiVersion: must be {v.API_VERSION}, not {obj.get('apiVersion')!r}")
    if obj.get("kind") != v.KIND:
        errors.append(f"kind: must be {v.KIND}, not {obj.get('kind')!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        errors.append("metadata.name: required")
    if errors:
        return errors
    schema = openapi_schema()
    stored = defaulted(obj, schema)
    try:
        errors = schema_errors(stored, schema)
    except ImportError:  # no jsonschema: the typed model checks structure and rules alike
        return _typed_model_errors(stored)
    errors += list_map_errors(stored, schema)
    if errors:
        # The API server stops before CEL when the structure is wrong; so do we.
        return errors
    use_cel = cel_available() if cel is None else cel
    return cel_errors(stored, schema) if use_cel else _typed_model_errors(stored)


def defaulted(obj: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`obj` as the API server would store it: nulls pruned, then defaults applied."""
    schema = schema if schema is not None else openapi_schema()
    return apply_defaults(prune_nulls(dict(obj), schema), schema)


def _typed_model_errors(obj: Mapping[str, Any]) -> list[str]:
    from ..spec import ModelDeployment  # the operator's view: metadata + the typed spec

    try:
        ModelDeployment.from_body(obj)
    except v.SpecError as exc:
        return [str(exc)]
    return []
