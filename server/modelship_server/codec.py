"""JSON/binary tensor data -> validated numpy arrays (numpy only, vectorised checks)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BadRequest
from .signature import V2_TO_NUMPY, TensorSpec

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
    shape = arr.shape
    expected = spec.shape
    if len(shape) != len(expected) or any(e != -1 and s != e for s, e in zip(shape, expected)):
        raise BadRequest(f"{what}: shape {list(shape)} does not match {list(expected)} (-1 = any)")
    if shape[0] == 0:
        raise BadRequest(f"{what}: no rows")
    return shape[0]


def from_bytes(raw: bytes | memoryview, spec: TensorSpec, datatype: str, shape: list[int], what: str) -> np.ndarray:
    """Binary tensor data extension: little-endian, row-major."""
    if datatype != spec.datatype:
        raise BadRequest(f"{what}: datatype {datatype} does not match the model's {spec.datatype}")
    dtype = V2_TO_NUMPY[datatype].newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{what}: {len(raw)} bytes of binary data for shape {shape} of {datatype}")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if spec.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BadRequest(f"{what}: non-finite values (NaN or infinity)")
    return arr.astype(spec.dtype, copy=False)
