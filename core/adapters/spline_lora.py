"""Spline-LoRA adapter (``spline_lora``): down-projection, per-channel spline activation, zero-init up-projection.

The simplified NeRA of earlier versions of this library (then registered as ``nera``; the paper's
KAN form is ``nera`` now). See ``core.functional.spline_lora`` for the basis choice. It is
nonlinear in the input, so it has no ``delta_weight`` and cannot be merged; it always runs in
activation space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from ..functional import lora as F_lora
from ..functional import spline_lora as F_spline
from ..functional.layout import LayerGeometry
from ..validate import is_int, is_number, require
from .base import AdapterLayer
from .registry import register_adapter

__all__ = ["SplineLoRAOptions", "SplineLoRA"]


@dataclass
class SplineLoRAOptions:
    grid_size: int = 8
    """Number of knots G of the degree-1 B-spline (hat) basis."""
    grid_range: float = 3.0
    """Knots span ``[-grid_range, grid_range]``."""

    def __post_init__(self) -> None:
        require(self, "grid_size", is_int(self.grid_size, 2), "an integer >= 2")
        require(self, "grid_range", is_number(self.grid_range) and self.grid_range > 0, "a positive number")


@register_adapter("spline_lora")
class SplineLoRA(AdapterLayer):
    """``y = base(x) + scale * U(phi(D(x)))``: ``D`` uses the layer's geometry, ``U`` is 1x1 and zero at start."""

    mergeable = False
    options_cls = SplineLoRAOptions
    strategies = ("auto", "activation")  # nonlinear in the input: no weight-space path

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        if geometry.groups != 1:
            return f"spline_lora's down-projection needs an ungrouped layer, got groups={geometry.groups}"
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        options = options or SplineLoRAOptions()
        return F_spline.spline_lora_param_count(geometry, rank, options.grid_size)

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[SplineLoRAOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        kw = self._factory_kwargs()
        down, up, spline_coeff, silu_weight = F_spline.init_spline_lora_factors(self.geometry, self.rank, self.options.grid_size, **kw)
        self.spline_down = nn.Parameter(down)
        self.spline_up = nn.Parameter(up)
        self.spline_coeff = nn.Parameter(spline_coeff)
        self.silu_weight = nn.Parameter(silu_weight)
        self.register_buffer("grid", F_spline.spline_grid(self.options.grid_size, self.options.grid_range, **kw), persistent=False)

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        return base_out + self.adapter_path(self.dropout(x), **kwargs).to(base_out.dtype)

    def adapter_path(self, x: Tensor, **kwargs) -> Tensor:
        """``scale * U(phi(D(x)))``; ``D`` and ``U`` are LoRA's down- and up-projections."""
        hidden = F_lora.low_rank_down(self.root, x, self.spline_down, self.geometry, **kwargs)
        hidden = F_spline.spline_activation(hidden, self.spline_coeff, self.silu_weight, self.grid.to(hidden.dtype), channel_dim=self.geometry.channel_dim)
        return F_lora.low_rank_up(hidden, self.spline_up, self.geometry) * self.scale
