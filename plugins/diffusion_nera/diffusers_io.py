"""diffusers host files: LoRA/DoRA in the diffusers layout, NeRA with a loader of ours.

The adapted component is the pipeline's denoiser: ``pipe.transformer`` where the pipeline has one
(DiT pipelines such as ``StableDiffusion3Pipeline``), else ``pipe.unet``.

- :func:`export_diffusers` writes its LoRA-shaped adapter (lora, dora) the way a stock
  ``pipe.save_lora_weights`` does (``pytorch_lora_weights.safetensors``, keys
  ``unet.<module>.lora_A.weight`` (or ``transformer.``) / ``lora_B.weight`` / ``lora_magnitude_vector``, the PEFT
  ``LoraConfig`` in the ``lora_adapter_metadata`` header), so ``pipe.load_lora_weights(dir)``,
  ``set_adapters``, ``fuse_lora`` and ``unfuse_lora`` of an unmodified pipeline work on it. The
  tensors come from the core's :func:`~lowrank_vision.core.export_peft` (PEFT layout), renamed.
- NeRA is not LoRA-shaped (``load_lora_weights`` would reject its keys): :func:`save_nera` writes
  the core's safetensors + JSON config under ``<dir>/unet`` (or ``transformer``); :func:`load_nera` puts it onto a
  stock pipeline's denoiser (same feel as ``load_lora_weights``); :func:`unload_nera` takes it off.
  ``fuse_nera`` does not exist because NeRA is nonlinear in the input: there is no weight to fuse.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lowrank_vision.core import adapter_layers, export_peft, load, remove, save
from lowrank_vision.core.files import atomic_dir, write_json

__all__ = ["export_diffusers", "save_nera", "load_nera", "unload_nera", "denoiser", "LORA_WEIGHTS_NAME", "NERA_CONFIG_NAME"]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
NERA_CONFIG_NAME = "nera_pipeline.json"
PEFT_PREFIX = "base_model.model."
LORA_CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "rank_pattern", "alpha_pattern", "use_dora", "use_rslora", "bias", "init_lora_weights")


def denoiser(pipe) -> tuple[str, object]:
    """``(component name, module)`` of the pipeline's denoiser: ``transformer`` if it has one, else ``unet``."""
    for name in ("transformer", "unet"):
        if getattr(pipe, name, None) is not None:
            return name, getattr(pipe, name)
    raise ValueError(f"{type(pipe).__name__} has neither a transformer nor a unet")


def export_diffusers(pipe, out_dir: str | Path, adapter_name: str = "default") -> Path:
    """Write the denoiser's ``adapter_name`` (lora or dora) in the diffusers LoRA layout; returns ``out_dir``."""
    from safetensors.torch import load_file

    component, module = denoiser(pipe)
    layers = adapter_layers(module, adapter_name)
    if not layers:
        raise ValueError(f"pipe.{component} has no adapter named {adapter_name!r} to export")
    methods = {a.method for a in layers.values()}
    if not methods <= {"lora", "dora"}:
        raise ValueError(f"export --format diffusers needs a LoRA-shaped adapter (lora, dora), got {sorted(methods)}; "
                         "save NeRA with save_nera and load it with load_nera")
    with tempfile.TemporaryDirectory() as tmp:
        export_peft(module, tmp, adapter_name)
        tensors = load_file(str(Path(tmp) / "adapter_model.safetensors"))
        peft_config = json.loads((Path(tmp) / "adapter_config.json").read_text())
    state = {key[len(PEFT_PREFIX):]: value.contiguous() for key, value in tensors.items()}
    metadata = {key: peft_config[key] for key in LORA_CONFIG_KEYS if key in peft_config}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        type(pipe).save_lora_weights(tmp, **{f"{component}_lora_layers": state, f"{component}_lora_adapter_metadata": metadata},
                                     safe_serialization=True)
    return out_dir


def save_nera(pipe, out_dir: str | Path, adapter_name: str = "default") -> Path:
    """Write the denoiser's NeRA adapter: ``<out_dir>/<unet|transformer>/`` (core safetensors + JSON) and ``nera_pipeline.json``."""
    component, module = denoiser(pipe)
    layers = adapter_layers(module, adapter_name)
    if not layers:
        raise ValueError(f"pipe.{component} has no adapter named {adapter_name!r} to save")
    first = next(iter(layers.values()))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save(module, tmp / component, adapter_name)
        write_json(tmp / NERA_CONFIG_NAME, {"format": "lowrank-vision-nera-pipeline", "components": [component],
                                            "method": first.method, "rank": first.rank, "adapter_name": adapter_name,
                                            "layers": len(layers)})
    return out_dir


def load_nera(pipe, directory: str | Path, adapter_name: str | None = None):
    """Put a NeRA adapter saved by :func:`save_nera` onto the denoiser of ``pipe`` (a stock pipeline); returns ``pipe``."""
    directory = Path(directory)
    if not (directory / NERA_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds no NeRA adapter ({NERA_CONFIG_NAME} missing); LoRA/DoRA folders load with pipe.load_lora_weights")
    component, module = denoiser(pipe)
    saved = json.loads((directory / NERA_CONFIG_NAME).read_text()).get("components", ["unet"])
    if component not in saved:
        raise ValueError(f"{directory} holds a NeRA adapter for pipe.{saved[0]}, but this {type(pipe).__name__} has a {component}")
    load(module, directory / component, adapter_name)
    return pipe


def unload_nera(pipe, adapter_name: str | None = None) -> int:
    """Take NeRA adapters off the denoiser of ``pipe`` (the base layers come back unchanged); returns how many."""
    return remove(denoiser(pipe)[1], adapter_name)
