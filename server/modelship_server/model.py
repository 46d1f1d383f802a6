"""Model loading and the forward pass: the only module that imports torch.

`load_model(settings)` fetches the model (file://, plain path, http(s)://, s3://), detects
TorchScript vs torch.export, finds or derives its signature, moves it to the device and
precision, and warms it up. `LoadedModel.predict` maps named numpy inputs to named numpy
outputs under `torch.inference_mode()`.
"""
from __future__ import annotations

import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fetch import SIGNATURE_FILE, FetchOptions, ModelLoadError, fetch
from .settings import Settings
from .signature import NUMPY_TO_V2, Signature, SignatureError, TensorSpec

log = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "LoadedModel", "ModelInfo", "fetch", "load_model"]

# What a directory URI is searched for, per format (auto prefers TorchScript: lower call overhead).
DIR_CANDIDATES = {
    "auto": ("model.pt", "model.pt2"),
    "torchscript": ("model.pt",),
    "torch-export": ("model.pt2",),
}
_PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ModelInfo:
    format: str  # torchscript | torch-export
    device: str  # cpu | cuda | cuda:N
    precision: str  # effective: fp32 on CPU whatever was asked
    path: str


# -- format and signature -----------------------------------------------------------------


def resolve_file(path: Path, fmt: str) -> Path:
    if not path.is_dir():
        return path
    for name in DIR_CANDIDATES[fmt]:
        if (path / name).is_file():
            return path / name
    raise ModelLoadError(f"no {' or '.join(DIR_CANDIDATES[fmt])} in {path}")


