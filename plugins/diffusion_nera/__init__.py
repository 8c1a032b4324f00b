"""diffusion_nera: NeRA in its KAN form (arXiv 2411.13901, FLORA paper), LoRA and DoRA on diffusers pipelines.

Importing this package is cheap (no diffusers). :mod:`.model` builds a small Stable-Diffusion
pipeline (UNet) or a small Stable-Diffusion-3 pipeline (DiT: ``SD3Transformer2DModel``) from
configs; :mod:`.recipes` pre-trains the UNet pipeline on procedural captioned scenes and fine-tunes
the attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) of the UNet or the transformer
with core adapters; :mod:`.diffusers_io` writes LoRA/DoRA for a stock ``pipe.load_lora_weights`` and
saves/loads NeRA (``load_nera``); the app is ``lowrank-diffusion`` (:mod:`lowrank_vision.apps.diffusion`).
"""

from __future__ import annotations

from lowrank_vision.plugins import PluginSpec, lazy_demo

__all__ = ["PLUGIN", "export_diffusers", "load_nera", "save_nera", "unload_nera"]


def __getattr__(name: str):
    if name in ("export_diffusers", "load_nera", "save_nera", "unload_nera"):
        from . import diffusers_io

        return getattr(diffusers_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PLUGIN = PluginSpec(
    name="diffusion_nera",
    app="lowrank-diffusion",
    description="NeRA (KAN form), LoRA and DoRA fine-tuning of diffusers pipelines; LoRA/DoRA load with pipe.load_lora_weights",
    host="diffusers (load_lora_weights layout; load_nera for NeRA)",
    demo=lazy_demo(__name__),
)
