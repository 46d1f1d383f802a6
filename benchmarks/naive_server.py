"""The baseline: a model server written the way most tutorials write one.

    python benchmarks/naive_server.py --model examples/model/model.pt --port 8001

One forward pass per HTTP request, pydantic request models, FastAPI's JSON responses,
uvicorn. No batching, no thread tuning. Access logging is off (as any benchmark
would run it) so the comparison is about the serving path, not about log I/O.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Features(BaseModel):
    features: list[float]


class BatchFeatures(BaseModel):
    batch_features: list[list[float]]


def create_app(model_path: Path, device: str = "cpu") -> FastAPI:
    if model_path.suffix == ".pt2":  # a torch.export program
        model = torch.export.load(str(model_path)).module().to(device)
    else:
        model = torch.jit.load(str(model_path), map_location=device).eval()
    app = FastAPI(title="naive model server")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(req: Features) -> dict:
        with torch.no_grad():
            x = torch.tensor([req.features], dtype=torch.float32, device=device)
            logits = model(x)[0].cpu()
        return {"prediction": int(logits.argmax()), "logits": logits.tolist()}

    @app.post("/predict/batch")
    def predict_batch(req: BatchFeatures) -> dict:
        with torch.no_grad():
            x = torch.tensor(req.batch_features, dtype=torch.float32, device=device)
            logits = model(x).cpu()
        return {
            "predictions": logits.argmax(dim=1).tolist(),
            "logits": logits.tolist(),
        }

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="naive one-forward-per-request FastAPI server")
    p.add_argument("--model", type=Path, required=True, help="TorchScript (model.pt) or torch.export (model.pt2) file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    app = create_app(args.model, args.device)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
