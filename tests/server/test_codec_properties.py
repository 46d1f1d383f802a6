"""Property tests: whatever a client sends, the codecs and protocol decoders either give
validated arrays or raise BadRequest (a 400) — never another exception (a 500)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelship_server.codec import body_limit, check_declared_shape, from_bytes, to_array
from modelship_server.errors import BadRequest
from modelship_server.protocols import loads, plain, v1, v2
from modelship_server.settings import Settings
from modelship_server.signature import V2_TO_NUMPY, Signature, TensorSpec

SPECS = [TensorSpec("x", "FP32", (-1, 3)), TensorSpec("n", "INT64", (-1, 2)), TensorSpec("u", "UINT8", (-1, 2)),
         TensorSpec("b", "BOOL", (-1, 1)), TensorSpec("h", "FP16", (2, -1))]  # fmt: skip
SIG = Signature("m", (TensorSpec("input", "FP32", (-1, 4)),), (TensorSpec("out", "FP32", (-1, 2)),))
SIG2 = Signature("m2", (TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "INT32", (-1, -1))),
                 (TensorSpec("out", "FP32", (-1, 1)),))  # fmt: skip
SIG_NAMED = Signature("m3", (TensorSpec("input", "FP32", (-1, 4), ("a", "b", "c", "d")),), (TensorSpec("out", "FP32", (-1, 2)),))
MAX_ROWS = 8
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What orjson can hand a decoder: JSON values, with ints up to the 64-bit edges.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))  # fmt: skip
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=4)), max_leaves=40)  # fmt: skip
numbers = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False))
nested_numbers = st.recursive(numbers, lambda inner: st.lists(inner, max_size=5), max_leaves=40)
dims = st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1), st.sampled_from([2**31, 2**32, 2**62, 2**63]))
shapes = st.lists(dims, max_size=70)


def service(sig: Signature) -> SimpleNamespace:
    return SimpleNamespace(signature=sig, settings=Settings(max_batch_rows=MAX_ROWS))


@FAST
@given(data=st.one_of(json_values, nested_numbers), spec=st.sampled_from(SPECS))
def test_to_array_gives_the_spec_dtype_or_400(data, spec) -> None:
    try:
        arr = to_array(data, spec, "x")
    except BadRequest as e:
        assert e.message.startswith("x")
        return
    assert arr.dtype == spec.dtype
    if spec.dtype.kind == "f":
        assert np.isfinite(arr).all()


@FAST
@given(shape=shapes, spec=st.sampled_from(SPECS))
def test_any_declared_shape_is_checked_without_error(shape, spec) -> None:
    try:
        rows = check_declared_shape(shape, spec, "x")
    except BadRequest:
        return
    assert rows == shape[0] >= 1 and len(shape) == len(spec.shape)


@FAST
@given(raw=st.binary(max_size=64), shape=shapes, spec=st.sampled_from(SPECS), datatype=st.sampled_from(list(V2_TO_NUMPY)))
@example(raw=b"", shape=[0, 2**62, 3], spec=SPECS[0], datatype="FP32")  # no elements, too big to index
@example(raw=b"", shape=[2**32, 2**32, 3], spec=SPECS[0], datatype="FP32")  # np.prod wraps to 0
@example(raw=b"\0" * 4, shape=[1] * 70, spec=SPECS[0], datatype="FP32")  # past numpy's 64 dimensions
def test_binary_data_of_any_shape_and_size_is_an_array_or_400(raw, shape, spec, datatype) -> None:
    try:
        arr = from_bytes(raw, spec, datatype, shape, "x")
    except BadRequest:
        return
    assert list(arr.shape) == shape and arr.dtype == spec.dtype


# V2 requests: the right field names with any values, plus some right values.
v2_items = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["input", "a", "b"]), json_values),
    "shape": st.one_of(shapes, json_values),
    "datatype": st.one_of(st.sampled_from(list(V2_TO_NUMPY)), json_values),
    "data": st.one_of(nested_numbers, json_values),
    "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-5, 2**64 - 1), json_values)}), json_values),
})  # fmt: skip
v2_requests = st.one_of(json_values, st.fixed_dictionaries({"inputs": st.one_of(st.lists(v2_items, max_size=3), json_values)}, optional={
    "id": json_values, "outputs": st.one_of(st.lists(st.fixed_dictionaries({}, optional={"name": json_values, "parameters": json_values}), max_size=2), json_values),
    "parameters": json_values}))  # fmt: skip


@FAST
@example(req={"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 2**62], "data": []}]}, tail=b"", lie=None, sig=SIG)
@example(req={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], "id": [[1]]},
         tail=b"", lie=None, sig=SIG)  # fmt: skip
@given(req=v2_requests, tail=st.binary(max_size=48), lie=st.one_of(st.none(), st.integers(-(2**70), 2**70)),
       sig=st.sampled_from([SIG, SIG2]))  # fmt: skip
def test_v2_decode_gives_a_valid_feed_or_400(req, tail, lie, sig) -> None:
    header = orjson.dumps(req)
    body, length = (header + tail, len(header) if lie is None else lie) if tail else (header, None)
    svc = service(sig)
    try:
        parsed, feed, rows = v2._decode(svc, body, length)  # type: ignore[arg-type]
        v2._wanted(svc, parsed)  # type: ignore[arg-type]
    except BadRequest as e:
        assert e.message
        return
    assert 1 <= rows <= MAX_ROWS and set(feed) == {s.name for s in sig.inputs}
    for spec in sig.inputs:
        assert feed[spec.name].shape[0] == rows and feed[spec.name].dtype == spec.dtype


@FAST
@example(req={"features": json.loads("[" * 70 + "1" + "]" * 70)}, sig=SIG)
@given(req=st.one_of(json_values, st.fixed_dictionaries({"features": st.one_of(nested_numbers, json_values)}),
                     st.fixed_dictionaries({"batch_features": st.one_of(nested_numbers, json_values)}),
                     st.fixed_dictionaries({}, optional={"instances": st.one_of(nested_numbers, json_values),
                                                         "inputs": st.one_of(nested_numbers, json_values)})),
       sig=st.sampled_from([SIG, SIG2, SIG_NAMED]))  # fmt: skip
def test_plain_and_v1_decoding_gives_a_valid_feed_or_400(req, sig) -> None:
    svc = service(sig)
    for decode in (
        lambda: plain._feed(svc, plain.field(req, "features"), "features", one_row=True),  # type: ignore[arg-type]
        lambda: plain._feed(svc, plain.field(req, "batch_features"), "batch_features", one_row=False),  # type: ignore[arg-type]
        lambda: v1_feed(svc, req),
    ):
        try:
            feed, rows = decode()
        except BadRequest as e:
            assert e.message
            continue
        assert rows >= 1 and set(feed) == {s.name for s in sig.inputs}


COLS = ("a", "b", "c", "d")
NAMED_SPECS = [TensorSpec("input", "FP32", (-1, 4), COLS), TensorSpec("input", "INT64", (-1, 4), COLS),
               TensorSpec("input", "BOOL", (-1, 4), COLS)]  # fmt: skip
named_rows = st.one_of(
    st.fixed_dictionaries({c: st.one_of(numbers, st.booleans()) for c in COLS}),  # complete: mostly decodable
    st.dictionaries(st.one_of(st.sampled_from(COLS), st.text(max_size=5)), st.one_of(numbers, json_values), max_size=6),
)
JSON_TYPES = {"f": (int, float), "i": (int,), "u": (int,), "b": (bool,)}


def named_sig(spec: TensorSpec) -> Signature:
    return Signature("named", (spec,), (TensorSpec("out", "FP32", (-1, 2)),))


@FAST
@example(row={"a": True, "b": 1, "c": 2, "d": 3}, spec=NAMED_SPECS[0])  # numpy would read true as 1.0
@example(row={"a": [1], "b": [2], "c": [3], "d": [4]}, spec=NAMED_SPECS[0])  # rectangular, one level deeper
@example(row={"a": 1, "b": 2, "c": 3, "d": 2**64 - 1}, spec=NAMED_SPECS[1])  # out of INT64 range
@given(row=st.one_of(named_rows, json_values), spec=st.sampled_from(NAMED_SPECS))
def test_any_named_row_is_the_positional_row_or_400(row, spec) -> None:
    """A row by name decodes exactly when it names every column, no other, each value a JSON
    scalar of the input's kind that the positional form takes; then to the positional tensor."""
    svc = service(named_sig(spec))
    for one_row, value in ((True, row), (False, [row]), (False, [row, row])):
        try:
            feed, rows = plain._feed(svc, value, "features", one_row=one_row)  # type: ignore[arg-type]
        except BadRequest as e:
            assert e.message.startswith("features")
            decodes = False
        else:
            decodes = True
        complete = isinstance(row, dict) and set(row) == set(COLS)
        typed = complete and all(type(row[c]) in JSON_TYPES[spec.dtype.kind] for c in COLS)
        positional = None
        if typed:
            try:
                positional = to_array([[row[c] for c in COLS]], spec, "features")
            except BadRequest:
                pass
        assert decodes == (positional is not None), (row, spec)
        if decodes:
            n = 1 if one_row else len(value)
            assert rows == n and feed["input"].dtype == spec.dtype
            assert np.array_equal(feed["input"], np.repeat(positional, n, axis=0))


