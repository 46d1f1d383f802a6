"""Any signature, not only the example's: two inputs (FP32, INT64), two outputs, over HTTP."""
from __future__ import annotations

import asyncio
import json
import warnings
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from modelship_server.app import create_app
from server_harness import ServerThread, settings_for

SIGNATURE = {
    "name": "mixer",
    "task": "regression",
    "inputs": [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "INT64", "shape": [-1, 2]},
    ],
    "outputs": [
        {"name": "total", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "positives", "datatype": "INT64", "shape": [-1]},
    ],
}


def expected(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = (a * 2).sum(axis=1, keepdims=True) + b.sum(axis=1, keepdims=True).astype(np.float32)
    return total.astype(np.float32), (b > 0).sum(axis=1)


@pytest.fixture(scope="module")
def mixer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    import torch

    class Mixer(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            total = (a * 2).sum(dim=1, keepdim=True) + b.sum(dim=1, keepdim=True).to(a.dtype)
            return total, (b > 0).sum(dim=1)

    out: Path = tmp_path_factory.mktemp("mixer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Mixer()), str(out / "model.pt"))
    (out / "signature.json").write_text(json.dumps(SIGNATURE))
    app = create_app(settings_for(out, max_batch_size=16, max_delay_ms=5))
    with ServerThread(app) as srv:
        srv.wait_ready()
        yield srv


def test_concurrent_v2_requests_with_two_inputs_and_outputs(mixer: ServerThread) -> None:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(40):
        rows = 1 + i % 4
        cases.append((rng.integers(-8, 8, (rows, 3)).astype(np.float32) / 4, rng.integers(-5, 5, (rows, 2))))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=mixer.url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/mixer/infer", json={"inputs": [
                    {"name": "b", "datatype": "INT64", "shape": list(b.shape), "data": b.ravel().tolist()},
                    {"name": "a", "datatype": "FP32", "shape": list(a.shape), "data": a.tolist()},
                ]})
                for a, b in cases
            ))  # fmt: skip

    for (a, b), resp in zip(cases, asyncio.run(run())):
        assert resp.status_code == 200, resp.text
        outs = {o["name"]: o for o in resp.json()["outputs"]}
        total, positives = expected(a, b)
        assert outs["total"]["datatype"] == "FP32" and outs["total"]["shape"] == [len(a), 1]
        assert outs["positives"]["datatype"] == "INT64" and outs["positives"]["shape"] == [len(a)]
        np.testing.assert_array_equal(np.asarray(outs["total"]["data"], np.float32).reshape(-1, 1), total)
        assert outs["positives"]["data"] == positives.tolist()


def test_v1_plain_and_metadata_with_named_inputs(mixer: ServerThread) -> None:
    a = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]], np.float32)
    b = np.array([[1, -2], [3, 4]])
    total, positives = expected(a, b)
    url = mixer.url
    v1 = httpx.post(url + "/v1/models/mixer:predict", json={"instances": [
        {"a": a[i].tolist(), "b": b[i].tolist()} for i in range(2)]}).json()  # fmt: skip
    assert v1["predictions"] == [{"total": total[i].tolist(), "positives": int(positives[i])} for i in range(2)]
    one = httpx.post(url + "/predict", json={"features": {"a": a[0].tolist(), "b": b[0].tolist()}}).json()
    assert one["prediction"] == total[0].tolist() and one["outputs"]["positives"] == int(positives[0])
    batch = httpx.post(url + "/predict/batch", json={"batch_features": {"a": a.tolist(), "b": b.tolist()}}).json()
    assert batch["outputs"] == {"total": total.tolist(), "positives": positives.tolist()}
    meta = httpx.get(url + "/v2/models/mixer").json()
    assert meta["inputs"] == SIGNATURE["inputs"] and meta["outputs"] == SIGNATURE["outputs"]


@pytest.mark.parametrize(
    "body,words",
    [
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}, "missing inputs"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                     {"name": "b", "datatype": "INT64", "shape": [1, 2], "data": [1.5, 2]}]}, "INT64"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                     {"name": "b", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, "datatype"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
                     {"name": "b", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]}, "batch sizes"),
    ],  # fmt: skip
)
def test_multi_input_validation(mixer: ServerThread, body, words) -> None:
    resp = httpx.post(mixer.url + "/v2/models/mixer/infer", json=body)
    assert resp.status_code == 400 and words in resp.json()["error"], resp.text


