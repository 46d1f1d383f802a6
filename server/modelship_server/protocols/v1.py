"""KServe V1: POST /v1/models/{name}:predict {"instances": [...]} -> {"predictions": [...]}."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..codec import check_shape, to_array
from ..errors import BadRequest
from ..service import Call, Service
from . import Reply, loads, ok

PROTOCOL = "v1"


def _columns(service: Service, req: Any) -> dict[str, Any]:
    """instances (row-wise) or inputs (column-wise) -> {input name: rows}."""
    sig = service.signature
    assert sig is not None
    if not isinstance(req, dict) or ("instances" not in req and "inputs" not in req):
        raise BadRequest('request must be a JSON object with "instances" (or "inputs")')
    names = [s.name for s in sig.inputs]
    if "instances" in req:
        instances = req["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("instances must be a non-empty list")
        if len(names) == 1 and not isinstance(instances[0], dict):
            return {names[0]: instances}
        if not all(isinstance(i, dict) for i in instances):
            raise BadRequest(f"each instance must map input names ({', '.join(names)}) to values")
        try:
            return {n: [i[n] for i in instances] for n in names}
        except KeyError as e:
            raise BadRequest(f"an instance lacks input {e.args[0]!r}") from None
    inputs = req["inputs"]
    if len(names) == 1 and not isinstance(inputs, dict):
        return {names[0]: inputs}
    if not isinstance(inputs, dict) or set(inputs) != set(names):
        raise BadRequest(f"inputs must map exactly the input names ({', '.join(names)}) to values")
    return inputs


async def predict(service: Service, name: str, body: bytes, call: Call | None = None) -> Reply:
    service.check_model(name)
    sig = service.signature
    assert sig is not None
    columns = _columns(service, loads(body))
    feed: dict[str, np.ndarray] = {}
    rows = -1
    for spec in sig.inputs:
        what = "instances" if len(sig.inputs) == 1 else f"instances[{spec.name!r}]"
        values = columns[spec.name]
        if isinstance(values, list) and len(values) > service.settings.max_batch_rows:
            raise BadRequest(f"{what}: {len(values)} rows exceed the limit of {service.settings.max_batch_rows}")
        arr = to_array(values, spec, what)
        n = check_shape(arr, spec, what)
        if n > service.settings.max_batch_rows:
            raise BadRequest(f"{what}: {n} rows exceed the limit of {service.settings.max_batch_rows}")
        if rows not in (-1, n):
            raise BadRequest("inputs have different row counts")
        rows = n
        feed[spec.name] = arr
    result = await service.infer(feed, rows, call)
    outs = result.outputs
    if len(outs) == 1:
        return ok({"predictions": next(iter(outs.values()))})
    lists = {k: v.tolist() for k, v in outs.items()}
    return ok({"predictions": [{k: lists[k][i] for k in lists} for i in range(rows)]})
