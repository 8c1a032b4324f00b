"""LoRA-GA initialisation (``apply(model, "lora", rank=r, init="lora_ga", init_data=..., init_loss=...)``).

Math in ``core.functional.lora_init``. The factors come from the SVD of the full-weight gradient
estimated on ``init_data``; the initial product ``s B A`` is subtracted from the base weight, so the
adapted model's output equals the original model's. Note that the base weight is changed: ``remove()``
afterwards gives back ``W - s B0 A0`` (plus whatever was merged), as in the paper's method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ..adapters.lora import LoRADelta
from ..functional.layout import logical_to_weight
from ..functional.lora_init import lora_ga_factors
from ..inject import adapter_layers
from ..validate import is_number, require
from .gradients import estimate_weight_gradients

__all__ = ["LoRAGAInit"]


@dataclass(frozen=True)
class LoRAGAInit:
    """LoRA-GA; ``gamma`` is the paper's stable-scale hyperparameter (factors scaled by ``m^(1/4)/sqrt(gamma)``)."""

    gamma: float = 16.0
    """Stable-scale divisor: both factors are multiplied by ``C_out^(1/4) / sqrt(gamma)``."""

    name = "lora_ga"

    def __post_init__(self) -> None:
        require(self, "gamma", is_number(self.gamma) and self.gamma > 0, "a positive number")

    def adapter_method(self, method: str) -> str:
        if method not in ("lora", "lora_c"):
            raise ValueError(f"init='lora_ga' initialises LoRA factors and needs method 'lora', got {method!r}")
        return method

    def initialise(self, model: nn.Module, adapter_name: str, data: Iterable[Any], loss_fn: Callable[[nn.Module, Any], Tensor]) -> None:
        adapters = [a for a in adapter_layers(model, adapter_name, unique=True).values() if type(a.delta) is LoRADelta]
        grads = estimate_weight_gradients(model, adapters, data, loss_fn)
        with torch.no_grad():
            for adapter, grad in zip(adapters, grads):  # everything computed above; only writes below
                lora_a, lora_b = lora_ga_factors(grad, adapter.rank, gamma=self.gamma)
                delta = adapter.delta
                delta.lora_A.copy_(lora_a)
                delta.lora_B.copy_(lora_b)
                product = (lora_b @ lora_a).mul_(adapter.scale).reshape(adapter.geometry.logical_shape)
                root = adapter.root
                root.weight.sub_(logical_to_weight(product, adapter.geometry).to(root.weight.dtype))
