"""Kept for existing imports: offline validation now lives in `modelship_operator.api.validate`,
which checks objects (and the CRD itself) with the API server's semantics, from the CRD that
`modelship_operator.api.crdgen` generates from the models."""
from __future__ import annotations

from .api.crdgen import CRD_FILENAME
from .api.validate import (
    apply_defaults,
    cel_available,
    cel_errors,
    crd_errors,
    crd_text,
    default_errors,
    eval_rule,
    iter_rules,
    list_map_errors,
    load_crd,
    openapi_schema,
    re2_anchored,
    schema_errors,
    to_json_schema,
    validate,
)

# Names the tests of the previous module reached for.
_schema_errors = schema_errors
_list_map_errors = list_map_errors
_cel_errors = cel_errors

__all__ = ["CRD_FILENAME", "apply_defaults", "cel_available", "crd_errors", "crd_text", "default_errors",
           "eval_rule", "iter_rules", "load_crd", "openapi_schema", "re2_anchored", "to_json_schema", "validate"]
