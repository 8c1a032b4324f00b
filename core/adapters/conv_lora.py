"""convLoRA adapter (``conv_lora``): loralib's ConvLoRA form for 1-D/2-D/3-D kernels."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn

from ..functional import conv_lora as F_conv_lora
from ..functional.layout import LayerGeometry
from .base import DeltaAdapter, LowRankDelta
from .registry import register_adapter

__all__ = ["ConvLoRADelta", "ConvLoRA"]


class ConvLoRADelta(LowRankDelta):
    """``A: [r*k, C_in*k]``, ``B: [C_out*k^(d-1), r*k]``, ``dW = scale * reshape(B @ A)``."""

    param_names = ("lora_A", "lora_B")

    def __init__(self, geometry: LayerGeometry, rank: int, options: Any = None, *, layer_name: str = "", dtype=None, device=None):
        super().__init__(geometry, rank)
        lora_a, lora_b = F_conv_lora.init_conv_lora_factors(geometry, rank, dtype=dtype, device=device)
        self.lora_A = nn.Parameter(lora_a)
        self.lora_B = nn.Parameter(lora_b)

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        return F_conv_lora.conv_lora_unsupported_reason(geometry)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return F_conv_lora.conv_lora_param_count(geometry, rank)

    def logical_delta(self, scale: float) -> Tensor:
        return F_conv_lora.conv_lora_delta(self.lora_A, self.lora_B, self.geometry, scale)

    def weight_build(self) -> tuple[Callable[..., Tensor], tuple[Tensor, ...], dict[str, Any]]:
        return F_conv_lora.conv_lora_add_to_weight, (self.lora_A, self.lora_B), {"geometry": self.geometry}


@register_adapter("conv_lora")
class ConvLoRA(DeltaAdapter):
    """convLoRA (Aleem et al., arXiv 2402.04964), exact for any kernel dimensionality."""

    delta_cls = ConvLoRADelta
