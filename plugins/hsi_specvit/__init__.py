"""hsi_specvit: LoLA-SpecViT hyperspectral classification (arXiv 2506.17759) with LoRA from the core.

Importing this package is cheap (no timm, no rasterio). ``import
lowrank_vision.plugins.hsi_specvit.model`` registers the timm variants
(``lola_specvit_tiny|small|base``); :mod:`.recipes` trains / fine-tunes / evaluates;
the app is ``lowrank-hsi`` (:mod:`lowrank_vision.apps.hsi`).
"""

from __future__ import annotations

from pathlib import Path

from lowrank_vision.plugins import PluginSpec

__all__ = ["PLUGIN", "demo"]


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """Short run for ``lowrank demo``: predict the synthetic default with the shipped weights and score it."""
    from .app_runs import run_demo

    return run_demo(Path(out_dir), device)


PLUGIN = PluginSpec(
    name="hsi_specvit",
    app="lowrank-hsi",
    description="LoLA-SpecViT hyperspectral classification with LoRA; .mat/ENVI/GeoTIFF readers, leak-free block splits",
    host="timm (register_model), rasterio",
    demo=demo,
)
