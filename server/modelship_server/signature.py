"""A model's tensor signature: names, V2 datatypes and shapes (-1 = dynamic).

No torch here: the signature drives validation, V2 metadata and warm-up, and is
shared by code that must not import torch.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Open Inference Protocol datatype names <-> numpy dtypes (BYTES is not supported).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}


class SignatureError(ValueError):
    """The signature file or derived signature is unusable."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # V2 name, e.g. "FP32"
    shape: tuple[int, ...]  # -1 marks a dynamic dimension
    # A 2-D input's column names, in the order the model takes them: /predict then also accepts
    # {"features": {name: value, ...}} (named_features.py). Empty: values by position only.
    columns: tuple[str, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row (everything after the batch dimension)."""
        return self.shape[1:]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.columns:
            out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> TensorSpec:
        if not isinstance(obj, dict):
            raise SignatureError(f"tensor spec must be an object, got {obj!r}")
        try:
            name, datatype, shape = obj["name"], obj["datatype"], obj["shape"]
        except KeyError as e:
            raise SignatureError(f"tensor spec {obj!r} lacks {e.args[0]!r}") from None
        if not isinstance(name, str) or not name:
            raise SignatureError(f"tensor name must be a non-empty string, got {name!r}")
        if datatype not in V2_TO_NUMPY:
            raise SignatureError(
                f"tensor {name!r}: datatype {datatype!r} not supported "
                f"(one of {', '.join(V2_TO_NUMPY)})"
            )
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape)
        ):
            raise SignatureError(
                f"tensor {name!r}: shape must be a non-empty list of positive ints or -1, got {shape!r}"
            )
        columns = _columns(name, tuple(shape), obj.get("columns"))
        return cls(name=name, datatype=datatype, shape=tuple(shape), columns=columns)


def _columns(name: str, shape: tuple[int, ...], columns: Any) -> tuple[str, ...]:
    """Validated column names: one per entry of a 2-D tensor's fixed last dimension, unique."""
    if columns is None:
        return ()
    if len(shape) != 2 or shape[1] == -1:
        raise SignatureError(
            f"tensor {name!r}: columns name the entries of a 2-D tensor with a fixed last dimension, "
            f"not of shape {list(shape)}"
        )
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        raise SignatureError(f"tensor {name!r}: columns must be a list of non-empty strings")
    if len(columns) != shape[1]:
        raise SignatureError(f"tensor {name!r}: {len(columns)} columns for a last dimension of {shape[1]}")
    duplicates = sorted(c for c, n in Counter(columns).items() if n > 1)
    if duplicates:
        raise SignatureError(f"tensor {name!r}: duplicate column names {duplicates[:10]}")
    return tuple(columns)


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    task: str = ""
    labels: tuple[str, ...] = field(default_factory=tuple)
    version: str = ""  # optional; MODELSHIP_MODEL_VERSION wins

    @property
    def batchable(self) -> bool:
        """Requests can be stacked along dim 0 when every input's first dim is dynamic."""
        return all(spec.shape[0] == -1 for spec in self.inputs)

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification" and bool(self.labels)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
        }
        if self.task:
            out["task"] = self.task
        if self.labels:
            out["labels"] = list(self.labels)
        if self.version:
            out["version"] = self.version
        return out

    @classmethod
    def from_json(cls, obj: Any, default_name: str = "model") -> Signature:
        if not isinstance(obj, dict):
            raise SignatureError("signature must be a JSON object")
        inputs = tuple(TensorSpec.from_json(o) for o in obj.get("inputs") or [])
        outputs = tuple(TensorSpec.from_json(o) for o in obj.get("outputs") or [])
        if not inputs or not outputs:
            raise SignatureError("signature needs at least one input and one output")
        for kind, specs in (("input", inputs), ("output", outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise SignatureError(f"duplicate {kind} names in signature: {names}")
        named_outputs = [s.name for s in outputs if s.columns]
        if named_outputs:  # nothing reads them: refuse rather than let a typo'd file pass as meaning something
            raise SignatureError(f"columns name an input's entries; outputs {named_outputs} have columns")
        labels = obj.get("labels") or []
        if not isinstance(labels, list):
            raise SignatureError("signature labels must be a list")
        return cls(
            name=str(obj.get("name") or default_name),
            inputs=inputs,
            outputs=outputs,
            task=str(obj.get("task") or ""),
            labels=tuple(str(label) for label in labels),
            version=str(obj.get("version") or ""),
        )

    @classmethod
    def from_file(cls, path: Path, default_name: str = "model") -> Signature:
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SignatureError(f"cannot read signature {path}: {e}") from e
        return cls.from_json(obj, default_name=default_name)
