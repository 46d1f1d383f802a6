"""Open Inference Protocol (KServe V2) REST, with the binary tensor data extension."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import __version__
from ..codec import check_declared_shape, check_shape, element_count, from_bytes, reshape, to_array
from ..errors import BadRequest
from ..service import Call, Service
from . import Reply, dumps, loads, ok

PROTOCOL = "v2"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = b"inference-header-content-length"


def server_metadata() -> dict[str, Any]:
    return {"name": "modelship", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(service: Service, name: str, version: str | None) -> dict[str, Any]:
    service.check_model(name, version)
    sig = service.signature
    assert sig is not None and service.model is not None
    fmt = service.model.info.format
    meta: dict[str, Any] = {
        "name": service.name,
        "versions": [service.version],
        "platform": "pytorch_torchscript" if fmt == "torchscript" else "pytorch_torch_export",
        "inputs": [s.to_json() for s in sig.inputs],
        "outputs": [s.to_json() for s in sig.outputs],
    }
    if sig.task or sig.labels:
        meta["parameters"] = {"task": sig.task, "labels": list(sig.labels)}
    return meta


def _shape(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise BadRequest(f"{what}: shape must be a list of non-negative integers")
    return value


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f'{what}: "parameters" must be a JSON object')
    return params


def _decode(service: Service, body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray], int]:
    sig = service.signature
    assert sig is not None
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequest("inference-header-content-length is out of range of the body")
        req = loads(memoryview(body)[:header_length])
        binary = memoryview(body)[header_length:]
    else:
        req = loads(body)
        binary = memoryview(b"")
    if not isinstance(req, dict):
        raise BadRequest("request must be a JSON object")
    if not isinstance(req.get("id", ""), str):  # echoed back: a string, as the protocol says
        raise BadRequest('"id" must be a string')
    items = req.get("inputs")
    if not isinstance(items, list) or not items:
        raise BadRequest('request lacks "inputs" (a non-empty list)')
    specs = {s.name: s for s in sig.inputs}
    feed: dict[str, np.ndarray] = {}
    offset = 0
    rows = -1
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("each input must be a JSON object")
        name = item.get("name")
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise BadRequest(f"unknown input {name!r} (expected {', '.join(specs)})")
        if name in feed:
            raise BadRequest(f"input {name!r} given twice")
        what = f"input {name!r}"
        shape = _shape(item.get("shape"), what)
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            raise BadRequest(f"{what}: datatype {datatype!r} does not match the model's {spec.datatype}")
        size = _parameters(item, what).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"{what}: binary_data_size {size!r} is out of range of the binary data")
            arr = from_bytes(binary[offset : offset + size], spec, datatype, shape, what)
            offset += size
        else:
            if "data" not in item:
                raise BadRequest(f"{what} lacks \"data\"")
            check_declared_shape(shape, spec, what)
            arr = to_array(item["data"], spec, what)
            if list(arr.shape) != shape:
                if arr.size != element_count(shape):
                    raise BadRequest(f"{what}: {arr.size} values do not fill shape {shape}")
                arr = reshape(arr, shape, what)  # row-major flattened data
        n = check_shape(arr, spec, what)
        if rows not in (-1, n):
            raise BadRequest("inputs have different batch sizes")
        rows = n
        feed[name] = arr  # type: ignore[index]
    missing = [n for n in specs if n not in feed]
    if missing:
        raise BadRequest(f"missing inputs {missing}")
    if offset != len(binary):
        raise BadRequest("binary data left over after the declared inputs")
    if rows > service.settings.max_batch_rows:
        raise BadRequest(f"{rows} rows exceed the limit of {service.settings.max_batch_rows}")
    return req, feed, rows


def _wanted(service: Service, req: dict[str, Any]) -> list[tuple[str, bool]]:
    """(output name, binary?) in response order."""
    sig = service.signature
    assert sig is not None
    binary_default = bool(_parameters(req, "request").get("binary_data_output"))
    asked = req.get("outputs")
    if not asked:
        return [(s.name, binary_default) for s in sig.outputs]
    if not isinstance(asked, list):
        raise BadRequest('"outputs" must be a list')
    known = {s.name for s in sig.outputs}
    wanted = []
    for o in asked:
        name = o.get("name") if isinstance(o, dict) else None
        if not isinstance(name, str) or name not in known:
            raise BadRequest(f"unknown output {name!r} (expected {', '.join(known)})")
        wanted.append((name, bool(_parameters(o, f"output {name!r}").get("binary_data", binary_default))))
    return wanted


async def infer(service: Service, name: str, version: str | None, body: bytes, header_length: int | None,
                call: Call | None = None) -> Reply:  # fmt: skip
    service.check_model(name, version)
    req, feed, rows = _decode(service, body, header_length)
    wanted = _wanted(service, req)
    result = await service.infer(feed, rows, call)
    sig = service.signature
    assert sig is not None
    datatypes = {s.name: s.datatype for s in sig.outputs}
    outputs = []
    blobs: list[bytes] = []
    for out_name, binary in wanted:
        arr = result.outputs[out_name]
        entry: dict[str, Any] = {"name": out_name, "datatype": datatypes[out_name], "shape": arr.shape}
        if binary:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": service.name, "model_version": service.version, "outputs": outputs}
    if "id" in req:
        response["id"] = req["id"]
    if not blobs:
        return ok(response)
    header = dumps(response)
    return Reply(
        200,
        header + b"".join(blobs),
        content_type=b"application/octet-stream",
        headers=[(HEADER_LENGTH, str(len(header)).encode())],
    )


__all__ = ["infer", "model_metadata", "server_metadata"]
