"""The example model's contract (examples/build_model.py) and the quick start end to end."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_SIGNATURE = {
    "name": "digits",
    "version": "1.0.0",
    "task": "classification",
    "labels": [str(i) for i in range(10)],
    # The columns are scikit-learn's feature names of the digits, in the order the model takes them.
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64],
                "columns": [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]}],  # fmt: skip
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
}


@pytest.fixture(scope="module")
def heldout(example_model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(example_model_dir / "heldout.npz")
    return data["X"], data["y"]


@pytest.fixture(scope="module")
def scripted(example_model_dir: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(example_model_dir / "model.pt")).eval()


@pytest.fixture(scope="module")
def exported(example_model_dir: Path) -> torch.nn.Module:
    return torch.export.load(str(example_model_dir / "model.pt2")).module()


def test_build_writes_every_file_of_the_contract(example_model_dir: Path) -> None:
    for name in ("model.pt", "model.pt2", "signature.json", "heldout.npz"):
        assert (example_model_dir / name).is_file(), name
        assert (example_model_dir / name).stat().st_size > 0, name


def test_signature_is_the_contract(example_model_dir: Path) -> None:
    assert json.loads((example_model_dir / "signature.json").read_text()) == EXPECTED_SIGNATURE


def test_heldout_split_is_raw_pixels_with_every_class(heldout: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = heldout
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 64
    assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    # Raw pixel intensities: the scaling lives inside the model, not in the data.
    assert x.min() == 0.0 and x.max() == 16.0
    assert np.array_equal(x, np.round(x))
    # Stratified: every digit present in roughly its share.
    counts = np.bincount(y, minlength=10)
    assert counts.min() >= 0.8 * len(y) / 10


def test_torchscript_model_is_accurate_on_heldout(scripted, heldout) -> None:
    x, y = heldout
    with torch.inference_mode():
        logits = scripted(torch.from_numpy(x))
    assert logits.dtype == torch.float32 and logits.shape == (len(x), 10)
    accuracy = float((logits.argmax(dim=1).numpy() == y).mean())
    assert accuracy > 0.9


@pytest.mark.parametrize("batch", [1, 2, 7, 64, 450])
def test_both_formats_give_identical_logits(scripted, exported, heldout, batch: int) -> None:
    x, _ = heldout
    xb = torch.from_numpy(x[:batch].copy())
    with torch.inference_mode():
        a = scripted(xb)
        b = exported(xb)
    assert a.shape == b.shape == (batch, 10)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_exported_program_has_a_dynamic_batch_dimension(example_model_dir: Path) -> None:
    program = torch.export.load(str(example_model_dir / "model.pt2"))
    (placeholder,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name not in
                      program.graph_signature.inputs_to_buffers and n.name not in
                      program.graph_signature.inputs_to_parameters]  # fmt: skip
    batch_dim, feature_dim = placeholder.meta["val"].shape
    assert isinstance(batch_dim, torch.SymInt)  # symbolic, not specialised to the example
    assert feature_dim == 64
    with torch.inference_mode():
        out = program.module()(torch.full((4096, 64), 8.0))
    assert out.shape == (4096, 10)


def test_the_exported_program_scales_first(example_model_dir: Path, heldout) -> None:
    """The preprocessing is part of the exported program: its first operations subtract the
    preprocess module's mean from the raw input and divide by its std."""
    x, _ = heldout
    program = torch.export.load(str(example_model_dir / "model.pt2"))
    buffers = program.graph_signature.inputs_to_buffers
    assert sorted(buffers.values()) == ["preprocess.mean", "preprocess.std"]
    ops = [n for n in program.graph.nodes if n.op == "call_function"]
    sub, div = ops[0], ops[1]
    assert "sub" in str(sub.target) and buffers.get(sub.args[1].name) == "preprocess.mean"
    assert "div" in str(div.target) and div.args[0] is sub and buffers.get(div.args[1].name) == "preprocess.std"
    state = program.state_dict
    scaled = (torch.from_numpy(x) - state["preprocess.mean"]) / state["preprocess.std"]
    assert abs(float(scaled.mean())) < 0.1  # the held-out pixels come out standardised


def test_the_model_standardises_inside(scripted, heldout) -> None:
    """Raw pixels in; a constant image of the training mean gives the same logits as the
    first layer's bias path, i.e. the scaling statistics are folded into the model."""
    x, _ = heldout
    state = scripted.state_dict()
    mean = next(v for k, v in state.items() if k.endswith("mean"))
    assert mean.shape == (64,) and 0.0 <= float(mean.min()) and float(mean.max()) <= 16.0
    with torch.inference_mode():
        at_mean = scripted(mean.unsqueeze(0))
        raw = scripted(torch.from_numpy(x[:1]))
    # Standardised input of exactly zero: the logits are what the biases alone produce
    # (any number of hidden layers: Linear, ReLU, ..., Linear).
    params = [v for k, v in state.items() if not k.endswith(("mean", "std"))]
    layers = list(zip(params[0::2], params[1::2]))  # (weight, bias) per Linear
    h = torch.zeros(64)
    for i, (w, b) in enumerate(layers):
        h = w @ h + b
        if i < len(layers) - 1:
            h = torch.relu(h)
    torch.testing.assert_close(at_mean[0], h)
    assert not torch.allclose(raw, at_mean)


