"""OpenAPI for the inference POSTs and feedback, which bypass FastAPI's routing (asgi.py) and
so are not described by it: request bodies, and the error answers every route may give."""
from __future__ import annotations

from typing import Any

from .signature import V2_TO_NUMPY, Signature

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What was wrong, for a person to read."}},
}
_ERRORS = {
    "400": "Bad shape, datatype, values, JSON or fields.",
    "404": "Unknown model or version.",
    "413": "Body larger than the limit derived from MODELSHIP_MAX_BATCH_ROWS and the row size.",
    "503": "Not ready, shutting down or overloaded (with Retry-After).",
    "504": "Timed out in the queue or the forward pass.",
}
NUMBERS = {"type": "array", "items": {"type": "number"}}
V2_INPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(V2_TO_NUMPY)},
        "data": {"type": "array", "description": "Row-major values, flat or nested."},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
    },
}
V2_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "items": V2_INPUT},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
    },
}
FEEDBACK_ITEM = {
    "type": "object",
    "required": ["request_id", "truth"],
    "properties": {"request_id": {"type": "string"}, "truth": {"description": "One label or value per predicted row."}},
}


def _post(summary: str, body: dict[str, Any], params: list[str]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "The predictions.", "content": {"application/json": {"schema": {"type": "object"}}}}}
    for code, text in _ERRORS.items():
        responses[code] = {"description": text, "content": {"application/json": {"schema": ERROR}}}
    return {
        "post": {
            "summary": summary,
            "operationId": summary.lower().replace(" ", "_").replace("(", "").replace(")", ""),
            "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": responses,
        }
    }


def _row_schema(sig: Signature | None) -> dict[str, Any]:
    """One row of a single-input model whose rows are flat vectors: exactly that many numbers."""
    if sig is None or len(sig.inputs) != 1 or len(sig.inputs[0].row_shape) != 1 or sig.inputs[0].row_shape[0] < 1:
        return NUMBERS
    n = sig.inputs[0].row_shape[0]
    return {**NUMBERS, "minItems": n, "maxItems": n}


_JSON_TYPES = {"b": "boolean", "i": "integer", "u": "integer", "f": "number"}


def _named_row_schema(sig: Signature | None) -> dict[str, Any] | None:
    """One row by column name ({"pixel_0_0": 0.0, ...}) when the single input's signature names its columns."""
    if sig is None or len(sig.inputs) != 1 or not sig.inputs[0].columns:
        return None
    spec = sig.inputs[0]
    value = {"type": _JSON_TYPES[spec.dtype.kind]}
    return {
        "type": "object",
        "description": "One row by column name; the server puts the values in the model's order.",
        "required": list(spec.columns),
        "properties": {c: value for c in spec.columns},
        "additionalProperties": False,
    }


def inference_paths(sig: Signature | None = None, max_batch_rows: int = 0) -> dict[str, Any]:
    row = _row_schema(sig)
    bounds = {"minItems": 1, **({"maxItems": max_batch_rows} if max_batch_rows else {})}
    rows = {"type": "array", "items": row, **bounds}
    named = _named_row_schema(sig)
    features, batch_features = row, rows
    if named is not None:
        named_rows = {"type": "array", "items": named, **bounds}
        features = {"oneOf": [row, named, named_rows]}  # a list of named rows is answered as /predict/batch
        batch_features = {"oneOf": [rows, named_rows]}
    return {
        "/predict": _post("Predict one row", {"type": "object", "required": ["features"], "properties": {"features": features}}, []),
        "/predict/batch": _post("Predict rows", {"type": "object", "required": ["batch_features"], "properties": {"batch_features": batch_features}}, []),
        "/v1/models/{name}:predict": _post("KServe V1 predict", {
            "type": "object", "properties": {"instances": rows, "inputs": rows}}, ["name"]),  # fmt: skip
        "/v2/models/{name}/infer": _post("Open Inference Protocol infer", V2_REQUEST, ["name"]),
        "/v2/models/{name}/versions/{version}/infer": _post("Open Inference Protocol infer (version)", V2_REQUEST, ["name", "version"]),
    }


FEEDBACK_BODY = {"oneOf": [FEEDBACK_ITEM, {"type": "object", "required": ["feedback"],
                                          "properties": {"feedback": {"type": "array", "items": FEEDBACK_ITEM}}}]}  # fmt: skip


def complete(schema: dict[str, Any], sig: Signature | None = None, max_batch_rows: int = 0) -> dict[str, Any]:
    """FastAPI's schema plus the operations it cannot see (row sizes from the signature, once loaded)."""
    paths = schema.setdefault("paths", {})
    paths.update(inference_paths(sig, max_batch_rows))
    for path in ("/feedback", "/v2/models/{name}/feedback"):
        post = paths.get(path, {}).get("post")
        if post is not None:
            post["requestBody"] = {"required": True, "content": {"application/json": {"schema": FEEDBACK_BODY}}}
    return schema
