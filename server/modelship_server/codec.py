"""JSON/binary tensor data -> validated numpy arrays (numpy only, vectorised checks)."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .errors import BadRequest
from .signature import V2_TO_NUMPY, Signature, TensorSpec

# Body limits (see body_limit): bytes one tensor element may take in a JSON body. A float
# printed in full ("-1.2345678901234567e-308", 24 chars), its separator and pretty-print
# indentation stay under 40; 64 leaves generous slack. Binary data takes its itemsize.
JSON_BYTES_PER_ELEMENT = 64
BODY_OVERHEAD_BYTES = 64 * 1024  # ids, names, parameters, "outputs" lists
DYNAMIC_DIM_GUESS = 512  # a -1 inside a row (e.g. a sequence length): assumed this long
MAX_DERIVED_BODY_BYTES = 256 * 1024 * 1024  # the derived limit never exceeds this

# numpy kinds a JSON array may arrive as, per target kind (b: bool, i/u: int, f: float).
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
_KIND_NAMES = {"U": "strings", "S": "bytes", "O": "mixed or null values", "b": "booleans", "f": "floats", "i": "integers", "u": "integers"}


def to_array(data: Any, spec: TensorSpec, what: str) -> np.ndarray:
    """Nested lists of JSON numbers -> an array of spec's dtype (shape not checked here)."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"{what}: not a rectangular array of numbers ({e})") from None
    return cast(arr, spec, what)


def cast(arr: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    target = spec.dtype
    kind = arr.dtype.kind
    if kind not in _ACCEPTED_KINDS[target.kind]:
        if arr.size == 0:
            raise BadRequest(f"{what}: no data")
        got = _KIND_NAMES.get(kind, str(arr.dtype))
        raise BadRequest(f"{what}: expected {spec.datatype} values, got {got}")
    if target.kind in "iu" and arr.dtype != target and arr.size:
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadRequest(f"{what}: values out of range for {spec.datatype}")
    if arr.dtype != target:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(target)
    if target.kind == "f" and not np.isfinite(arr).all():
        raise BadRequest(f"{what}: non-finite values (NaN or infinity, or out of {spec.datatype} range)")
    return arr


def check_shape(arr: np.ndarray, spec: TensorSpec, what: str) -> int:
    """Shape against the signature (-1 matches any size); returns the rows (dim 0)."""
    return check_declared_shape(arr.shape, spec, what)


def check_declared_shape(shape: tuple[int, ...] | list[int], spec: TensorSpec, what: str) -> int:
    """A shape (an array's, or one a client declared) against the signature; returns dim 0."""
    expected = spec.shape
    if len(shape) != len(expected) or any(e != -1 and s != e for s, e in zip(shape, expected)):
        raise BadRequest(f"{what}: shape {list(shape)} does not match {list(expected)} (-1 = any)")
    if shape[0] == 0:
        raise BadRequest(f"{what}: no rows")
    return shape[0]


def reshape(arr: np.ndarray, shape: list[int], what: str) -> np.ndarray:
    """`arr` (of the right element count) in a client-declared shape."""
    try:
        return arr.reshape(shape)
    except ValueError as e:  # e.g. zero elements in a shape too big to index
        raise BadRequest(f"{what}: cannot use shape {shape}: {e}") from None


def element_count(shape: list[int]) -> int:
    """Elements of a client-declared shape, in Python ints: np.prod overflows int64 silently."""
    return math.prod(shape)


def from_bytes(raw: bytes | memoryview, spec: TensorSpec, datatype: str, shape: list[int], what: str) -> np.ndarray:
    """Binary tensor data extension: little-endian, row-major."""
    if datatype != spec.datatype:
        raise BadRequest(f"{what}: datatype {datatype} does not match the model's {spec.datatype}")
    check_declared_shape(shape, spec, what)
    dtype = V2_TO_NUMPY[datatype].newbyteorder("<")
    count = element_count(shape)
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{what}: {len(raw)} bytes of binary data for shape {shape} of {datatype}")
    arr = reshape(np.frombuffer(raw, dtype=dtype), shape, what)
    if spec.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BadRequest(f"{what}: non-finite values (NaN or infinity)")
    return arr.astype(spec.dtype, copy=False)


def _row_elements(spec: TensorSpec) -> int:
    return math.prod(DYNAMIC_DIM_GUESS if d == -1 else d for d in spec.row_shape)


def _column_name_bytes(spec: TensorSpec) -> int:
    """Bytes the column names add to a row sent by name ({"name": value, ...}): each name
    JSON-quoted as its longest form (non-ASCII escaped as \\uXXXX), a colon and a space."""
    return sum(len(json.dumps(c)) + 2 for c in spec.columns)


def body_limit(sig: Signature, max_batch_rows: int) -> int:
    """Most bytes an inference request body may have: `max_batch_rows` rows of every input,
    written as JSON (the larger of JSON and binary), with generous slack. Bodies past it are
    refused (413) before any parsing."""
    rows = max_batch_rows if sig.batchable else max(1, *(s.shape[0] for s in sig.inputs))
    # Per row and input: the elements, plus the input's name (V1 instances repeat it per row),
    # plus its column names (a row sent by name repeats them).
    per_row = sum(_row_elements(s) * JSON_BYTES_PER_ELEMENT + len(s.name) + 16 + _column_name_bytes(s) for s in sig.inputs)
    return min(BODY_OVERHEAD_BYTES + rows * per_row, MAX_DERIVED_BODY_BYTES)


def feedback_body_limit(sig: Signature, max_batch_rows: int, max_items: int) -> int:
    """Most bytes a feedback body may have: the truth for `max_batch_rows` rows of every
    output, or `max_items` feedback items, with the same slack as body_limit."""
    per_row = sum(_row_elements(s) * JSON_BYTES_PER_ELEMENT for s in sig.outputs)
    return min(BODY_OVERHEAD_BYTES + max_items * 256 + max_batch_rows * per_row, MAX_DERIVED_BODY_BYTES)
