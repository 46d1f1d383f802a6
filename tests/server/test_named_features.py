"""Named features over real HTTP on loopback: {"features": {column: value}} against real torch
models whose signatures name their input columns (issue 13 item 4)."""
from __future__ import annotations

import importlib.util
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from modelship_server.app import create_app
from server_harness import ROOT, ServerThread, settings_for

COLUMNS = ["age", "income", "height", "score"]
# Each column weighs differently on each class: any reordering changes the logits.
WEIGHTS = np.array([[1.0, -2.0, 0.5], [0.01, 0.02, -0.03], [-1.0, 0.3, 2.0], [4.0, -4.0, 0.0]], dtype=np.float32)
TABULAR = {
    "name": "tabular", "task": "classification", "labels": ["low", "mid", "high"],
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4], "columns": COLUMNS}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
}  # fmt: skip
MIXED = {
    "name": "mixed", "task": "regression",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3], "columns": ["p", "q", "r"]},
               {"name": "n", "datatype": "INT64", "shape": [-1, 2]}],
    "outputs": [{"name": "total", "datatype": "FP32", "shape": [-1, 1]}],
}  # fmt: skip


def _serve(tmp: Path, module: Any, signature: dict, **overrides: Any) -> ServerThread:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(tmp / "model.pt"))
    (tmp / "signature.json").write_text(json.dumps(signature))
    return ServerThread(create_app(settings_for(tmp, max_batch_size=16, max_delay_ms=2, max_batch_rows=32, **overrides)))


