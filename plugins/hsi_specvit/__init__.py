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

import sys
import warnings
from importlib.abc import MetaPathFinder
from pathlib import Path

from lowrank_vision.plugins import PluginSpec

__all__ = ["PLUGIN", "demo"]


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """``lowrank demo``: the shipped weights on the synthetic default (see :func:`.commands.demo`)."""
    from .commands import demo as run

    return run(Path(out_dir), device)


PLUGIN = PluginSpec(
    name="hsi_specvit",
    app="lowrank-hsi",
    description="LoLA-SpecViT hyperspectral classification with LoRA; .mat/ENVI/GeoTIFF readers, leak-free block splits",
    host="timm (register_model), rasterio",
    demo=demo,
)


def _register_with_timm() -> None:
    try:
        from . import timm_models  # noqa: F401  (runs timm's @register_model)
    except Exception as exc:  # never break the user's `import timm`
        warnings.warn(f"hsi_specvit: timm registration failed ({exc!r})", RuntimeWarning, stacklevel=2)


class _LoaderThen:
    """Wraps a module loader: executes the module, then calls ``after``."""

    def __init__(self, loader, after) -> None:
        self._loader, self._after = loader, after

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._after()


class _WhenImported(MetaPathFinder):
    """Calls ``after`` once the top-level module ``name`` has been imported (then leaves ``sys.meta_path``)."""

    def __init__(self, name: str, after) -> None:
        self.name, self.after = name, after

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in [f for f in sys.meta_path if f is not self]:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None  # not installed: the import fails as usual, and we keep waiting
        sys.meta_path.remove(self)
        if spec.loader is not None:
            spec.loader = _LoaderThen(spec.loader, self.after)
        return spec


if sys.modules.get("timm") is not None:
    _register_with_timm()
elif "timm" not in sys.modules and not any(isinstance(f, _WhenImported) and f.name == "timm" for f in sys.meta_path):
    sys.meta_path.insert(0, _WhenImported("timm", _register_with_timm))
