"""Loading: TorchScript and torch.export agree, signatures found or derived, URIs, devices."""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from modelship_server.model import ModelLoadError, detect_format, load_model
from modelship_server.settings import Settings
from modelship_server.signature import Signature, TensorSpec


def settings(uri: str, tmp_path: Path, **kw) -> Settings:
    return Settings(model_uri=uri, model_dir=str(tmp_path / "downloads"), torch_threads=1, **kw)


def test_torchscript_and_torch_export_load_and_agree(model_dir, heldout, reference, tmp_path) -> None:
    X, y = heldout
    ts = load_model(settings((model_dir / "model.pt").as_uri(), tmp_path))
    ep = load_model(settings(str(model_dir / "model.pt2"), tmp_path))  # a plain path works too
    assert (ts.info.format, ep.info.format) == ("torchscript", "torch-export")
    assert ts.signature == ep.signature  # both from signature.json
    out_ts = ts.predict({"input": X})["logits"]
    out_ep = ep.predict({"input": X})["logits"]
    assert out_ts.dtype == out_ep.dtype == np.float32 and out_ts.shape == (len(X), 10)
    np.testing.assert_allclose(out_ts, out_ep, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_ts, reference(X), rtol=1e-5, atol=1e-5)
    assert (out_ep.argmax(1) == y).mean() > 0.9


def test_format_detection_and_directories(model_dir, tmp_path) -> None:
    assert detect_format(model_dir / "model.pt") == "torchscript"
    assert detect_format(model_dir / "model.pt2") == "torch-export"
    assert load_model(settings(str(model_dir), tmp_path)).info.format == "torchscript"
    chosen = load_model(settings(str(model_dir), tmp_path, model_format="torch-export"))
    assert chosen.info.format == "torch-export" and chosen.info.path.endswith("model.pt2")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(settings(str(model_dir / "model.pt"), tmp_path, model_format="torch-export"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a TorchScript or torch.export archive"):
        load_model(settings(str(junk), tmp_path))


def test_export_signature_is_derived_without_json(model_dir, heldout, tmp_path) -> None:
    X, _ = heldout
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "model.pt2", bare / "model.pt2")
    shutil.copy(model_dir / "model.pt", bare / "model.pt")
    model = load_model(settings(str(bare / "model.pt2"), tmp_path))
    sig = model.signature
    assert sig.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    assert sig.outputs == (TensorSpec("output", "FP32", (-1, 10)),)
    assert sig.batchable and model.predict({"input": X[:3]})["output"].shape == (3, 10)
    with pytest.raises(ModelLoadError, match="need a signature"):
        load_model(settings(str(bare / "model.pt"), tmp_path))
    # An explicit signature file wins (and serves TorchScript without one next to it).
    explicit = load_model(settings(str(bare / "model.pt"), tmp_path, signature=str(model_dir / "signature.json")))
    assert explicit.signature == Signature.from_file(model_dir / "signature.json")


def test_http_uri_downloads_model_and_signature(model_dir, heldout, reference, tmp_path) -> None:
    X, _ = heldout
    handler = functools.partial(_QuietHandler, directory=str(model_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(ModelLoadError, match="refusing plain http://"):
            load_model(settings(base + "/model.pt", tmp_path))
        model = load_model(settings(base + "/model.pt", tmp_path, allow_insecure_http=True))
        assert (tmp_path / "downloads" / "model.pt").is_file()
        assert (tmp_path / "downloads" / "signature.json").is_file()
        assert model.signature.name == "digits"
        np.testing.assert_allclose(model.predict({"input": X[:4]})["logits"], reference(X[:4]), rtol=1e-5, atol=1e-5)
        with pytest.raises(ModelLoadError, match="HTTP 404"):
            load_model(settings(base + "/nothing.pt", tmp_path, allow_insecure_http=True))
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_s3_without_boto3_is_a_clear_error(tmp_path) -> None:
    pytest.importorskip("torch")
    try:
        import boto3  # noqa: F401

        pytest.skip("boto3 is installed")
    except ImportError:
        pass
    with pytest.raises(ModelLoadError, match=r"modelship\[s3\]"):
        load_model(settings("s3://bucket/models/model.pt", tmp_path))


def test_unsupported_scheme_and_missing_file(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="unsupported model URI scheme"):
        load_model(settings("ftp://host/model.pt", tmp_path))
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(settings((tmp_path / "nope.pt").as_uri(), tmp_path))


def test_half_precision_falls_back_to_fp32_on_cpu(model_dir, heldout, reference, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 runs for real there")
    X, _ = heldout
    model = load_model(settings(str(model_dir / "model.pt"), tmp_path, precision="fp16"))
    assert (model.info.device, model.info.precision) == ("cpu", "fp32")
    np.testing.assert_allclose(model.predict({"input": X[:2]})["logits"], reference(X[:2]), rtol=1e-5, atol=1e-5)
    assert model.memory_stats() is None
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        load_model(settings(str(model_dir / "model.pt"), tmp_path, device="cuda"))


def test_a_model_that_does_not_match_its_signature_fails_warm_up(model_dir, tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(model_dir / "model.pt", bad / "model.pt")
    (bad / "signature.json").write_text(
        '{"name": "x", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}],'
        ' "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]}'
    )
    with pytest.raises(ModelLoadError, match="warm-up failed"):
        load_model(settings(str(bad / "model.pt"), tmp_path))


def test_reduced_precision_path_runs_on_cpu(model_dir, heldout, reference, tmp_path) -> None:
    """The fp16/bf16 code path (cast weights and inputs, outputs back to FP32), with bf16 on CPU."""
    import torch

    from modelship_server.model import LoadedModel, ModelInfo, to_precision

    X, _ = heldout
    fp32 = load_model(settings(str(model_dir / "model.pt"), tmp_path))
    module = to_precision(fp32._module, torch.bfloat16)
    half = LoadedModel(module, fp32.signature, ModelInfo("torchscript", "cpu", "bf16", ""), torch.device("cpu"), torch.bfloat16)
    half.warmup(8)
    out = half.predict({"input": X[:50]})["logits"]
    assert out.dtype == np.float32  # the signature's datatype, whatever the compute precision
    ref = reference(X[:50])
    assert not np.array_equal(out, ref)  # really computed in bf16
    np.testing.assert_allclose(out, ref, atol=0.25 * np.abs(ref).max())
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.9
