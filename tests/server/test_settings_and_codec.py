"""Pure units: settings from env and flags, signatures, tensor decoding and validation."""
from __future__ import annotations

import re

import numpy as np
import pytest

from modelship_server.__main__ import parse_args
from modelship_server.codec import check_shape, from_bytes, to_array
from modelship_server.errors import BadRequest
from modelship_server.settings import Settings, SettingsError
from modelship_server.signature import Signature, SignatureError, TensorSpec


def test_settings_from_env_and_flags_override_env() -> None:
    env = {
        "MODELSHIP_MODEL_URI": "file:///models/m.pt", "MODELSHIP_MODEL_VERSION": "1.4.0",
        "MODELSHIP_MAX_BATCH_SIZE": "64", "MODELSHIP_MAX_DELAY_MS": "2.5", "MODELSHIP_PRECISION": "bf16",
        "MODELSHIP_PORT": "9000", "MODELSHIP_TORCH_THREADS": "", "UNRELATED": "x",
    }  # fmt: skip
    s = Settings.from_env(env)
    assert (s.model_uri, s.model_version, s.max_batch_size, s.max_delay_ms, s.precision, s.port) == (
        "file:///models/m.pt", "1.4.0", 64, 2.5, "bf16", 9000)  # fmt: skip
    assert s.torch_threads == 0 and s.threads >= 1  # empty means default
    flags = parse_args(["--max-batch-size", "8", "--port", "8081", "--model-format", "torch-export"], env)
    assert (flags.max_batch_size, flags.port, flags.model_format, flags.model_version) == (8, 8081, "torch-export", "1.4.0")
    assert Settings().port == 8080 and Settings().model_format == "auto"
    assert Settings.env_names()["max_batch_rows"] == "MODELSHIP_MAX_BATCH_ROWS"


