"""Build the example model: a small MLP classifying scikit-learn's bundled 8x8 digits.

    python examples/build_model.py --out examples/model [--seed 0] [--epochs 40]

Writes (the contract the server, tests and quick start rely on):

    DIR/model.pt         TorchScript: input float32 [N, 64] (raw pixels 0..16) -> logits float32 [N, 10]
    DIR/model.pt2        the same model as a torch.export program, dynamic batch dimension
    DIR/signature.json   name, version, task, labels, inputs and outputs (-1 = batch dimension)
    DIR/heldout.npz      X (float32 [n, 64]) and y (int64 [n]) of the held-out split
    DIR/reference_profile.json   the training inputs' drift reference (modelship_server.drift)

No network is needed (the digits data ship with scikit-learn) and the build takes seconds.
Same seed, same bytes of weights: training runs on one thread with fixed seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelship_server.drift import build_reference_profile, save_profile

N_FEATURES = 64
N_CLASSES = 10
MAX_BATCH = 4096  # upper bound of the exported program's dynamic batch dimension
MODEL_NAME = "digits"
MODEL_VERSION = "1.0.0"


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray  # float32 [n, 64], raw pixel values 0..16
    y_train: np.ndarray  # int64 [n]
    x_heldout: np.ndarray
    y_heldout: np.ndarray


class Standardize(nn.Module):
    """Feature scaling folded into the model, so callers send raw pixels."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def load_split(seed: int, heldout_fraction: float = 0.25) -> Split:
    """Stratified, fixed-seed train / held-out split of the bundled digits data."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(
        x, y, test_size=heldout_fraction, stratify=y, random_state=seed
    )
    return Split(x_tr, y_tr, x_ho, y_ho)


def build_model(x_train: np.ndarray, hidden: tuple[int, ...]) -> nn.Sequential:
    """64 -> hidden... -> 10 MLP whose first layer standardises with training-set statistics."""
    mean = torch.from_numpy(x_train.mean(axis=0))
    # Some border pixels are always 0 in training: keep their std at 1 so they pass as 0.
    std = torch.from_numpy(x_train.std(axis=0))
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    layers: list[nn.Module] = [Standardize(mean, std)]
    width = N_FEATURES
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, N_CLASSES))
    return nn.Sequential(*layers)


def train(model: nn.Module, split: Split, epochs: int, seed: int, batch_size: int = 64) -> None:
    """Plain mini-batch Adam; a few seconds on one CPU thread."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def save_torchscript(model: nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(model), str(path))


def save_exported(model: nn.Module, path: Path) -> None:
    """torch.export program with a dynamic batch dimension (1..MAX_BATCH)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # The example batch must not be 0 or 1: export specialises those sizes.
    example = (torch.zeros(8, N_FEATURES, dtype=torch.float32),)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def signature() -> dict:
    return {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "task": "classification",
        "labels": [str(i) for i in range(N_CLASSES)],
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, N_CLASSES]}],
    }


def write_artifacts(model: nn.Module, split: Split, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_torchscript(model, out / "model.pt")
    save_exported(model, out / "model.pt2")
    (out / "signature.json").write_text(json.dumps(signature(), indent=2) + "\n")
    np.savez(out / "heldout.npz", X=split.x_heldout, y=split.y_heldout)
    # The server scores input drift against the training inputs, so the profile ships with the model.
    save_profile(build_reference_profile(split.x_train, input_name="input"), out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    # 1024 and 512 wide (~600k parameters): small, trains in seconds, yet its forward pass is
    # a real share of a request's cost, as with production tabular models. A much smaller MLP
    # makes any HTTP server's throughput a measure of JSON parsing alone (see benchmarks/).
    p.add_argument(
        "--hidden",
        type=lambda s: tuple(int(w) for w in s.split(",")),
        default=(1024, 512),
        help="hidden layer widths, comma separated (default 1024,512)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One thread: reproducible float sums and no fight with other processes for cores.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    split = load_split(args.seed)
    model = build_model(split.x_train, args.hidden)
    train(model, split, args.epochs, args.seed)
    acc = accuracy(model, split.x_heldout, split.y_heldout)
    write_artifacts(model, split, args.out)
    print(
        f"digits MLP 64->{'->'.join(map(str, args.hidden))}->10: held-out accuracy {acc:.4f} "
        f"on {len(split.y_heldout)} samples ({len(split.y_train)} trained, "
        f"{args.epochs} epochs, {time.perf_counter() - started:.1f}s) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