def detect_format(path: Path) -> str:
    """torch-export archives hold archive_format / models/*.json; TorchScript holds code/."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{path} is not a TorchScript or torch.export archive: {e}") from e
    parts = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in parts or any(p.startswith("models/") for p in parts):
        return "torch-export"
    if "constants.pkl" in parts or any(p.startswith("code/") for p in parts):
        return "torchscript"
    raise ModelLoadError(f"cannot tell the format of {path}; set MODELSHIP_MODEL_FORMAT")


def derive_signature(program: Any, name: str) -> Signature:
    """Signature of a torch.export program: user inputs/outputs, dtypes, -1 for symbolic dims."""
    gs = program.graph_signature
    nodes = {n.name: n for n in program.graph.nodes}

    def spec(tensor_name: str, node: Any) -> TensorSpec:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise SignatureError(f"{tensor_name}: not a tensor; give a signature.json")
        shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
        try:
            datatype = NUMPY_TO_V2[np.dtype(torch.empty((), dtype=val.dtype).numpy().dtype)]
        except (KeyError, TypeError):
            raise SignatureError(f"{tensor_name}: dtype {val.dtype} not supported") from None
        return TensorSpec(tensor_name, datatype, shape)

    inputs = tuple(spec(n, nodes[n]) for n in gs.user_inputs)
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    out_args = out_node.args[0]
    out_args = out_args if isinstance(out_args, (tuple, list)) else (out_args,)
    user_outs = [a for a in out_args if getattr(a, "name", None) in set(gs.user_outputs)]
    names = ["output"] if len(user_outs) == 1 else [f"output_{i}" for i in range(len(user_outs))]
    outputs = tuple(spec(nm, node) for nm, node in zip(names, user_outs))
    return Signature(name=name, inputs=inputs, outputs=outputs)


# -- the loaded model ---------------------------------------------------------------------


class LoadedModel:
    """A model on its device, with its signature; predict() is called from one thread."""

    def __init__(self, module: Any, signature: Signature, info: ModelInfo, device: torch.device, dtype: torch.dtype) -> None:
        self.signature = signature
        self.info = info
        self._module = module
        self._device = device
        self._dtype = dtype
        self._cuda = device.type == "cuda"
        self.warmup_batches: list[int] = []

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            args = [self._tensor(inputs[spec.name]) for spec in self.signature.inputs]
            result = self._module(*args)
            tensors = self._outputs(result)
            return {
                spec.name: t.to("cpu", _torch_dtype(spec.dtype)).numpy()
                for spec, t in zip(self.signature.outputs, tensors)
            }

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        if not array.flags.writeable:  # torch warns on read-only buffers (binary requests)
            array = array.copy()
        t = torch.from_numpy(array)
        if self._cuda:
            t = t.to(self._device, non_blocking=False)
        if t.is_floating_point() and t.dtype != self._dtype:
            t = t.to(self._dtype)
        return t

    def _outputs(self, result: Any) -> list[torch.Tensor]:
        specs = self.signature.outputs
        if isinstance(result, torch.Tensor):
            tensors = [result]
        elif isinstance(result, dict):
            missing = [s.name for s in specs if s.name not in result]
            if missing:
                raise RuntimeError(f"model output lacks {missing}")
            tensors = [result[s.name] for s in specs]
        elif isinstance(result, (tuple, list)):
            tensors = list(result)
        else:
            raise RuntimeError(f"model returned {type(result).__name__}, expected tensors")
        if len(tensors) != len(specs):
            raise RuntimeError(f"model returned {len(tensors)} outputs, signature declares {len(specs)}")
        return tensors

    def warmup(self, max_batch_size: int) -> None:
        """Forward passes at batch 1 and the max batch size (kernels, allocator, JIT profiling)."""
        sizes = [1, max_batch_size] if self.signature.batchable else [0]
        for n in dict.fromkeys(sizes):
            feed = {}
            for spec in self.signature.inputs:
                shape = [d if d != -1 else 1 for d in spec.shape]
                if n:
                    shape[0] = n
                feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
            for _ in range(2):  # TorchScript's profiling executor optimises on the 2nd call
                self.predict(feed)
            self.warmup_batches.append(n or shape[0])
        if self._cuda:
            torch.cuda.synchronize(self._device)

    def memory_stats(self) -> dict[str, float] | None:
        """GPU memory in bytes (None on CPU)."""
        if not self._cuda:
            return None
        return {
            "allocated": float(torch.cuda.memory_allocated(self._device)),
            "reserved": float(torch.cuda.memory_reserved(self._device)),
            "max_allocated": float(torch.cuda.max_memory_allocated(self._device)),
        }


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def to_precision(module: Any, dtype: torch.dtype) -> Any:
    """Cast floating parameters and buffers; inputs are cast in LoadedModel._tensor."""
    return module if dtype == torch.float32 else module.to(dtype)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("MODELSHIP_DEVICE=cuda but no CUDA device is visible")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def configure_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)  # one forward thread: no inter-op parallelism wanted
    except RuntimeError:  # already set (or parallel work already ran): harmless
        pass


def load_model(settings: Settings) -> LoadedModel:
    """Fetch, load, place and warm up the model named by settings.model_uri."""
    if not settings.model_uri:
        raise ModelLoadError("no model: set MODELSHIP_MODEL_URI (or --model-uri)")
    configure_threads(settings.threads)
    fetched = fetch(settings.model_uri, Path(settings.model_dir), FetchOptions.from_settings(settings))
    path = resolve_file(fetched, settings.model_format)
    fmt = settings.model_format if settings.model_format != "auto" else detect_format(path)
    device = pick_device(settings.device)
    precision = settings.precision
    if device.type == "cpu" and precision != "fp32":
        log.warning("precision %s needs CUDA; running fp32 on CPU", precision)
        precision = "fp32"
    dtype = _PRECISION_DTYPES[precision]

    default_name = settings.model_name or "model"
    program = None
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; it still serves best
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=device).eval()
        else:
            program = torch.export.load(str(path))
            module = program.module()
            module.to(device)
    except Exception as e:
        raise ModelLoadError(f"cannot load {path} as {fmt}: {type(e).__name__}: {e}") from e
    module = to_precision(module, dtype)

    sig_path = Path(settings.signature) if settings.signature else path.parent / SIGNATURE_FILE
    if settings.signature or sig_path.is_file():
        signature = Signature.from_file(sig_path, default_name=default_name)
    elif program is not None:
        signature = derive_signature(program, default_name)
    else:
        raise ModelLoadError(f"TorchScript models need a signature: put {SIGNATURE_FILE} next to the model or set MODELSHIP_SIGNATURE")

    model = LoadedModel(module, signature, ModelInfo(fmt, str(device), precision, str(path)), device, dtype)
    try:
        model.warmup(settings.max_batch_size)
    except Exception as e:
        raise ModelLoadError(f"warm-up failed (does the model match its signature?): {type(e).__name__}: {e}") from e
    log.info("loaded %s (%s) on %s, %s; warmed at batch %s", path, fmt, device, precision, model.warmup_batches)
    return model
