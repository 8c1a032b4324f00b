"""hsi_specvit: LoLA-SpecViT hyperspectral classification (arXiv 2506.17759) with LoRA from the core.

Importing this package is cheap (no torch, timm or rasterio) and registers the timm models
``lola_specvit_tiny|small|base``: at once when timm is already imported, otherwise right after
timm's own import finishes, so ``import lowrank_vision.plugins.hsi_specvit`` then
``timm.create_model("lola_specvit_tiny")`` works, and a missing timm costs nothing.

Layout: :mod:`.config` (dataclasses), :mod:`.model` (networks), :mod:`.recipes` (train / eval on
``core.train.fit``), :mod:`.commands` (the ``lowrank-hsi`` subcommands and ``demo``),
:mod:`.weights` (bundles, shipped weights and their card), :mod:`.metrics`, :mod:`.schedule`
(cyclical LoRA scale), :mod:`.timm_models` (timm host file). The app is :mod:`lowrank_vision.apps.hsi`.
"""

from __future__ import annotations

from lowrank_vision.plugins import PluginSpec, lazy_demo
from lowrank_vision.plugins._on_import import on_import

__all__ = ["PLUGIN"]


PLUGIN = PluginSpec(
    name="hsi_specvit",
    app="lowrank-hsi",
    description="LoLA-SpecViT hyperspectral classification with LoRA; .mat/ENVI/GeoTIFF readers, leak-free splits, SVM/RF baselines",
    host="timm (register_model), rasterio",
    demo=lazy_demo(__name__),
)


def _register_with_timm() -> None:
    from . import timm_models  # noqa: F401  (runs timm's @register_model)


on_import("timm", _register_with_timm)
