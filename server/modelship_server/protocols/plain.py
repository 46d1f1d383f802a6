"""Tutorial-style endpoints: POST /predict {"features": [...]} and /predict/batch.

When the signature names an input's columns, a row may also be an object {column: value}
(named_features.py): /predict takes one ({"features": {...}}) or a list of them (answered as
/predict/batch answers), /predict/batch a list of them."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..codec import check_shape, to_array
from ..errors import BadRequest
from ..named_features import is_named, named_rows
from ..service import Call, Result, Service
from . import Reply, field, loads, ok

PROTOCOL = "predict"


def _feed(service: Service, features: Any, key: str, one_row: bool) -> tuple[dict[str, np.ndarray], int]:
    """`features` is a row (one input) or {input name: row}; batches stack rows."""
    sig = service.signature
    assert sig is not None
    if len(sig.inputs) == 1:
        per_input = {sig.inputs[0].name: features}
    elif isinstance(features, dict):
        per_input = features
        unknown = set(per_input) - {s.name for s in sig.inputs}
        if unknown:
            raise BadRequest(f"{key}: unknown inputs {sorted(unknown)}")
    else:
        raise BadRequest(f"{key} must map each input name ({', '.join(s.name for s in sig.inputs)}) to its values")
    feed: dict[str, np.ndarray] = {}
    rows = -1
    for spec in sig.inputs:
        if spec.name not in per_input:
            raise BadRequest(f"{key} lacks input {spec.name!r}")
        what = f"{key}" if len(sig.inputs) == 1 else f"{key}[{spec.name!r}]"
        values = per_input[spec.name]
        if is_named(values):
            arr = named_rows(values, spec, what, one_row)
        else:
            arr = to_array(values, spec, what)
            if one_row:
                if arr.ndim != len(spec.row_shape):  # before reshape: numpy caps dimensions at 64
                    raise BadRequest(f"{what}: shape {list(arr.shape)} is not one row of {list(spec.shape)} (-1 = any)")
                arr = arr.reshape((1, *arr.shape))
        n = check_shape(arr, spec, what)
        if rows not in (-1, n):
            raise BadRequest(f"{key}: inputs have different row counts")
        rows = n
        feed[spec.name] = arr
    return feed, rows


def _body(service: Service, result: Result, single: bool) -> dict[str, Any]:
    sig = service.signature
    assert sig is not None
    pick = (lambda a: a[0]) if single else (lambda a: a)
    out: dict[str, Any] = {}
    if result.classes is not None and result.probabilities is not None:
        labels = sig.labels
        idx = result.classes.tolist()
        if single:
            out["prediction"] = labels[idx[0]] if idx[0] < len(labels) else str(idx[0])
        else:
            out["predictions"] = [labels[i] if i < len(labels) else str(i) for i in idx]
        out["probabilities"] = pick(result.probabilities)
    else:
        first = result.outputs[sig.outputs[0].name]
        out["prediction" if single else "predictions"] = pick(first)
    out["outputs"] = {name: pick(arr) for name, arr in result.outputs.items()}
    return out


async def predict(service: Service, body: bytes, call: Call | None = None) -> Reply:
    service.check_ready()
    req = loads(body)
    features = field(req, "features")
    # A list of named rows (one-input models): several rows, answered as /predict/batch answers.
    rows_form = isinstance(features, list) and bool(features) and isinstance(features[0], dict) and _one_input(service)
    if rows_form and len(features) > service.settings.max_batch_rows:
        raise BadRequest(f"features: {len(features)} rows exceed the limit of {service.settings.max_batch_rows}")
    feed, rows = _feed(service, features, "features", one_row=not rows_form)
    result = await service.infer(feed, rows, call)
    return ok(_body(service, result, single=not rows_form))


def _one_input(service: Service) -> bool:
    sig = service.signature
    return sig is not None and len(sig.inputs) == 1


async def predict_batch(service: Service, body: bytes, call: Call | None = None) -> Reply:
    service.check_ready()
    req = loads(body)
    features = field(req, "batch_features")
    if isinstance(features, list) and len(features) > service.settings.max_batch_rows:
        raise BadRequest(f"batch_features: {len(features)} rows exceed the limit of {service.settings.max_batch_rows}")
    feed, rows = _feed(service, features, "batch_features", one_row=False)
    if rows > service.settings.max_batch_rows:  # multi-input models send {input: rows}
        raise BadRequest(f"batch_features: {rows} rows exceed the limit of {service.settings.max_batch_rows}")
    result = await service.infer(feed, rows, call)
    return ok(_body(service, result, single=False))
