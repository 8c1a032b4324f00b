"""Gradient-informed adapter initialisation, reached through ``apply(..., init=...)``.

``init`` is a registered name (``"lora_ga"``, ``"lora_sb"``) or an initialiser object (e.g.
``LoRAGAInit(gamma=8)``, ``LoRASBInit(step_size=1e-2)``): anything with ``adapter_method(method) -> str``
(the family ``apply`` builds) and ``initialise(model, adapter_name, init_data, init_loss)``.
Importing this package registers the ``lora_xs`` family (LoRA-SB's adapter form).
"""

from __future__ import annotations

from typing import Any, Callable, Union

from .gradients import estimate_weight_gradients
from .lora_ga import LoRAGAInit
from .lora_sb import FrozenParameter, LoRASBInit, LoRAXS, LoRAXSDelta

__all__ = [
    "INITIALISERS", "register_initialiser", "get_initialiser", "check_init_arguments",
    "LoRAGAInit", "LoRASBInit", "LoRAXS", "LoRAXSDelta", "FrozenParameter", "estimate_weight_gradients",
]

INITIALISERS: dict[str, Callable[[], Any]] = {"lora_ga": LoRAGAInit, "lora_sb": LoRASBInit}


def register_initialiser(name: str, factory: Callable[[], Any]) -> None:
    """Add ``init=name`` (``factory()`` returns the initialiser object)."""
    INITIALISERS[name] = factory


def get_initialiser(init: Union[str, Any]) -> Any:
    """The initialiser for ``init`` (a registered name or an object with ``adapter_method`` and ``initialise``)."""
    if isinstance(init, str):
        if init not in INITIALISERS:
            raise ValueError(f"init must be one of {sorted(INITIALISERS)} or an initialiser object, got {init!r}")
        return INITIALISERS[init]()
    if not (callable(getattr(init, "adapter_method", None)) and callable(getattr(init, "initialise", None))):
        raise ValueError(f"init must be one of {sorted(INITIALISERS)} or an object with adapter_method() and initialise(), got {init!r}")
    return init


def check_init_arguments(init: Any, init_data: Any, init_loss: Any) -> None:
    """``init_data`` (an iterable of batches) and ``init_loss`` (``FN(model, batch) -> loss``) are required together with ``init``."""
    if init_data is None or not hasattr(init_data, "__iter__"):
        raise ValueError(f"init={init!r} needs init_data, an iterable of batches, got {init_data!r}")
    if not callable(init_loss):
        raise ValueError(f"init={init!r} needs init_loss, a function (model, batch) -> scalar loss, got {init_loss!r}")
