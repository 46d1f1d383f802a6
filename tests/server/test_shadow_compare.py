"""The shadow comparison and queue bounds without HTTP: decoding answers, fail-closed
mismatches, regression outputs, URL rules, the byte cap."""
from __future__ import annotations

import json

import numpy as np
import pytest

from modelship_server.shadow import Shadow, ShadowConfigError, make_config, parse_target
from modelship_server.shadow_compare import Request, class_outputs_of, compare_answer

LOGITS = np.array([[1.0, 3.0, 0.0], [2.0, 0.0, 1.0]], dtype=np.float32)
CLASSES = ["logits"]


def _v2(outputs: list[dict]) -> bytes:
    return json.dumps({"model_name": "m", "outputs": outputs}).encode()


def test_classifier_rows_disagreeing_and_abs_differences() -> None:
    canary = np.array([[1.5, 3.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)  # row 2's class changes
    req = Request("v2", "/v2/models/m/infer", b'{"inputs": []}')
    c = compare_answer(req, {"logits": LOGITS}, CLASSES,
                       _v2([{"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": canary.ravel().tolist()}]), None)  # fmt: skip
    assert (c.outcome, c.rows, c.disagreements) == ("compared", 2, 1)
    assert c.abs_diff_sum == pytest.approx(0.5 / 3 + 2.0 / 3) and c.abs_diff_max == pytest.approx(2.0)


def test_v2_binary_answer_and_requested_outputs_only() -> None:
    extra = np.arange(2, dtype=np.int64)
    head = _v2([{"name": "logits", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": LOGITS.nbytes}}])
    body = json.dumps({"inputs": [], "outputs": [{"name": "logits"}]}).encode()
    c = compare_answer(Request("v2", "/v2/models/m/infer", body), {"logits": LOGITS, "ids": extra}, CLASSES,
                       head + LOGITS.astype("<f4").tobytes(), len(head))  # fmt: skip
    assert (c.outcome, c.rows, c.disagreements, c.abs_diff_sum) == ("compared", 2, 0, 0.0)


@pytest.mark.parametrize("answer", [
    _v2([{"name": "logits", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]),  # shape
    _v2([{"name": "logits", "datatype": "FP64", "shape": [2, 3], "data": [0] * 6}]),  # dtype
    _v2([{"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": [0, 0, 0, 0, 0, None]}]),  # NaN / null
    _v2([{"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": [0] * 5}]),  # too few values
    _v2([{"name": "logits", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}}]),  # no binary
    _v2([]),  # no outputs
    b"<html>502</html>",
])  # fmt: skip
def test_answers_of_another_form_are_mismatches_with_every_row_disagreeing(answer: bytes) -> None:
    c = compare_answer(Request("v2", "/v2/models/m/infer", b"{}"), {"logits": LOGITS}, CLASSES, answer, None)
    assert (c.outcome, c.rows, c.disagreements) == ("mismatch", 2, 2), c.reason


def test_regression_outputs_count_no_disagreement_but_their_differences() -> None:
    stable = np.array([[1.0], [2.0], [4.0]], dtype=np.float32)
    req = Request("v1", "/v1/models/m:predict", b"{}")
    c = compare_answer(req, {"y": stable}, class_outputs_of([("y", (-1, 1), "FP32")], False),
                       b'{"predictions": [[1.5], [2.0], [1.0]]}', None)  # fmt: skip
    assert (c.outcome, c.rows, c.disagreements) == ("compared", 3, 0)
    assert (c.abs_diff_sum, c.abs_diff_max) == (pytest.approx(3.5), pytest.approx(3.0))


def test_class_outputs() -> None:
    specs = [("logits", (-1, 10), "FP32"), ("y", (-1, 1), "FP32"), ("probs", (-1, 3), "FP16"), ("ids", (-1, 4), "INT64")]
    assert class_outputs_of(specs, True) == ["logits", "probs"]
    assert class_outputs_of(specs[1:], False) == ["probs"]


@pytest.mark.parametrize("url,ok", [
    ("http://10.96.0.12:8080", "http://10.96.0.12:8080"), ("https://canary.ns.svc", "https://canary.ns.svc:443"),
    ("http://[fd00::1]:81/", "http://[fd00::1]:81"), ("http://a/b", None), ("http://a:0", None), ("gopher://a", None),
    ("http://a b", None), ("http://u@a", None), ("http://a#f", None), ("http://", None), ("", None),
])  # fmt: skip
def test_target_urls(url: str, ok: str | None) -> None:
    if ok is None:
        with pytest.raises(ShadowConfigError):
            parse_target(url)
    else:
        assert parse_target(url).url == ok


def test_the_byte_cap_drops_and_counts_without_keeping_anything() -> None:
    shadow = Shadow(make_config("http://127.0.0.1:9", 100, "r"), max_bytes=4096)
    shadow.offer("predict", "/predict", b"x" * 5000, [], {"logits": LOGITS}, "id")  # no event loop needed: never queued
    assert shadow.stats["r"].requests["dropped"] == 1 and shadow.state()["queued"] == 0 and shadow._bytes == 0
    off = Shadow(make_config(None, 0, None))
    off.offer("predict", "/predict", b"x", [], {"logits": LOGITS}, "id")
    assert not off.stats and off.state()["queued"] == 0


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from modelship_server.shadow import ShadowConfig, parse_update  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=12)  # fmt: skip
FIELD_VALUES = JSON | st.sampled_from(["http://10.0.0.1:8080", "https://a.b", "http://a:0", "ftp://a", "http://a/b"])
UPDATES = st.dictionaries(st.sampled_from(["url", "percent", "revision", "other"]), FIELD_VALUES, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(UPDATES.map(lambda d: json.dumps(d).encode()), JSON.map(lambda v: json.dumps(v).encode()),
                      st.binary(max_size=64)))  # fmt: skip
def test_any_put_body_is_a_config_or_a_4xx(body: bytes) -> None:
    try:
        config = parse_update(body)
    except ShadowConfigError as e:
        assert e.status in (400, 413, 422) and str(e)
        return
    assert isinstance(config, ShadowConfig) and 0 <= config.percent <= 100
    assert config.on == (config.target is not None)