def test_same_seed_builds_the_same_model(example_model_dir: Path, tmp_path: Path, scripted) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "build_model.py"), "--out", str(tmp_path)],
        check=True,
        timeout=180,
        capture_output=True,
    )
    again = np.load(tmp_path / "heldout.npz")
    first = np.load(example_model_dir / "heldout.npz")
    assert np.array_equal(again["X"], first["X"]) and np.array_equal(again["y"], first["y"])
    rebuilt = torch.jit.load(str(tmp_path / "model.pt"))
    for (k1, v1), (k2, v2) in zip(scripted.state_dict().items(), rebuilt.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1


def build(out: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "build_model.py"), "--out", str(out), *args],
                          check=True, timeout=300, capture_output=True, text=True)  # fmt: skip
    return proc.stdout


def test_variants_agree_with_v1_as_printed(example_model_dir: Path, scripted, heldout, tmp_path: Path) -> None:
    """v2 (another seed, more epochs) agrees with v1 on most inputs, bad on none; each has its
    own version, and the agreement the build prints is the one measured here on the held-out set."""
    x, y = heldout
    with torch.inference_mode():
        v1 = scripted(torch.from_numpy(x)).argmax(dim=1).numpy()
    measured = {}
    for variant, version in (("v2", "2.0.0"), ("bad", "2.0.0-bad")):
        out = tmp_path / variant
        printed = build(out, "--variant", variant)
        sig = json.loads((out / "signature.json").read_text())
        assert sig == {**EXPECTED_SIGNATURE, "version": version}
        model = torch.jit.load(str(out / "model.pt")).eval()
        with torch.inference_mode():
            pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
        measured[variant] = float((pred == v1).mean())
        shown = float(re.search(r"agreement with v1 .*held-out (\d+\.\d+)%", printed).group(1)) / 100
        assert abs(shown - measured[variant]) < 1e-4, printed
        if variant == "v2":
            assert float((pred == y).mean()) > 0.9  # a good model, trained differently
    assert 0.95 <= measured["v2"] < 1.0, measured  # agrees on most inputs, not all: really another model
    assert measured["bad"] <= 0.05, measured


def test_quickstart_runs_end_to_end(example_model_dir: Path) -> None:
    if importlib.util.find_spec("modelship_server.__main__") is None:
        pytest.skip("modelship_server has no __main__ yet: the quick start needs `python -m modelship_server`")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--model-dir", str(example_model_dir)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr}"
    assert "quickstart OK" in out
    # It really served predictions: the accuracy it measured over HTTP is the model's.
    accuracies = [float(v) for v in re.findall(r"accuracy (\d\.\d+)", out)]
    assert len(accuracies) == 2 and min(accuracies) > 0.9, out
    assert "cleanly" in out, out
    assert "modelship_" in out, out  # it printed metrics
    # a row by column name (shuffled) answers as by position; a missing and an unknown name are named
    assert "(64 names, shuffled)" in out and "as by position" in out, out
    assert "-> 400: features: missing 1 field: 'pixel_0_5'; unknown 1 field: 'pixel_8_8'" in out, out
    # monitoring: feedback joined every request, drift found the one pixel it shifted
    assert re.search(r"feedback: .* (\d+) earlier requests .*: \1 matched", out), out
    assert "drift False" in out and "drifted features ['f36']" in out, out


@pytest.mark.slow
def test_benchmark_script_measures_both_servers(example_model_dir: Path, tmp_path: Path) -> None:
    """A one-second smoke run of benchmarks/bench_server.py: real wrk load on both servers."""
    import shutil

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    if importlib.util.find_spec("modelship_server.__main__") is None:
        pytest.skip("modelship_server has no __main__ yet")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_server.py"), "--model-dir", str(example_model_dir),
         "--duration", "1", "--warmup", "0", "--connections", "16", "--bare-seconds", "0.2",
         "--bare-batches", "1,32", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {(r["system"], r["load"]): r for r in json.loads(out.read_text())["rows"]}
    loads = ("1-row", "32-row", "32-row v2 binary")
    assert set(rows) == {("bare", "batch 1"), ("bare", "batch 32"), ("naive", "1-row"), ("naive", "32-row"),
                         *(("modelship", load) for load in loads), *(("ms-nomon", load) for load in loads)}  # fmt: skip
    # modelship ran with its monitoring on and off (--monitoring both, the default): both compared
    compared = json.loads(out.read_text())["monitoring"]
    assert [m["load"] for m in compared] == list(loads) and all(m["ratio"] > 0 for m in compared)
    assert "monitoring on (modelship) vs off (ms-nomon)" in proc.stdout
    for r in rows.values():
        assert r["rows_per_s"] > 0 and r["failed"] == 0, r
    assert rows[("bare", "batch 32")]["vs_bare32"] == 1.0
    # 16 connections of one-row requests: modelship really batched them (from its /metrics).
    assert rows[("modelship", "1-row")]["mean_batch"] > 1.5
    assert rows[("modelship", "32-row")]["mean_batch"] >= 32
    assert rows[("modelship", "32-row v2 binary")]["mean_batch"] >= 32
    # the seven target checks are printed, each with its verdict: four on speed, then monitoring
    # on vs off (one-row and 32-row rows/s, RSS after the 32-row run)
    checks = [line for line in proc.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert len(checks) == 7, proc.stdout
    assert "with monitoring on <= 1.2x off" in checks[-1]
    # every server's memory is measured and printed
    for r in rows.values():
        assert r["system"] == "bare" or 50 < r["rss_mb"] <= r["peak_rss_mb"] < 4000, r
    assert proc.stdout.count("ready: RSS") == 3