def test_named_features_need_column_names() -> None:
    svc = service(SIG)
    with pytest.raises(BadRequest, match="signature names no columns for input 'input'"):
        plain._feed(svc, {"a": 1.0}, "features", one_row=True)  # type: ignore[arg-type]


def v1_feed(svc: SimpleNamespace, req: object) -> tuple[dict, int]:
    columns = v1._columns(svc, req)  # type: ignore[arg-type]
    feed = {s.name: to_array(columns[s.name], s, s.name) for s in svc.signature.inputs}
    rows = {check_declared_shape(a.shape, s, s.name) for s, a in zip(svc.signature.inputs, feed.values())}
    return feed, rows.pop()


@FAST
@given(body=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_bytes_are_json_or_400(body) -> None:
    try:
        loads(body)
    except BadRequest as e:
        assert "JSON" in e.message


@pytest.mark.parametrize("sig", [SIG, SIG2], ids=["static", "dynamic"])
@given(rows=st.integers(1, 4096))
@settings(max_examples=30, deadline=None)
def test_the_body_limit_admits_max_rows_of_full_precision_json(sig, rows) -> None:
    """Every input at full float precision, pretty-printed, as V1 instances (names repeated)."""
    limit = body_limit(sig, rows)
    assert body_limit(sig, rows + 1) > limit  # grows with max_batch_rows
    widest = float(np.finfo(np.float64).tiny) * -1.2345678901234567
    instance = {s.name: [widest] * (s.row_shape[-1] if s.row_shape[-1] > 0 else 512) for s in sig.inputs}
    body = json.dumps({"instances": [instance] * min(rows, 64)}, indent=2).encode()
    assert len(body) / min(rows, 64) * rows < limit


@given(rows=st.integers(1, 4096), names=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=64, unique=True))
@settings(max_examples=30, deadline=None)
def test_the_body_limit_admits_max_rows_by_name(rows, names) -> None:
    """Rows sent by name repeat every column name: long and non-ASCII ones, escaped, pretty-printed."""
    spec = TensorSpec("input", "FP64", (-1, len(names)), tuple(names))
    limit = body_limit(named_sig(spec), rows)
    widest = float(np.finfo(np.float64).tiny) * -1.2345678901234567
    body = json.dumps({"batch_features": [dict.fromkeys(names, widest)] * min(rows, 64)}, indent=2).encode()
    assert len(body) / min(rows, 64) * rows < limit
