"""Domain plugins and their discovery.

A plugin is any object registered under the entry-point group ``lowrank_vision.plugins``
that resolves to a :class:`PluginSpec`. The built-in plugins are registered in this
project's ``pyproject.toml``; a third-party package adds a domain the same way
(nerfstudio-style entry points), without editing this package.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable, Optional

__all__ = ["PluginSpec", "discover_plugins", "lazy_demo", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "lowrank_vision.plugins"


@dataclass(frozen=True)
class PluginSpec:
    """What a domain plugin tells the umbrella app about itself."""

    name: str
    """Short plugin name, e.g. ``"hemorrhage_seg"``."""
    app: str
    """Console script of the plugin's own app, e.g. ``"lowrank-seg"``."""
    description: str
    """One line shown by ``lowrank plugins``."""
    host: str = ""
    """Host tool the plugin registers into (MONAI, timm, nerfstudio, ...)."""
    demo: Optional[Callable[..., dict]] = field(default=None, compare=False)
    """Optional short run for ``lowrank demo``: ``demo(out_dir: Path, device: str) -> dict``.

    The dict holds the run's numbers (plain JSON values) plus two reserved keys that
    ``demo.md`` shows: ``"figures"``, a list of ``{"path": PNG path, "caption": str}`` (paths
    inside ``out_dir``), and ``"summary"``, one or two markdown sentences saying what was run
    on which data and what the numbers mean."""


def lazy_demo(package: str) -> Callable[..., dict]:
    """``PluginSpec.demo`` that imports ``<package>.commands`` only when the demo runs (plugin imports stay cheap)."""

    def demo(out_dir, device: str = "cpu") -> dict:
        from importlib import import_module
        from pathlib import Path

        return import_module(f"{package}.commands").demo(Path(out_dir), device)

    demo.__doc__ = f"Short run for ``lowrank demo``: :func:`{package}.commands.demo`."
    return demo


def discover_plugins() -> dict[str, PluginSpec]:
    """Load every entry point of the group; a broken or wrong-typed entry warns and is skipped."""
    found: dict[str, PluginSpec] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            spec = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the umbrella app
            warnings.warn(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc}")
            continue
        if callable(spec) and not isinstance(spec, PluginSpec):
            spec = spec()
        if not isinstance(spec, PluginSpec):
            warnings.warn(f"plugin entry point {ep.name!r} resolved to {type(spec).__name__}, expected PluginSpec; skipped")
            continue
        found[ep.name] = spec
    return found
