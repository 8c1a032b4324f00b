"""Run a callback once a top-level module has been imported, without importing it.

Used by the plugins' ``__init__`` to register with their hosts (timm models, ultralytics
modules) when, and only when, the host is imported: a finder placed first on ``sys.meta_path`` waits for the module's name, lets the
normal finders locate it, and wraps its loader so that the callback runs right after the
module's own code. A missing module costs one string comparison per import.
"""

from __future__ import annotations

import sys
import warnings
from importlib.abc import MetaPathFinder
from typing import Callable

__all__ = ["on_import"]


class _LoaderThen:
    """A module loader that executes the module, then calls ``after``."""

    def __init__(self, loader, after: Callable[[], None]) -> None:
        self._loader, self._after = loader, after

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._after()


class _WhenImported(MetaPathFinder):
    """Wraps the loader of module ``name`` the first time it is imported, then leaves ``sys.meta_path``."""

    def __init__(self, name: str, after: Callable[[], None]) -> None:
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


def _guarded(name: str, hook: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            hook()
        except Exception as exc:  # never break the user's own import of the host
            warnings.warn(f"registration with {name} failed ({exc!r})", RuntimeWarning, stacklevel=2)

    return run


def on_import(name: str, hook: Callable[[], None]) -> None:
    """Call ``hook()`` now if module ``name`` is imported, else right after its first import (once)."""
    if sys.modules.get(name) is not None:
        _guarded(name, hook)()
    elif name not in sys.modules:  # sys.modules[name] = None means "blocked": nothing to wait for
        sys.meta_path.insert(0, _WhenImported(name, _guarded(name, hook)))
