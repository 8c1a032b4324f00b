"""Weights of the SR plugin: deployed SPAN checkpoints, SPAN-format export, ONNX, shipped defaults, card.

* ``.safetensors`` checkpoints hold the *deployed* state dict (``*.eval_conv.*`` keys, one 3x3 conv
  per Conv3XC, as the NTIRE-2025 DSCF checkpoint) and the :class:`SPANConfig` in the metadata.
* :func:`export_span_state_dict` writes the original SPAN layout (``sk`` / ``conv.0-2`` branch keys
  plus ``eval_conv``) whose re-parameterisation gives back exactly the deployed kernels, so loaders
  that recompute ``eval_conv`` from the branches (SPAN's own code, spandrel) get the same network.
* The shipped checkpoints under ``weights/`` are made by ``bench/sr_dsclora.py --ship`` (a GPU run);
  every checkpoint stores the command, the data and its scores in its metadata, and
  :func:`render_card` writes ``weights/README.md`` from that metadata (:func:`write_card`), so no
  number on the card is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from lowrank_vision.core import adapter_layers
from lowrank_vision.core.files import atomic_path, write_text

from .config import SPANConfig
from .functional import expand_to_conv3xc
from .model import SPAN, Conv3XC, is_deployed, reparameterize

__all__ = [
    "WEIGHTS_DIR",
    "KINDS",
    "save_span",
    "load_span",
    "checkpoint_extra",
    "default_weights",
    "export_span_state_dict",
    "save_span_format",
    "export_onnx",
    "render_card",
    "write_card",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
KINDS = ("span", "dsclora")
"""Shipped checkpoint kinds: the SPAN teacher and its DSCLoRA fine-tune (merged)."""


def save_span(model: SPAN, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Save a deployed SPAN (re-parameterised, no adapters) as safetensors with its config."""
    from safetensors.torch import save_file

    if not isinstance(model, SPAN):
        raise TypeError(f"model must be a SPAN, got {type(model).__name__}")
    if adapter_layers(model):
        raise ValueError("model still carries adapters; fold them first (distill.fold_dsclora)")
    if not is_deployed(model):
        raise ValueError("model must be re-parameterised (model.reparameterize) before saving")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "lowrank_vision.span.deployed", "config": json.dumps(model.config.to_dict())}
    if extra:
        meta["extra"] = json.dumps(extra)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


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
    if kind not in KINDS:
        raise ValueError(f"kind must be 'span' or 'dsclora', got {kind!r}")
    path = WEIGHTS_DIR / f"{kind}_x{scale}.safetensors"
    if not path.is_file():
        shipped = sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))
        raise FileNotFoundError(f"no shipped {kind} weights for scale {scale}; shipped: {shipped}")
    return path


def export_span_state_dict(model: SPAN) -> dict[str, torch.Tensor]:
    """The deployed model in the original SPAN key layout (branch keys + ``eval_conv``)."""
    if not is_deployed(model):
        raise ValueError("model must be re-parameterised (model.reparameterize) before export")
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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def export_onnx(model: nn.Module, path: Union[str, Path], example_size: int = 64, opset: int = 17) -> Path:
    """Export a deployed SPAN to ONNX with dynamic batch/height/width (input ``lr``, output ``sr``)."""
    model = model.eval().cpu()
    x = torch.rand(1, 3, example_size, example_size)
    import warnings

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["lr"], output_names=["sr"],
            dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"}, "sr": {0: "batch", 2: "height", 3: "width"}},
        )
    return Path(path)


_OLD_BENCH = "python -m lowrank_vision.plugins.sr_dsclora.scripts.benchmark"


def render_card(weights_dir: Union[str, Path] = WEIGHTS_DIR) -> str:
    """``weights/README.md`` from the metadata the producing command stored in each checkpoint."""
    from lowrank_vision.core import count_parameters

    weights_dir = Path(weights_dir)
    files = sorted(weights_dir.glob("*.safetensors"), key=lambda p: (p.stem.split("_x")[-1], p.name))
    if not files:
        raise FileNotFoundError(f"no .safetensors checkpoints in {weights_dir}")
    rows, commands, data = [], [], {}
    for path in files:
        extra, model = checkpoint_extra(path), load_span(path)
        teacher, real = extra.get("teacher_psnr"), extra.get("realphoto_eval_psnr")
        real = "-" if real is None else f"{real:.3f} ({extra['realphoto_gain_over_bicubic']:+.2f})"
        rows.append(
            f"| `{path.name}` | x{model.scale} | {count_parameters(model)[1]:,} | {extra.get('steps', '?'):,} | "
            f"{extra.get('eval_psnr', float('nan')):.3f} | {extra.get('eval_ssim', float('nan')):.4f} | "
            f"{'-' if teacher is None else f'{teacher:.3f}'} | {real} | {extra.get('machine', '?')} |"
        )
        commands.append(f"- `{path.name}`: `{extra.get('command', '?')}`")
        data.setdefault(extra.get("data", "?"), []).append(f"`{path.name}`")
    lines = [
        "# Shipped SR weights",
        "",
        "<!-- Written by lowrank_vision.plugins.sr_dsclora.weights.write_card from the metadata that the producing",
        "     command stored in each checkpoint (checkpoint_extra(path)); do not edit by hand. -->",
        "",
        "*Deployed* SPAN checkpoints (safetensors): one 3x3 `eval_conv` per re-parameterisable conv, the",
        "`SPANConfig`, the producing command, the training data and the evaluation scores in the metadata.",
        "`span_*` is the SPAN teacher (trained in SPAN's re-parameterisable form, L1 and, where it scored better",
        "on the validation photos, an L2 fine stage; then folded); `dsclora_*` is that SPAN fine-tuned with DSCLoRA",
        "(ConvLoRA + spatial-affinity distillation) and merged, so it has exactly SPAN's tensors. Scores: Y-PSNR /",
        "Y-SSIM (border = scale) on the bundled *eval* photos (skimage astronaut, chelsea, coffee; sklearn china,",
        "flower), which no checkpoint was trained on; *real-photo eval*: the `lowrank-sr make-data` eval/ set (Debian",
        "wallpaper photographs plus those five; other sources and files than training), with the gain over bicubic.",
        "",
        "| file | scale | params | steps | eval Y-PSNR (dB) | eval Y-SSIM | teacher Y-PSNR (dB) | real-photo eval Y-PSNR (dB) | machine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "Commands, as recorded in each file:",
        "",
        *commands,
        "",
        "Training data:",
        "",
        *(f"- {', '.join(files)}: {d}." for d, files in sorted(data.items())),
    ]
    if any(_OLD_BENCH in c for c in commands):
        lines += ["", f"`{_OLD_BENCH}` is the earlier location of `bench/sr_dsclora.py` (same arguments:",
                  "`python bench/sr_dsclora.py ... --ship` writes new checkpoints here and rewrites this card)."]
    return "\n".join(lines) + "\n"


def write_card(weights_dir: Union[str, Path] = WEIGHTS_DIR) -> Path:
    """Write :func:`render_card` to ``weights_dir/README.md`` (atomically)."""
    return write_text(Path(weights_dir) / "README.md", render_card(weights_dir))