def _linear() -> Any:
    import torch

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", torch.from_numpy(WEIGHTS))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    return Linear()


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with _serve(tmp_path_factory.mktemp("tabular"), _linear(), TABULAR) as srv:
        srv.wait_ready()
        yield srv


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The same model, its signature without column names."""
    sig = {**TABULAR, "inputs": [{k: v for k, v in TABULAR["inputs"][0].items() if k != "columns"}]}
    with _serve(tmp_path_factory.mktemp("unnamed"), _linear(), sig) as srv:
        srv.wait_ready()
        yield srv


def post(srv: ServerThread, path: str, body: Any) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=30)


def named(row: list[float], columns: list[str], shuffle: int | None = None) -> dict[str, float]:
    pairs = list(zip(columns, row))
    if shuffle is not None:
        random.Random(shuffle).shuffle(pairs)
    return dict(pairs)


ROWS = [[35.0, 52000.0, 1.8, 0.2], [70.0, 10.0, 1.6, 0.9], [18.0, 3000.0, 2.0, -0.5], [0.0, 0.0, 0.0, 0.0]]


def test_a_named_row_in_any_order_is_the_positional_row(tabular: ServerThread) -> None:
    for i, row in enumerate(ROWS):
        positional = post(tabular, "/predict", {"features": row})
        assert positional.status_code == 200, positional.text
        expected = (np.asarray([row], dtype=np.float32) @ WEIGHTS)[0]
        np.testing.assert_allclose(positional.json()["outputs"]["logits"], expected, rtol=1e-6)
        orders = [named(row, COLUMNS, shuffle) for shuffle in (None, i, i + 100)]
        assert any(list(o) != COLUMNS for o in orders)  # really sent in another order
        for features in orders:
            answer = post(tabular, "/predict", {"features": features})
            assert answer.status_code == 200, answer.text
            assert answer.json() == positional.json()


def test_the_reversed_order_would_have_given_another_answer(tabular: ServerThread) -> None:
    """Guards the test above: sent positionally in the wrong order, the answer differs."""
    row = ROWS[0]
    right = post(tabular, "/predict", {"features": named(row, COLUMNS, shuffle=7)}).json()
    wrong = post(tabular, "/predict", {"features": row[::-1]}).json()
    assert right["outputs"]["logits"] != wrong["outputs"]["logits"]


def test_lists_of_named_rows_are_batches(tabular: ServerThread) -> None:
    rows = [named(r, COLUMNS, shuffle=i) for i, r in enumerate(ROWS)]
    batch = post(tabular, "/predict/batch", {"batch_features": ROWS})
    assert batch.status_code == 200, batch.text
    as_list = post(tabular, "/predict", {"features": rows})  # /predict with rows answers as /predict/batch
    named_batch = post(tabular, "/predict/batch", {"batch_features": rows})
    assert as_list.status_code == named_batch.status_code == 200, (as_list.text, named_batch.text)
    assert as_list.json() == named_batch.json() == batch.json()
    assert len(batch.json()["predictions"]) == len(ROWS)
    too_many = post(tabular, "/predict", {"features": rows * 9})  # 36 rows, limit 32
    assert too_many.status_code == 400 and "36 rows exceed the limit of 32" in too_many.json()["error"]


def test_missing_and_unknown_fields_are_named_in_the_400(tabular: ServerThread) -> None:
    row = named(ROWS[0], COLUMNS)
    del row["income"]
    r = post(tabular, "/predict", {"features": row})
    assert r.status_code == 400 and "missing 1 field: 'income'" in r.json()["error"], r.text
    r = post(tabular, "/predict", {"features": {**named(ROWS[0], COLUMNS), "weight": 3, "colour": 1}})
    assert r.status_code == 400 and "unknown 2 fields: 'weight', 'colour'" in r.json()["error"], r.text
    assert "missing" not in r.json()["error"]
    row = {"age": 1, "height": 2, "hieght": 3}
    msg = post(tabular, "/predict", {"features": row}).json()["error"]
    assert "missing 2 fields: 'income', 'score'" in msg and "unknown 1 field: 'hieght'" in msg, msg
    # In a list of rows, the row is pointed at.
    rows = [named(ROWS[0], COLUMNS), {"age": 1}]
    msg = post(tabular, "/predict/batch", {"batch_features": rows}).json()["error"]
    assert msg.startswith("batch_features[1]: missing 3 fields"), msg


def test_the_names_in_the_message_are_capped(tabular: ServerThread) -> None:
    row = {**named(ROWS[0], COLUMNS), **{f"extra_{i}": i for i in range(500)}, "x" * 5000: 1}
    r = post(tabular, "/predict", {"features": row})
    msg = r.json()["error"]
    assert r.status_code == 400 and "unknown 501 fields: 'extra_0', 'extra_1'" in msg and "and 491 more" in msg, msg
    assert len(msg) < 600, len(msg)


def test_values_of_the_wrong_type_are_400_naming_the_field(tabular: ServerThread) -> None:
    good = named(ROWS[0], COLUMNS)
    cases = {
        "a string": {**good, "income": "52000"},
        "null": {**good, "age": None},
        "a boolean": {**good, "score": True},
        "a list": {**good, "height": [1.8]},
        "an object": {**good, "height": {"m": 1.8}},
    }
    for got, row in cases.items():
        r = post(tabular, "/predict", {"features": row})
        assert r.status_code == 400, (got, r.text)
        msg = r.json()["error"]
        bad = next(k for k in COLUMNS if row[k] != good[k])
        assert f"'{bad}' must be numbers (FP32), got {got}" in msg, msg
    every_list = {k: [v] for k, v in good.items()}  # rectangular, so numpy would take it: still refused
    r = post(tabular, "/predict", {"features": every_list})
    assert r.status_code == 400 and "'age', 'income', 'height', 'score' must be numbers" in r.json()["error"], r.text
    r = post(tabular, "/predict", {"features": {**good, "income": 1e300}})  # past FP32: not finite
    assert r.status_code == 400 and "non-finite" in r.json()["error"], r.text
    for body in ({"features": [good, [1, 2, 3, 4]]}, {"batch_features": [good, 5]}, {"batch_features": good}):
        path = "/predict" if "features" in body else "/predict/batch"
        r = post(tabular, path, body)
        assert r.status_code == 400 and ("expected an object" in r.json()["error"] or "expected a list" in r.json()["error"]), r.text


def test_without_column_names_named_features_are_400(unnamed: ServerThread) -> None:
    for path, body in (("/predict", {"features": named(ROWS[0], COLUMNS)}),
                       ("/predict", {"features": [named(ROWS[0], COLUMNS)]}),
                       ("/predict/batch", {"batch_features": [named(ROWS[0], COLUMNS)]})):  # fmt: skip
        r = post(unnamed, path, body)
        assert r.status_code == 400, r.text
        assert "signature names no columns for input 'x'" in r.json()["error"], r.text
    assert post(unnamed, "/predict", {"features": ROWS[0]}).status_code == 200


def test_the_metadata_and_openapi_name_the_columns(tabular: ServerThread) -> None:
    meta = httpx.get(tabular.url + "/v2/models/tabular").json()
    assert meta["inputs"] == TABULAR["inputs"]
    schema = httpx.get(tabular.url + "/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    forms = body["properties"]["features"]["oneOf"]
    obj = next(f for f in forms if f.get("type") == "object")
    assert obj["required"] == COLUMNS and obj["additionalProperties"] is False
    assert {"type": "array", "items": obj, "minItems": 1, "maxItems": 32} in forms


def test_two_inputs_one_with_named_columns(tmp_path: Path) -> None:
    import torch

    class Mixed(torch.nn.Module):
        def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            w = torch.tensor([1.0, 10.0, 100.0])
            return (x @ w).unsqueeze(1) + n.sum(dim=1, keepdim=True).to(x.dtype)

    with _serve(tmp_path, Mixed(), MIXED) as srv:
        srv.wait_ready()
        r = post(srv, "/predict", {"features": {"x": {"r": 3, "p": 1, "q": 2}, "n": [5, 6]}})
        assert r.status_code == 200, r.text
        assert r.json()["prediction"] == [321.0 + 11.0]
        r = post(srv, "/predict/batch", {"batch_features": {"x": [{"q": 1, "p": 0, "r": 0}, {"r": 1, "q": 0, "p": 0}],
                                                            "n": [[0, 0], [1, 1]]}})  # fmt: skip
        assert r.status_code == 200 and r.json()["predictions"] == [[10.0], [102.0]], r.text
        r = post(srv, "/predict", {"features": {"x": {"p": 1, "q": 2, "r": 3}, "n": {"a": 1, "b": 2}}})
        assert r.status_code == 400 and "features['n']: the model's signature names no columns" in r.json()["error"], r.text


# ---------------------------------------------------------------- the example model


def _build_model_module() -> Any:
    spec = importlib.util.spec_from_file_location("build_model", ROOT / "examples" / "build_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_example_model_scales_inside_as_the_old_scale_then_predict_path(served: ServerThread, model_dir: Path, heldout) -> None:
    """Raw named pixels to the server give the predictions that scaling on the client (training
    mean and std, as build_model computes them) and then running the MLP alone give."""
    import torch

    build_model = _build_model_module()
    split = build_model.load_split()
    mean, std = build_model.scaling(split.x_train)
    x, y = heldout
    assert np.array_equal(x, split.x_heldout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.jit.load(str(model_dir / "model.pt")).eval()
    with torch.inference_mode():
        old = program.net(torch.from_numpy((x - mean) / std)).argmax(dim=1).numpy()  # scale, then predict
    sig = json.loads((model_dir / "signature.json").read_text())
    columns = sig["inputs"][0]["columns"]
    assert columns == list(split.columns)
    labels = sig["labels"]
    n = 96
    rows = [named(x[i].tolist(), columns, shuffle=i) for i in range(n)]
    served_preds: list[str] = []
    for start in range(0, n, 32):
        r = post(served, "/predict/batch", {"batch_features": rows[start : start + 32]})
        assert r.status_code == 200, r.text
        served_preds += r.json()["predictions"]
    assert served_preds == [labels[c] for c in old[:n]]
    one = post(served, "/predict", {"features": rows[0]}).json()
    assert one["prediction"] == labels[old[0]]
    assert float(np.mean(old == y)) > 0.9
