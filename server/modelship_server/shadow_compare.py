"""Shadow comparison: a canary's HTTP answer decoded back into tensors, compared with the
stable's own outputs (the arrays it computed, not a re-encoding of its answer).

Pure numpy, no I/O. Fail closed: an answer that cannot be read as the stable's outputs (other
names, shapes or dtypes, garbage JSON, NaN where the stable has a number) is a "mismatch",
and every row of it counts as disagreeing, so a canary that answers garbage never looks good.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from .signature import NUMPY_TO_V2, V2_TO_NUMPY

COMPARED = "compared"
MISMATCH = "mismatch"
ERROR = "error"
DROPPED = "dropped"
OUTCOMES = (COMPARED, DROPPED, ERROR, MISMATCH)


class Mismatch(ValueError):
    """The canary's answer does not fit the stable's outputs."""


@dataclass(frozen=True, slots=True)
class Comparison:
    outcome: str  # COMPARED or MISMATCH
    rows: int
    disagreements: int = 0  # rows whose predicted class differs (every row of a mismatch)
    abs_diff_sum: float = 0.0  # sum over rows of the row's mean absolute difference
    abs_diff_max: float = 0.0
    reason: str = ""  # why a mismatch


@dataclass(frozen=True, slots=True)
class Request:
    """What the comparison needs to know about the mirrored request."""

    protocol: str  # "predict", "v1", "v2" (asgi's protocol names)
    path: str
    body: bytes
    header_length: int | None = None  # v2 binary extension: the JSON header's length


def compare_answer(req: Request, stable: Mapping[str, np.ndarray], class_outputs: Sequence[str],
                   answer: bytes, answer_header_length: int | None) -> Comparison:  # fmt: skip
    """The canary's 2xx `answer` to `req` against the stable's `stable` outputs."""
    rows = _rows(stable)
    try:
        canary = decode_answer(req, stable, answer, answer_header_length)
        expected = expected_outputs(req, stable)
        return compare(stable, canary, expected, class_outputs)
    except Mismatch as e:
        return Comparison(MISMATCH, rows, rows, reason=str(e))


def _rows(stable: Mapping[str, np.ndarray]) -> int:
    for arr in stable.values():
        return int(arr.shape[0]) if arr.ndim else 1
    return 0


def class_outputs_of(names_shapes: Sequence[tuple[str, tuple[int, ...], str]], is_classifier: bool) -> list[str]:
    """Outputs whose argmax is a predicted class: a classifier's first output, and any float
    output of two dimensions with at least two columns (a class dimension)."""
    out = []
    for i, (name, shape, datatype) in enumerate(names_shapes):
        floating = V2_TO_NUMPY[datatype].kind == "f"
        if floating and ((i == 0 and is_classifier) or (len(shape) == 2 and (shape[1] >= 2 or shape[1] == -1))):
            out.append(name)
    return out


# -- decoding the canary's answer ---------------------------------------------------------

def _json(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise Mismatch(f"answer is not JSON: {e}") from None


def _array(values: Any, like: np.ndarray, what: str) -> np.ndarray:
    """JSON values -> an array of the stable's dtype (numbers only; ints may stand for floats)."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise Mismatch(f"{what}: not a rectangular array") from None
    allowed = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}.get(like.dtype.kind, "")
    if arr.dtype.kind not in allowed:
        raise Mismatch(f"{what}: {arr.dtype} values where the stable answers {like.dtype}")
    return arr.astype(like.dtype, copy=False)


def decode_answer(req: Request, stable: Mapping[str, np.ndarray], answer: bytes,
                  header_length: int | None) -> dict[str, np.ndarray]:  # fmt: skip
    """{output name: array} from the canary's answer, in the stable's dtypes."""
    if req.protocol == "v2":
        return _decode_v2(stable, answer, header_length)
    obj = _json(answer)
    if not isinstance(obj, dict):
        raise Mismatch("answer is not a JSON object")
    if req.protocol == "v1":
        return _decode_v1(stable, obj)
    outputs = obj.get("outputs")
    if not isinstance(outputs, dict):
        raise Mismatch('answer lacks "outputs"')
    single = req.path == "/predict"
    out = {}
    for name, values in outputs.items():
        if name not in stable:
            raise Mismatch(f"unknown output {name!r}")
        arr = _array(values, stable[name], f"output {name!r}")
        out[name] = arr[None, ...] if single else arr
    return out


