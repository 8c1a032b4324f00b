"""NeRA adapter (``nera``): down-projection, per-channel spline activation, zero-init up-projection.

See ``core.functional.nera`` for the paper reference and the basis choice. NeRA is nonlinear
in the input, so it has no ``delta_weight`` and cannot be merged; it always runs in
activation space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from ..functional import lora as F_lora
from ..functional import nera as F_nera
from ..functional.layout import LayerGeometry
from .base import AdapterLayer
from .registry import register_adapter

__all__ = ["NeRAOptions", "NeRA"]


@dataclass
class NeRAOptions:
    grid_size: int = 8
    """Number of knots G of the degree-1 B-spline (hat) basis."""
    grid_range: float = 3.0
    """Knots span ``[-grid_range, grid_range]``."""

    def __post_init__(self) -> None:
        if isinstance(self.grid_size, bool) or not isinstance(self.grid_size, int) or self.grid_size < 2:
            raise ValueError(f"NeRAOptions.grid_size must be an integer >= 2, got {self.grid_size!r}")
        if isinstance(self.grid_range, bool) or not isinstance(self.grid_range, (int, float)) or not self.grid_range > 0:
            raise ValueError(f"NeRAOptions.grid_range must be a positive number, got {self.grid_range!r}")


@register_adapter("nera")
class NeRA(AdapterLayer):
    """``y = base(x) + scale * U(phi(D(x)))``: ``D`` uses the layer's geometry, ``U`` is 1x1 and zero at start."""

    mergeable = False
    options_cls = NeRAOptions
    strategies = ("auto", "activation")  # nonlinear in the input: no weight-space path

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        if geometry.groups != 1:
            return f"NeRA's down-projection needs an ungrouped layer, got groups={geometry.groups}"
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        options = options or NeRAOptions()
        return F_nera.nera_param_count(geometry, rank, options.grid_size)

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[NeRAOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        kw = self._factory_kwargs()
        down, up, spline_coeff, silu_weight = F_nera.init_nera_factors(self.geometry, self.rank, self.options.grid_size, **kw)
        self.nera_down = nn.Parameter(down)
        self.nera_up = nn.Parameter(up)
        self.spline_coeff = nn.Parameter(spline_coeff)
        self.silu_weight = nn.Parameter(silu_weight)
        self.register_buffer("grid", F_nera.spline_grid(self.options.grid_size, self.options.grid_range, **kw), persistent=False)

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        return base_out + self.adapter_path(self.dropout(x), **kwargs).to(base_out.dtype)

    def adapter_path(self, x: Tensor, **kwargs) -> Tensor:
        """``scale * U(phi(D(x)))``; ``D`` and ``U`` are LoRA's down- and up-projections."""
        hidden = F_lora.low_rank_down(self.root, x, self.nera_down, self.geometry, **kwargs)
        hidden = F_nera.spline_activation(hidden, self.spline_coeff, self.silu_weight, self.grid.to(hidden.dtype), channel_dim=self.geometry.channel_dim)
        return F_lora.low_rank_up(hidden, self.nera_up, self.geometry) * self.scale
