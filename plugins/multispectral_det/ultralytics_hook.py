"""Register this plugin's modules with ultralytics when (and only when) ultralytics is imported.

ultralytics has no plugin hook: ``parse_model`` looks YAML module names up in the globals of
``ultralytics.nn.tasks``. :func:`install_registration_hook` adds a finder to ``sys.meta_path`` that
wraps the loader of ``ultralytics.nn.tasks`` so that :func:`register_ultralytics` runs right after
that module executes; if it is already imported, registration happens at once. Importing the
plugin therefore never pays for importing ultralytics.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__all__ = ["install_registration_hook"]

_TASKS = "ultralytics.nn.tasks"


def _register() -> None:
    from .ultralytics_host import register_ultralytics

    register_ultralytics()


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register()


class _TasksFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TASKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install_registration_hook() -> None:
    """Register now if ultralytics' tasks module is loaded, else once it gets imported (no-op without ultralytics)."""
    if _TASKS in sys.modules:
        _register()
        return
    if any(isinstance(f, _TasksFinder) for f in sys.meta_path):
        return
    if importlib.util.find_spec("ultralytics") is not None:
        sys.meta_path.insert(0, _TasksFinder())