def _decode_v1(stable: Mapping[str, np.ndarray], obj: dict[str, Any]) -> dict[str, np.ndarray]:
    preds = obj.get("predictions")
    if preds is None:
        raise Mismatch('answer lacks "predictions"')
    names = list(stable)
    if len(names) == 1:
        return {names[0]: _array(preds, stable[names[0]], "predictions")}
    if not isinstance(preds, list) or not all(isinstance(p, dict) and set(p) == set(names) for p in preds):
        raise Mismatch(f"predictions must be one object per row with the outputs {names}")
    return {n: _array([p[n] for p in preds], stable[n], f"output {n!r}") for n in names}


def _decode_v2(stable: Mapping[str, np.ndarray], answer: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    view = memoryview(answer)
    if header_length is not None:
        if not 0 < header_length <= len(answer):
            raise Mismatch("inference-header-content-length out of range")
        head, binary = view[:header_length], view[header_length:]
    else:
        head, binary = view, view[:0]
    obj = _json(head)
    items = obj.get("outputs") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        raise Mismatch('answer lacks "outputs"')
    out: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in stable or name in out:
            raise Mismatch(f"unknown or repeated output {name!r}")
        like = stable[name]
        datatype, shape = item.get("datatype"), item.get("shape")
        if datatype != NUMPY_TO_V2.get(like.dtype):
            raise Mismatch(f"output {name!r}: datatype {datatype!r}, the stable's is {NUMPY_TO_V2.get(like.dtype)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise Mismatch(f"output {name!r}: bad shape {shape!r}")
        params = item.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        try:
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise Mismatch(f"output {name!r}: binary_data_size out of range")
                arr = np.frombuffer(binary[offset : offset + size], dtype=like.dtype.newbyteorder("<")).reshape(shape)
                offset += size
            else:
                arr = _array(item.get("data"), like, f"output {name!r}").reshape(shape)
        except ValueError as e:  # reshape of the wrong element count
            raise Mismatch(f"output {name!r}: {e}") from None
        out[name] = arr
    if offset != len(binary):
        raise Mismatch("binary data left over after the outputs")
    return out


def expected_outputs(req: Request, stable: Mapping[str, np.ndarray]) -> list[str]:
    """The outputs the canary must answer: all of them, or those a v2 request names."""
    if req.protocol != "v2":
        return list(stable)
    head = memoryview(req.body)[: req.header_length] if req.header_length else req.body
    try:
        asked = orjson.loads(head).get("outputs")
    except (orjson.JSONDecodeError, AttributeError):
        asked = None
    if not asked or not isinstance(asked, list):
        return list(stable)
    names = [o.get("name") for o in asked if isinstance(o, dict)]
    return [n for n in names if n in stable] or list(stable)


# -- comparing --------------------------------------------------------------------------

def compare(stable: Mapping[str, np.ndarray], canary: Mapping[str, np.ndarray], expected: Sequence[str],
            class_outputs: Sequence[str]) -> Comparison:  # fmt: skip
    """Per-row agreement of the predicted class (class outputs) and absolute differences of
    every float output. Raises Mismatch when `canary` does not have the stable's form."""
    rows = _rows(stable)
    if set(canary) != set(expected):
        raise Mismatch(f"outputs {sorted(canary)}, expected {sorted(expected)}")
    disagree = np.zeros(rows, dtype=bool)
    diff_total = np.zeros(rows, dtype=np.float64)  # per row: sum of absolute differences
    elements = 0  # per row: float elements compared
    diff_max = 0.0
    for name in expected:
        s, c = stable[name], canary[name]
        if s.shape != c.shape:
            raise Mismatch(f"output {name!r}: shape {list(c.shape)}, the stable's is {list(s.shape)}")
        if s.dtype.kind != "f" or rows == 0:
            continue
        s2 = s.reshape(rows, -1).astype(np.float64)
        c2 = c.reshape(rows, -1).astype(np.float64)
        d = np.abs(s2 - c2)
        d[np.isnan(s2) & np.isnan(c2)] = 0.0
        if not np.isfinite(d).all():
            raise Mismatch(f"output {name!r}: non-finite values where the stable has numbers")
        if d.size:
            diff_total += d.sum(axis=1)
            elements += d.shape[1]
            diff_max = max(diff_max, float(d.max()))
        if name in class_outputs and s.ndim >= 2 and s.shape[-1] >= 2:
            disagree |= (s.argmax(axis=-1) != c.argmax(axis=-1)).reshape(rows, -1).any(axis=1)
    mean_sum = float((diff_total / elements).sum()) if elements else 0.0
    return Comparison(COMPARED, rows, int(disagree.sum()), mean_sum, diff_max)
