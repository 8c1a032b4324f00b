"""One error format for every config in the project.

``require(cfg, "rank", cfg.rank >= 1, "an int >= 1")`` raises
``ValueError("AdapterConfig.rank must be an int >= 1, got 0")``: the class, the field, what was
expected and what was given, so a user knows which argument to fix.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["require", "is_int", "is_number", "require_ints"]


def require(obj: Any, name: str, ok: bool, expected: str) -> None:
    """Raise ``ValueError("<Class>.<name> must be <expected>, got <value!r>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{type(obj).__name__}.{name} must be {expected}, got {getattr(obj, name)!r}")


def is_int(value: Any, minimum: Optional[int] = None) -> bool:
    """A real int (``bool`` excluded), at least ``minimum`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_number(value: Any) -> bool:
    """A real int or float (``bool`` excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_ints(obj: Any, *names: str, minimum: int = 1, expected: Optional[str] = None) -> None:
    """:func:`require` that each named field is an int (not a bool) >= ``minimum``; ``expected`` defaults to
    ``"an int >= <minimum>"``."""
    for name in names:
        require(obj, name, is_int(getattr(obj, name), minimum), expected or f"an int >= {minimum}")