def test_requests_with_different_sequence_lengths_batch_by_shape(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A dynamic non-batch dimension: requests of different lengths still share the queue."""
    import torch

    class MeanPool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=1)

    out: Path = tmp_path_factory.mktemp("pool")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(MeanPool()), str(out / "model.pt"))
    (out / "signature.json").write_text(json.dumps({
        "name": "pool", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1, 2]}],
        "outputs": [{"name": "mean", "datatype": "FP32", "shape": [-1, 2]}]}))  # fmt: skip
    rng = np.random.default_rng(1)
    cases = [rng.normal(size=(1 + i % 2, 1 + i % 3, 2)).astype(np.float32) for i in range(24)]
    with ServerThread(create_app(settings_for(out, max_batch_size=32, max_delay_ms=20))) as srv:
        srv.wait_ready()

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                return await asyncio.gather(*(
                    client.post("/v2/models/pool/infer", json={"inputs": [
                        {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
                    for x in cases))  # fmt: skip

        for x, resp in zip(cases, asyncio.run(run())):
            assert resp.status_code == 200, resp.text
            got = np.asarray(resp.json()["outputs"][0]["data"], np.float32).reshape(len(x), 2)
            np.testing.assert_allclose(got, x.mean(axis=1), rtol=1e-6, atol=1e-6)
        from metrics_text import parse, value

        samples = parse(httpx.get(srv.url + "/metrics").text)
        assert value(samples, "modelship_batch_size_rows_sum") == sum(len(x) for x in cases)
        assert value(samples, "modelship_batch_size_rows_count") < len(cases)  # requests shared batches
        # Mixed lengths were grouped, not failed as one batch and re-run request by request.
        assert value(samples, "modelship_batch_splits_total") == 0


def test_regression_feedback_gives_the_online_mae_and_drift_watches_the_named_input(mixer: ServerThread) -> None:
    """A non-classifier: feedback joins the first output (MAE); the profile names input "a"."""
    from metrics_text import parse, value
    from modelship_server.drift import build_reference_profile, save_profile

    rng = np.random.default_rng(1)
    ids, truths, errors = [], [], []
    for i in range(12):
        rows = 1 + i % 3
        a = rng.integers(-8, 8, (rows, 3)).astype(np.float32) / 4
        b = rng.integers(-5, 5, (rows, 2))
        r = httpx.post(mixer.url + "/v2/models/mixer/infer", json={"inputs": [
            {"name": "a", "datatype": "FP32", "shape": list(a.shape), "data": a.ravel().tolist()},
            {"name": "b", "datatype": "INT64", "shape": list(b.shape), "data": b.ravel().tolist()},
        ]})  # fmt: skip
        assert r.status_code == 200
        off = np.full((rows, 1), 0.25 * (i % 4), np.float32)  # the truth differs by a known amount
        ids.append(r.headers["x-request-id"])
        truths.append((expected(a, b)[0] + off).tolist())
        errors.extend(off.ravel().tolist())
    r = httpx.post(mixer.url + "/v2/models/mixer/feedback",
                   json={"feedback": [{"request_id": i, "truth": t} for i, t in zip(ids, truths)]})  # fmt: skip
    assert r.status_code == 200 and r.json()["matched"] == len(ids), r.text
    m = parse(httpx.get(mixer.url + "/metrics").text)
    assert value(m, "modelship_online_mae") == pytest.approx(float(np.mean(errors)), abs=1e-6)
    assert ("modelship_online_accuracy", frozenset({("model", "mixer"), ("version", "1")})) not in m

    # A profile of input "a" (not the first input) next to a copy of the model: drift watches "a".
    model_dir = Path(mixer.service.model.info.path).parent
    a_train = rng.normal(0.0, 1.0, (2000, 3)).astype(np.float32)
    save_profile(build_reference_profile(a_train, input_name="a"), model_dir)
    try:
        app = create_app(settings_for(model_dir, max_batch_size=16, max_delay_ms=1, drift_min_rows=100))
        with ServerThread(app) as srv:
            srv.wait_ready()
            mon = srv.service.monitoring
            assert mon.drift_state == "on" and mon.drift_input == "a"
            for shift in (0.0, 3.0):
                a = rng.normal(shift, 1.0, (300, 3)).astype(np.float32)
                b = rng.integers(-5, 5, (300, 2))
                r = httpx.post(srv.url + "/v2/models/mixer/infer", json={"inputs": [
                    {"name": "a", "datatype": "FP32", "shape": [300, 3], "data": a.ravel().tolist()},
                    {"name": "b", "datatype": "INT64", "shape": [300, 2], "data": b.ravel().tolist()},
                ]})  # fmt: skip
                assert r.status_code == 200
                report = httpx.get(srv.url + "/v2/models/mixer/drift").json()
                assert report["rows"] == 300 * (1 + int(shift > 0)) and report["input"] == "a"
                if shift == 0.0:
                    assert report["drift"] is False, report
            assert report["drift"] is True and report["drifted"] == ["f0", "f1", "f2"]
    finally:
        (model_dir / "reference_profile.json").unlink()


def test_predict_batch_row_limit_holds_for_named_inputs(mixer: ServerThread) -> None:
    """{input: rows} bodies count their rows like a list of rows does, and are refused past the limit."""
    limit = settings_for(Path("/unused")).max_batch_rows  # the fixture keeps the default
    rows = limit + 1
    body = {"batch_features": {"a": [[0.5, 0.0, 1.0]] * rows, "b": [[1, 2]] * rows}}
    resp = httpx.post(mixer.url + "/predict/batch", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    assert f"{rows} rows exceed the limit of {limit}" in resp.json()["error"]
    ok = httpx.post(mixer.url + "/predict/batch", json={"batch_features": {"a": [[0.5, 0.0, 1.0]], "b": [[1, 2]]}})
    assert ok.status_code == 200 and ok.json()["outputs"]["positives"] == [2]
