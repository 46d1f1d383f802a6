"""The service and its metrics without torch: a numpy model standing where a CUDA model would."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from metrics_text import parse, value
from modelship_server.service import Service
from modelship_server.settings import Settings
from modelship_server.signature import Signature


@dataclass(frozen=True)
class Info:
    format: str = "torch-export"
    device: str = "cuda:0"
    precision: str = "fp16"


class NumpyModel:
    """y = x @ W, reporting GPU memory like a CUDA model does."""

    signature = Signature.from_json({
        "name": "lin", "version": "7", "task": "classification", "labels": ["a", "b"],
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]})  # fmt: skip
    info = Info()
    W = np.array([[1, 0], [0, 1], [1, -1]], np.float32)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] @ self.W}

    def memory_stats(self) -> dict[str, float]:
        return {"allocated": 1024.0, "reserved": 4096.0, "max_allocated": 2048.0}


def test_cuda_model_exposes_gpu_memory_and_model_info_and_splits_batches() -> None:
    async def main() -> dict:
        service = Service(Settings(max_batch_size=8, max_delay_ms=50))
        service.attach(NumpyModel())
        xs = [np.array([[1, 2, 3]], np.float32), np.array([[0, 1, 0], [2, 0, 1]], np.float32)]
        results = await asyncio.gather(*(service.infer({"x": x}, len(x)) for x in xs))
        for x, r in zip(xs, results):
            np.testing.assert_array_equal(r.outputs["y"], x @ NumpyModel.W)
            assert r.classes.tolist() == (x @ NumpyModel.W).argmax(1).tolist()
            np.testing.assert_allclose(r.probabilities.sum(axis=1), 1.0, rtol=1e-6)
        samples = parse(service.metrics.render().decode())
        await service.drain()
        return samples

    samples = asyncio.run(main())
    assert value(samples, "modelship_gpu_memory_allocated_bytes") == 1024
    assert value(samples, "modelship_gpu_memory_reserved_bytes") == 4096
    assert value(samples, "modelship_gpu_memory_max_allocated_bytes") == 2048
    assert value(samples, "modelship_model_info", model="lin", version="7", format="torch-export",
                 device="cuda:0", precision="fp16") == 1  # fmt: skip
    assert value(samples, "modelship_batch_size_rows_count", model="lin") == 1  # both requests, one batch
    assert value(samples, "modelship_batch_size_rows_sum", model="lin") == 3
    # No series left behind under the identity used before the model was known.
    assert value(samples, "modelship_batch_size_rows_count", model="model") == 0
    assert not any(dict(ls).get("model") == "model" for n, ls in samples if n.startswith("modelship_batch"))
