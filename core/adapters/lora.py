"""LoRA / LoRA-C adapter (``lora``, alias ``lora_c``); math in ``core.functional.lora``."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn

from ..functional import lora as F_lora
from ..functional.fused import lora_fused_forward
from ..functional.layout import LayerGeometry
from .base import DeltaAdapter, LowRankDelta
from .registry import register_adapter

__all__ = ["LoRADelta", "LoRA"]


class LoRADelta(LowRankDelta):
    """``dW = scale * B @ A``; ``A: [r, C_in*prod(k)]``, ``B: [C_out, r]``."""

    param_names = ("lora_A", "lora_B")

    def __init__(self, geometry: LayerGeometry, rank: int, options: Any = None, *, layer_name: str = "", dtype=None, device=None):
        super().__init__(geometry, rank)
        lora_a, lora_b = F_lora.init_lora_factors(geometry, rank, dtype=dtype, device=device)
        self.lora_A = nn.Parameter(lora_a)
        self.lora_B = nn.Parameter(lora_b)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return F_lora.lora_param_count(geometry, rank)

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.lora_A, self.lora_B

    def logical_delta(self, scale: float) -> Tensor:
        lora_a, lora_b = self.factors()
        return F_lora.lora_delta(lora_a, lora_b, self.geometry, scale)

    def bypass(self, layer: nn.Module, x: Tensor, scale: float, **kwargs) -> Optional[Tensor]:
        if not F_lora.lora_bypass_supported(self.geometry):
            return None
        lora_a, lora_b = self.factors()
        return F_lora.lora_bypass(layer, x, lora_a, lora_b, self.geometry, scale, **kwargs)

    def has_thin_path(self) -> bool:
        return F_lora.lora_bypass_supported(self.geometry)

    def fused_forward(self, layer: nn.Module, x: Tensor, scale: float, bias: Optional[Tensor], **kwargs) -> Optional[Tensor]:
        lora_a, lora_b = self.factors()
        return lora_fused_forward(layer, x, lora_a, lora_b, self.geometry, scale, bias, kwargs.get("output_size"))

    def add_to_weight(self, weight: Tensor, scale: float) -> Tensor:
        """One addmm on ``W`` viewed as ``[C_out, C_in*prod(k)]`` (Linear and convolutions), outside autocast
        (``core.functional.lora.lora_add_to_weight``)."""
        lora_a, lora_b = self.factors()
        return F_lora.lora_add_to_weight(weight, lora_a, lora_b, scale=scale, geometry=self.geometry)

    def weight_build(self) -> tuple[Callable[..., Tensor], tuple[Tensor, ...], dict[str, Any]]:
        """The product and merge as one pure function; the factors (``factors()``, which subclasses
        override) are formed outside it."""
        return F_lora.lora_add_to_weight, self.factors(), {"geometry": self.geometry}


@register_adapter("lora", aliases=("lora_c",))
class LoRA(DeltaAdapter):
    """LoRA (Hu et al., arXiv 2106.09685); on convolutions the layer-wise LoRA-C form."""

    delta_cls = LoRADelta
