"""Weights of the SR plugin: deployed SPAN checkpoints, SPAN-format export, ONNX, shipped defaults.

* ``.safetensors`` checkpoints hold the *deployed* state dict (``*.eval_conv.*`` keys, one 3x3 conv
  per Conv3XC, as the NTIRE-2025 DSCF checkpoint) and the :class:`SPANConfig` in the metadata.
* :func:`export_span_state_dict` writes the original SPAN layout (``sk`` / ``conv.0-2`` branch keys
  plus ``eval_conv``) whose re-parameterisation gives back exactly the deployed kernels, so loaders
  that recompute ``eval_conv`` from the branches (SPAN's own code, spandrel) get the same network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .functional import expand_to_conv3xc
from .span import SPAN, Conv3XC, SPANConfig, is_deployed, reparameterize

__all__ = [
    "WEIGHTS_DIR",
    "save_span",
    "load_span",
    "default_weights",
    "export_span_state_dict",
    "export_onnx",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600 files; weights should be readable
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_span(model: SPAN, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Save a deployed SPAN (re-parameterised, no adapters) as safetensors with its config."""
    from safetensors.torch import save_file

    if not isinstance(model, SPAN):
        raise TypeError(f"model must be a SPAN, got {type(model).__name__}")
    if not is_deployed(model):
        raise ValueError("model must be re-parameterised (span.reparameterize) before saving")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if any("lora" in k or "base_layer" in k for k in state):
        raise ValueError("model still carries adapters; fold them first (distill.fold_dsclora)")
    meta = {"format": "lowrank_vision.span.deployed", "config": json.dumps(model.config.to_dict())}
    if extra:
        meta["extra"] = json.dumps(extra)
    return _atomic(Path(path), lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_span(path: Union[str, Path], map_location: str = "cpu") -> SPAN:
    """Load a checkpoint written by :func:`save_span` into a deployed SPAN."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path), device=map_location)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != "lowrank_vision.span.deployed" or "config" not in meta:
        raise ValueError(f"{path} is not a deployed-SPAN checkpoint (metadata format={meta.get('format')!r})")
    model = reparameterize(SPAN(SPANConfig(**json.loads(meta["config"]))))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match the SPAN it declares: {exc}") from exc
    return model.to(map_location)


def checkpoint_extra(path: Union[str, Path]) -> dict:
    """The ``extra`` metadata (command, data, metrics) stored by :func:`save_span`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta.get("extra", "{}"))


def default_weights(kind: str = "dsclora", scale: int = 4) -> Path:
    """Path of a shipped checkpoint: ``kind`` is ``"span"`` (teacher) or ``"dsclora"`` (fine-tuned)."""
    if kind not in ("span", "dsclora"):
        raise ValueError(f"kind must be 'span' or 'dsclora', got {kind!r}")
    path = WEIGHTS_DIR / f"{kind}_x{scale}.safetensors"
    if not path.is_file():
        shipped = sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))
        raise FileNotFoundError(f"no shipped {kind} weights for scale {scale}; shipped: {shipped}")
    return path


def export_span_state_dict(model: SPAN) -> dict[str, torch.Tensor]:
    """The deployed model in the original SPAN key layout (branch keys + ``eval_conv``)."""
    if not is_deployed(model):
        raise ValueError("model must be re-parameterised (span.reparameterize) before export")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, Conv3XC):
            kernel, bias = module.eval_conv.weight.detach().cpu(), module.eval_conv.bias.detach().cpu()
            for key, value in expand_to_conv3xc(kernel, bias, module.gain).items():
                state[f"{name}.{key}"] = value
    return state


def save_span_format(model: SPAN, path: Union[str, Path]) -> Path:
    """Write :func:`export_span_state_dict` as a ``.pth`` (``torch.save``) file, atomically."""
    state = export_span_state_dict(model)
    return _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def export_onnx(model: nn.Module, path: Union[str, Path], example_size: int = 64, opset: int = 17) -> Path:
    """Export a deployed SPAN to ONNX with dynamic batch/height/width (input ``lr``, output ``sr``)."""
    model = model.eval().cpu()
    x = torch.rand(1, 3, example_size, example_size)

    def write(tmp: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["lr"], output_names=["sr"],
                dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"}, "sr": {0: "batch", 2: "height", 3: "width"}},
            )

    return _atomic(Path(path), write)


__all__ += ["checkpoint_extra", "save_span_format"]
