"""The DoRA family on top of any linear update: ``dora`` (= DoRA-C), ``conv_dora``, ``cp_dora``.

Liu et al., "DoRA" (arXiv 2402.09353); DoRA-C / convDoRA / CP-DoRA from Minoccheri et al.
(arXiv 2508.01772). The decomposition is a strategy over a :class:`LowRankDelta`, so every
delta family gets a DoRA variant by subclassing with ``delta_cls`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..functional import dora as F_dora
from ..functional.layout import LayerGeometry, channel_view, layer_forward, logical_to_weight, weight_to_logical
from .base import DeltaAdapter
from .conv_lora import ConvLoRADelta
from .cp_lora import CPDelta
from .lora import LoRADelta
from .registry import register_adapter

__all__ = ["DoRAOptions", "DoRAAdapter", "DoRA", "ConvDoRA", "CPDoRA"]


@dataclass
class DoRAOptions:
    detach_norm: bool = True
    """Treat ``||W + dW||`` as a constant in backward (DoRA paper, Sec. 4.3); ``False`` keeps the exact gradient."""


class DoRAAdapter(DeltaAdapter):
    """``W' = m * (W + dW) / ||W + dW||`` per output channel; ``m`` starts at ``||W||``."""

    options_cls = DoRAOptions

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return cls.delta_cls.param_count(geometry, rank, options) + geometry.out_channels

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[DoRAOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        with torch.no_grad():
            norm = F_dora.row_norm(weight_to_logical(self.base_weight(), self.geometry).float())
        self.magnitude = nn.Parameter(norm.to(**self._factory_kwargs()))

    def _output_dim(self) -> int:
        """Which stored-weight dimension indexes output channels."""
        return 1 if self.geometry.kind in ("conv_transpose", "embedding") else 0

    def effective_weight(self) -> Tensor:
        """``m * V / ||V||`` with ``V = W + dW`` built in one op; the norm is accumulated in fp32."""
        if self.merged or not self.active:
            return self.base_weight()
        direction = self.delta.add_to_weight(self.base_weight(), self.scale)
        out_dim = self._output_dim()
        norm_dtype = torch.promote_types(direction.dtype, torch.float32)
        norm = torch.linalg.vector_norm(direction, dim=[d for d in range(direction.dim()) if d != out_dim], dtype=norm_dtype)
        if self.options.detach_norm:
            norm = norm.detach()
        shape = [1] * direction.dim()
        shape[out_dim] = -1
        return direction * (self.magnitude.to(norm_dtype) / norm).to(direction.dtype).view(shape)

    def delta_weight(self) -> Tensor:
        """``W' - W``: DoRA rescales the whole kernel, so the dense update is not ``scale * B @ A``."""
        return self.effective_weight() - self.base_weight()

    def output_scale(self) -> Tensor:
        """``m / ||W + dW||`` per output channel; for LoRA-shaped deltas without forming ``dW``."""
        base = weight_to_logical(self.base_weight(), self.geometry)
        if isinstance(self.delta, LoRADelta):  # LoRA and CP-LoRA: ||W + sBA|| from the factors
            lora_a, lora_b = self.delta.factors()
            norm = F_dora.lowrank_row_norm(base.reshape(base.shape[0], -1), lora_a, lora_b, self.scale)
            if self.options.detach_norm:
                norm = norm.detach()
            return self.magnitude.float() / norm
        return F_dora.dora_output_scale(base, self.logical_delta().to(base.dtype), self.magnitude.to(base.dtype), detach_norm=self.options.detach_norm)

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        root = self.root
        bias = getattr(root, "bias", None)
        if self._pick_strategy(x) == "weight":
            return layer_forward(root, x, self.effective_weight(), bias, **kwargs)
        factor = self.output_scale()
        out = self.delta.fused_forward(root, x, self.scale, None, **kwargs) if self._fusable() else None
        if out is None:
            out = self.base_layer(x, *args, **kwargs)
            if bias is not None:
                out = out - channel_view(bias, self.geometry, out)
            out = out + self.activation_delta(self.dropout(x), **kwargs).to(out.dtype)
        factor = channel_view(factor.to(out.dtype), self.geometry, out)
        if bias is None:
            return out * factor
        return torch.addcmul(channel_view(bias.to(out.dtype), self.geometry, out), out, factor)


@register_adapter("dora", aliases=("dora_c",))
class DoRA(DoRAAdapter):
    """DoRA / DoRA-C: magnitude and direction over a LoRA(-C) update."""

    delta_cls = LoRADelta


@register_adapter("conv_dora")
class ConvDoRA(DoRAAdapter):
    """convDoRA: magnitude and direction over a convLoRA update."""

    delta_cls = ConvLoRADelta


@register_adapter("cp_dora")
class CPDoRA(DoRAAdapter):
    """CP-DoRA: magnitude and direction over a CP-LoRA update."""

    delta_cls = CPDelta