@pytest.mark.parametrize("env", [
    {"MODELSHIP_PRECISION": "fp8"}, {"MODELSHIP_DEVICE": "tpu"}, {"MODELSHIP_MAX_BATCH_SIZE": "0"},
    {"MODELSHIP_MAX_QUEUE": "many"}, {"MODELSHIP_MODEL_FORMAT": "onnx"}, {"MODELSHIP_TIMEOUT_MS": "0"},
    {"MODELSHIP_ADMIN_PORT": "8080"}, {"MODELSHIP_ADMIN_PORT": "70000"}, {"MODELSHIP_MAX_BODY_BYTES": "-1"},
    {"MODELSHIP_MODEL_SHA256": "abc"}, {"MODELSHIP_MODEL_SHA256": "g" * 64}, {"MODELSHIP_ALLOW_INSECURE_HTTP": "maybe"},
    {"MODELSHIP_MODEL_MAX_BYTES": "-5"}, {"MODELSHIP_FETCH_DEADLINE_S": "-1"},
])  # fmt: skip
def test_invalid_settings_are_rejected(env) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_admin_port_body_limit_and_download_settings() -> None:
    s = Settings()
    assert (s.admin_port, s.max_body_bytes, s.model_sha256, s.model_max_bytes, s.fetch_deadline_s, s.allow_insecure_http) == (
        0, 0, "", 0, 3600.0, False)  # fmt: skip
    env = {"MODELSHIP_ADMIN_PORT": "9090", "MODELSHIP_MAX_BODY_BYTES": "1048576", "MODELSHIP_MODEL_SHA256": "A" * 64,
           "MODELSHIP_MODEL_MAX_BYTES": "1000", "MODELSHIP_FETCH_DEADLINE_S": "60"}  # fmt: skip
    s = Settings.from_env(env)
    assert (s.admin_port, s.max_body_bytes, s.model_max_bytes, s.fetch_deadline_s) == (9090, 1 << 20, 1000, 60.0)
    for text, value in (("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("off", False)):
        assert Settings.from_env({"MODELSHIP_ALLOW_INSECURE_HTTP": text}).allow_insecure_http is value
    assert parse_args(["--allow-insecure-http", "true", "--admin-port", "9091"], {}).admin_port == 9091


def test_invalid_flag_exits_with_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["--precision", "fp8"], {})
    assert e.value.code == 2 and "precision" in capsys.readouterr().err


def test_signature_json_round_trip_and_errors() -> None:
    obj = {"name": "m", "version": "2", "task": "classification", "labels": ["a", "b"],
           "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
           "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}  # fmt: skip
    sig = Signature.from_json(obj)
    assert sig.to_json() == obj and sig.is_classifier and sig.batchable
    assert not Signature.from_json({**obj, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}).batchable
    for bad in (
        {**obj, "inputs": []},
        {**obj, "inputs": [{"name": "x", "datatype": "STRING", "shape": [-1]}]},
        {**obj, "inputs": [{"name": "x", "datatype": "FP32", "shape": [0]}]},
        {**obj, "outputs": [{"name": "y", "shape": [-1]}]},
        {**obj, "inputs": [obj["inputs"][0], obj["inputs"][0]]},
    ):
        with pytest.raises(SignatureError):
            Signature.from_json(bad)


def test_signature_columns_name_a_2d_input() -> None:
    x = {"name": "x", "datatype": "FP32", "shape": [-1, 3], "columns": ["age", "income", "height"]}
    obj = {"name": "m", "inputs": [x], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}
    sig = Signature.from_json(obj)
    assert sig.inputs[0].columns == ("age", "income", "height") and sig.to_json() == obj
    assert Signature.from_json({**obj, "inputs": [{**x, "shape": [2, 3]}]}).inputs[0].columns  # a fixed batch too
    no_columns = {k: v for k, v in x.items() if k != "columns"}
    assert Signature.from_json({**obj, "inputs": [no_columns]}).inputs[0].columns == ()
    for bad, says in (
        ({**x, "columns": ["age", "income"]}, "2 columns for a last dimension of 3"),
        ({**x, "columns": ["age", "income", "age"]}, "duplicate column names ['age']"),
        ({**x, "columns": ["age", "", "height"]}, "non-empty strings"),
        ({**x, "columns": ["age", 7, "height"]}, "non-empty strings"),
        ({**x, "columns": "age,income,height"}, "non-empty strings"),
        ({**x, "shape": [-1, -1]}, "fixed last dimension"),
        ({**x, "shape": [-1, 3, 1]}, "2-D tensor"),
        ({**x, "shape": [3]}, "2-D tensor"),
    ):
        with pytest.raises(SignatureError, match=re.escape(says)):
            Signature.from_json({**obj, "inputs": [bad]})
    with pytest.raises(SignatureError, match="outputs \\['y'\\] have columns"):
        Signature.from_json({**obj, "outputs": [{**obj["outputs"][0], "columns": ["a", "b"]}]})


SPEC = TensorSpec("x", "FP32", (-1, 3))
INT_SPEC = TensorSpec("n", "UINT8", (-1, 2))


def test_to_array_casts_and_validates() -> None:
    arr = to_array([[1, 2.5, 3]], SPEC, "x")
    assert arr.dtype == np.float32 and arr.tolist() == [[1.0, 2.5, 3.0]]
    assert check_shape(arr, SPEC, "x") == 1
    assert to_array([[1, 255]], INT_SPEC, "n").dtype == np.uint8
    for data, spec, words in [
        ([["1", "2", "3"]], SPEC, "strings"),
        ([[True, False, True]], SPEC, "booleans"),
        ([[1.0, None, 2.0]], SPEC, "mixed or null"),
        ([[1.0, 2.0], [3.0]], SPEC, "rectangular"),
        ([[1e300, 0, 0]], SPEC, "non-finite"),
        ([[1.5, 2]], INT_SPEC, "floats"),
        ([[1, 256]], INT_SPEC, "out of range"),
        ([[-1, 2]], INT_SPEC, "out of range"),
    ]:
        with pytest.raises(BadRequest, match=words):
            to_array(data, spec, "x")
    for shape in ((3,), (1, 4), (0, 3), (1, 3, 1)):
        with pytest.raises(BadRequest):
            check_shape(np.zeros(shape, np.float32), SPEC, "x")


def test_binary_tensor_decoding() -> None:
    raw = np.arange(6, dtype="<f4").tobytes()
    assert from_bytes(raw, SPEC, "FP32", [2, 3], "x").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(BadRequest, match="bytes"):
        from_bytes(raw[:-1], SPEC, "FP32", [2, 3], "x")
    with pytest.raises(BadRequest, match="datatype"):
        from_bytes(raw, SPEC, "FP64", [2, 3], "x")
    inf = np.array([np.inf, 0, 0], "<f4").tobytes()
    with pytest.raises(BadRequest, match="non-finite"):
        from_bytes(inf, SPEC, "FP32", [1, 3], "x")


def test_response_serialisation_handles_any_numpy_output() -> None:
    from modelship_server.protocols import dumps

    strided = np.arange(12, dtype=np.float32).reshape(4, 3)[:, :2]  # not C-contiguous
    assert json_loads(dumps({"a": strided, "b": np.float16(0.5), "c": np.int64(3)})) == {
        "a": strided.tolist(), "b": 0.5, "c": 3}  # fmt: skip
    x = np.float32(0.1)  # float32 values print shortest and parse back to the same float32
    assert np.float32(json_loads(dumps([x]))[0]) == x


def json_loads(raw: bytes):
    import json

    return json.loads(raw)
