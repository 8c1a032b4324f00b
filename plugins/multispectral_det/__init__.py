"""multispectral_det: DLRMamba (arXiv 2603.06920) -- low-rank SS2D backbone + structure-aware distillation
for RGB+IR detection, built as ultralytics modules.

Importing this package is cheap: it does not import ultralytics. If ultralytics is importable it
installs an import hook, so that the moment ``ultralytics.nn.tasks`` is imported (or at once, if it
already is) :func:`.ultralytics_host.register_ultralytics` puts this plugin's modules into the
namespace ultralytics' ``parse_model`` resolves YAML names in; then
``YOLO(model_yaml("dlrmamba-n"))`` builds the detector. The app is ``lowrank-detect``.
"""

from __future__ import annotations

from pathlib import Path

from lowrank_vision.plugins import PluginSpec, lazy_demo
from lowrank_vision.plugins._on_import import on_import

__all__ = ["PLUGIN", "model_yaml"]


def model_yaml(name: str = "dlrmamba-n") -> str:
    """Path of a shipped model YAML (``dlrmamba-n``: full-rank teacher; ``dlrmamba-n-lr50``: rank ratio 0.5)."""
    path = Path(__file__).parent / "cfg" / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"model_yaml: name must be one of {shipped}, got {name!r}")
    return str(path)


def _register_with_ultralytics() -> None:
    from .ultralytics_host import register_ultralytics

    register_ultralytics()


# ultralytics has no plugin hook: parse_model looks YAML module names up in ultralytics.nn.tasks' globals
on_import("ultralytics.nn.tasks", _register_with_ultralytics)


PLUGIN = PluginSpec(
    name="multispectral_det",
    app="lowrank-detect",
    description="DLRMamba RGB+IR detection: low-rank SS2D backbone + structure-aware distillation, in ultralytics",
    host="ultralytics (model YAML modules, multispectral data YAML)",
    demo=lazy_demo(__name__),
)
