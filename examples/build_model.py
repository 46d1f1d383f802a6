"""Build the example model: a small MLP classifying scikit-learn's bundled 8x8 digits.

    python examples/build_model.py --out examples/model [--variant v1|v2|bad] [--seed N] [--epochs N]

Writes (the contract the server, tests and quick start rely on):

    DIR/model.pt         TorchScript: input float32 [N, 64] (raw pixels 0..16) -> logits float32 [N, 10]
    DIR/model.pt2        the same model as a torch.export program, dynamic batch dimension
    DIR/signature.json   name, version, task, labels, inputs (with the 64 column names, in the
                         order the model takes them) and outputs (-1 = batch dimension)
    DIR/heldout.npz      X (float32 [n, 64]) and y (int64 [n]) of the held-out split
    DIR/reference_profile.json   the training inputs' drift reference (modelship_server.drift)

The preprocessing (feature scaling with the training set's mean and std) is the program's first
module, `preprocess`: clients send raw pixels, so serving cannot scale differently from training.

Variants, for canary and shadow tests (same data split, same held-out set):

    v1   version 1.0.0: the default
    v2   version 2.0.0: another seed and more epochs; agrees with v1 on most inputs
    bad  version 2.0.0-bad: v1 with its class order permuted; disagrees with v1 on every input

Building v2 or bad also trains v1 (seconds) and prints how often the two predict the same class.
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
SPLIT_SEED = 0  # every variant holds out the same samples: their answers are comparable


@dataclass(frozen=True)
class Variant:
    version: str
    seed: int  # weight initialisation and batch order
    epochs: int
    permute_classes: bool = False  # logits rolled by one class: a model that is confidently wrong


VARIANTS = {
    "v1": Variant(MODEL_VERSION, seed=0, epochs=20),
    "v2": Variant("2.0.0", seed=1, epochs=30),
    "bad": Variant("2.0.0-bad", seed=0, epochs=20, permute_classes=True),
}


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray  # float32 [n, 64], raw pixel values 0..16
    y_train: np.ndarray  # int64 [n]
    x_heldout: np.ndarray
    y_heldout: np.ndarray
    columns: tuple[str, ...]  # the 64 feature names, in column order ("pixel_0_0" ... "pixel_7_7")


class Standardize(nn.Module):
    """Feature scaling folded into the model, so callers send raw pixels."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DigitsClassifier(nn.Module):
    """preprocess (scaling) then the MLP: one exported program from raw pixels to logits."""

    def __init__(self, preprocess: Standardize, net: nn.Sequential) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.net = net

    # "input", as nn.Sequential names it: a server deriving the signature from the program sees that name.
    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return self.net(self.preprocess(input))


def load_split(seed: int = SPLIT_SEED, heldout_fraction: float = 0.25) -> Split:
    """Stratified, fixed-seed train / held-out split of the bundled digits data."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(
        x, y, test_size=heldout_fraction, stratify=y, random_state=seed
    )
    return Split(x_tr, y_tr, x_ho, y_ho, tuple(digits.feature_names))


def scaling(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the training inputs (the preprocessing's statistics)."""
    mean = x_train.mean(axis=0)
    # Some border pixels are always 0 in training: keep their std at 1 so they pass as 0.
    std = x_train.std(axis=0)
    return mean, np.where(std < 1e-6, np.float32(1.0), std).astype(np.float32)


def build_model(x_train: np.ndarray, hidden: tuple[int, ...]) -> DigitsClassifier:
    """64 -> hidden... -> 10 MLP behind a preprocess module that scales with training-set statistics."""
    mean, std = scaling(x_train)
    layers: list[nn.Module] = []
    width = N_FEATURES
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, N_CLASSES))
    return DigitsClassifier(Standardize(torch.from_numpy(mean), torch.from_numpy(std)), nn.Sequential(*layers))


def permute_classes(model: DigitsClassifier) -> None:
    """Roll the output rows by one: class c's logit is answered as class c+1's (mod 10)."""
    last = model.net[-1]
    assert isinstance(last, nn.Linear)
    order = torch.roll(torch.arange(N_CLASSES), 1)  # new row i is old row i-1
    with torch.no_grad():
        last.weight.copy_(last.weight[order])
        last.bias.copy_(last.bias[order])


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


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).argmax(dim=1).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


def agreement(a: nn.Module, b: nn.Module, x: np.ndarray) -> float:
    """Share of inputs on which the two models predict the same class."""
    return float((predict(a, x) == predict(b, x)).mean())


def save_torchscript(model: nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(model), str(path))


def save_exported(model: nn.Module, path: Path) -> None:
    """torch.export program with a dynamic batch dimension (1..MAX_BATCH)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # The example batch must not be 0 or 1: export specialises those sizes.
    example = (torch.zeros(8, N_FEATURES, dtype=torch.float32),)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def signature(columns: tuple[str, ...], version: str = MODEL_VERSION) -> dict:
    # "columns" names the input's features in the order the model takes them: clients may send
    # {"features": {"pixel_0_0": 0, ...}} and the server orders them.
    return {
        "name": MODEL_NAME,
        "version": version,
        "task": "classification",
        "labels": [str(i) for i in range(N_CLASSES)],
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, N_FEATURES], "columns": list(columns)}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, N_CLASSES]}],
    }


def write_artifacts(model: nn.Module, split: Split, out: Path, version: str = MODEL_VERSION) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_torchscript(model, out / "model.pt")
    save_exported(model, out / "model.pt2")
    (out / "signature.json").write_text(json.dumps(signature(split.columns, version), indent=2) + "\n")
    np.savez(out / "heldout.npz", X=split.x_heldout, y=split.y_heldout)
    # The server scores input drift against the training inputs, so the profile ships with the model.
    save_profile(build_reference_profile(split.x_train, input_name="input"), out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="v1",
                   help="v1 (default, 1.0.0), v2 (2.0.0, agrees with v1 on most inputs), "
                        "bad (2.0.0-bad, disagrees with v1)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the variant's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the variant's)")
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


def trained(split: Split, hidden: tuple[int, ...], seed: int, epochs: int) -> DigitsClassifier:
    torch.manual_seed(seed)
    model = build_model(split.x_train, hidden)
    train(model, split, epochs, seed)
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variant = VARIANTS[args.variant]
    seed = variant.seed if args.seed is None else args.seed
    epochs = variant.epochs if args.epochs is None else args.epochs
    # One thread: reproducible float sums and no fight with other processes for cores.
    torch.set_num_threads(1)
    started = time.perf_counter()
    split = load_split()
    model = trained(split, args.hidden, seed, epochs)
    if variant.permute_classes:
        permute_classes(model)
    acc = accuracy(model, split.x_heldout, split.y_heldout)
    write_artifacts(model, split, args.out, variant.version)
    print(
        f"digits MLP 64->{'->'.join(map(str, args.hidden))}->10 {args.variant} ({variant.version}): "
        f"held-out accuracy {acc:.4f} on {len(split.y_heldout)} samples ({len(split.y_train)} trained, "
        f"seed {seed}, {epochs} epochs, {time.perf_counter() - started:.1f}s) -> {args.out}"
    )
    if args.variant != "v1":
        v1 = VARIANTS["v1"]
        reference = trained(split, args.hidden, v1.seed, v1.epochs)
        every = np.concatenate([split.x_train, split.x_heldout])
        print(
            f"agreement with v1 ({v1.version}, same predicted class): "
            f"held-out {agreement(model, reference, split.x_heldout):.2%} of {len(split.x_heldout)}, "
            f"all digits {agreement(model, reference, every):.2%} of {len(every)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
