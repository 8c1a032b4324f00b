"""Open registry of adapter families: a decorator with string keys, no closed enum.

A third-party package adds a family with ``@register_adapter("my_method")`` on an
:class:`~lowrank_vision.core.adapters.base.AdapterLayer` subclass; nothing in core changes.
"""

from __future__ import annotations

import warnings
from typing import Callable, TypeVar

from .base import AdapterLayer

__all__ = ["register_adapter", "get_adapter_class", "list_adapters", "canonical_name"]

_REGISTRY: dict[str, type[AdapterLayer]] = {}
_ALIASES: dict[str, str] = {}

T = TypeVar("T", bound=type[AdapterLayer])


def register_adapter(name: str, *, aliases: tuple[str, ...] = (), strict: bool = False) -> Callable[[T], T]:
    """Class decorator registering an adapter family under ``name`` (and ``aliases``)."""

    def decorator(cls: T) -> T:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                message = f"adapter name {key!r} is already registered; overwriting it with {cls.__name__}"
                if strict:
                    raise KeyError(message)
                warnings.warn(message)
        cls.method = name
        _REGISTRY[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return decorator


def canonical_name(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        known = ", ".join(list_adapters(include_aliases=True))
        raise KeyError(f"unknown adapter method {name!r}; known methods: {known}")
    return key


def get_adapter_class(name: str) -> type[AdapterLayer]:
    """The class registered under ``name`` or an alias; ``KeyError`` lists the known names."""
    return _REGISTRY[canonical_name(name)]


def list_adapters(include_aliases: bool = False) -> list[str]:
    names = list(_REGISTRY)
    if include_aliases:
        names += [f"{alias} (= {target})" for alias, target in _ALIASES.items()]
    return sorted(names)
