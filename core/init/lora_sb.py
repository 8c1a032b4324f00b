"""LoRA-XS adapter (``lora_xs``: ``dW = s B R A``, ``B`` and ``A`` frozen, ``R`` r x r trained) and LoRA-SB initialisation.

Bałazy et al., "LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters" (the form);
LoRA-SB (``core.functional.lora_init``) initialises it from the approximated first full fine-tuning
update ``-step_size * G``. ``apply(model, "lora", rank=r, init="lora_sb", init_data=..., init_loss=...)``
builds ``lora_xs`` adapters. ``A`` and ``B`` are parameters (so ``save``/``load`` keep them) of the type
:class:`FrozenParameter`, whose ``requires_grad`` stays ``False`` whatever ``apply``/``set_active`` ask, and
the forward uses them detached: they never receive a gradient and are not counted as trainable.
Without an initialiser (``apply(model, "lora_xs", ...)``), ``B``/``A`` are the top-r singular vectors of
the base weight and ``R = 0`` (LoRA-XS's own start, output unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ..adapters.base import AdapterConfig
from ..adapters.lora import LoRA, LoRADelta
from ..adapters.registry import register_adapter
from ..functional.layout import LayerGeometry, weight_to_logical
from ..functional.lora_init import lora_sb_factors
from ..inject import adapter_layers
from ..validate import is_number, require
from .gradients import estimate_weight_gradients

__all__ = ["FrozenParameter", "LoRAXSDelta", "LoRAXS", "LoRASBInit"]


class FrozenParameter(nn.Parameter):
    """A parameter that is saved and loaded like any other but never trains: ``requires_grad_`` is a no-op."""

    def __new__(cls, data: Tensor, requires_grad: bool = False):
        return super().__new__(cls, data, requires_grad=False)

    def requires_grad_(self, requires_grad: bool = True) -> "FrozenParameter":
        return self


class LoRAXSDelta(LoRADelta):
    """``dW = s B R A``: ``A [r, C_in*prod(k)]`` and ``B [C_out, r]`` frozen (used detached), ``R [r, r]`` trained."""

    param_names = ("lora_A", "lora_B", "lora_R")

    def __init__(self, geometry: LayerGeometry, rank: int, options: Any = None, *, layer_name: str = "", dtype=None, device=None):
        super().__init__(geometry, rank, options, layer_name=layer_name, dtype=dtype, device=device)
        self.lora_A = FrozenParameter(self.lora_A.detach())
        self.lora_B = FrozenParameter(self.lora_B.detach())
        self.lora_R = nn.Parameter(torch.zeros(rank, rank, dtype=dtype, device=device))

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        """Trainable parameters: ``r * r`` (the frozen ``A`` and ``B`` add ``r (C_out + C_in prod(k))`` stored values)."""
        return rank * rank

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.lora_R @ self.lora_A, self.lora_B


@register_adapter("lora_xs")
class LoRAXS(LoRA):
    """LoRA-XS: frozen singular-vector factors around a trained r x r matrix."""

    delta_cls = LoRAXSDelta

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, *, options: Any = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        with torch.no_grad():
            matrix = weight_to_logical(self.base_weight().detach(), self.geometry).reshape(self.geometry.out_channels, -1)
            lora_a, lora_b, _ = lora_sb_factors(matrix.float(), self.rank, 1.0)
            self.delta.lora_A.copy_(lora_a)
            self.delta.lora_B.copy_(lora_b)


@dataclass(frozen=True)
class LoRASBInit:
    """LoRA-SB; ``step_size`` is eta of the approximated first update ``-eta * G`` (choose it on validation data)."""

    step_size: float = 1e-3
    """Learning rate of the simulated first full fine-tuning step whose rank-r approximation becomes ``s B R A``."""

    name = "lora_sb"

    def __post_init__(self) -> None:
        require(self, "step_size", is_number(self.step_size) and self.step_size > 0, "a positive number")

    def adapter_method(self, method: str) -> str:
        if method not in ("lora", "lora_c", "lora_xs"):
            raise ValueError(f"init='lora_sb' builds LoRA-XS adapters and needs method 'lora' or 'lora_xs', got {method!r}")
        return "lora_xs"

    def initialise(self, model: nn.Module, adapter_name: str, data: Iterable[Any], loss_fn: Callable[[nn.Module, Any], Tensor]) -> None:
        adapters = [a for a in adapter_layers(model, adapter_name, unique=True).values() if isinstance(a.delta, LoRAXSDelta)]
        grads = estimate_weight_gradients(model, adapters, data, loss_fn)
        factors = [lora_sb_factors(-self.step_size * grad, adapter.rank, adapter.scale) for adapter, grad in zip(adapters, grads)]
        with torch.no_grad():
            for adapter, (lora_a, lora_b, lora_r) in zip(adapters, factors):
                adapter.delta.lora_A.copy_(lora_a)
                adapter.delta.lora_B.copy_(lora_b)
                adapter.delta.lora_R.copy_(lora_r)
