"""NeRA, KAN form (``nera_kan``): ``y = base(x) + scale * KAN_up(KAN_down(x))`` on Linear layers.

See ``core.functional.nera_kan`` for the paper reference and the choices it leaves open. NeRA is
nonlinear in the input: it has no ``delta_weight`` and cannot be merged (``mergeable = False``;
``merge`` raises ``TypeError``). Only ``nn.Linear`` is supported: on a convolution the down
layer's basis would be ``[N, C_in * k^2, G + k, H, W]`` per step, which is not a reasonable cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..functional import nera_kan as F_kan
from ..functional.layout import LayerGeometry
from .base import AdapterLayer
from .registry import register_adapter

__all__ = ["NeRAKANOptions", "NeRAKAN"]


@dataclass
class NeRAKANOptions:
    grid_size: int = 5
    """Number of grid intervals G of the B-spline grid."""
    spline_order: int = 3
    """B-spline order k (3: cubic; 1: the hat functions of the authors' code)."""
    grid_range: float = 3.0
    """The grid spans ``[-grid_range, grid_range]`` in normalised input units."""
    spline_init_scale: float = 0.1
    """Std of the down layer's initial spline coefficients times ``sqrt(d_in * (G + k))``."""

    def __post_init__(self) -> None:
        if isinstance(self.grid_size, bool) or not isinstance(self.grid_size, int) or self.grid_size < 1:
            raise ValueError(f"NeRAKANOptions.grid_size must be an integer >= 1, got {self.grid_size!r}")
        if isinstance(self.spline_order, bool) or not isinstance(self.spline_order, int) or self.spline_order < 0:
            raise ValueError(f"NeRAKANOptions.spline_order must be an integer >= 0, got {self.spline_order!r}")
        if not (isinstance(self.grid_range, (int, float)) and self.grid_range > 0):
            raise ValueError(f"NeRAKANOptions.grid_range must be a positive number, got {self.grid_range!r}")
        if not (isinstance(self.spline_init_scale, (int, float)) and self.spline_init_scale >= 0):
            raise ValueError(f"NeRAKANOptions.spline_init_scale must be a number >= 0, got {self.spline_init_scale!r}")

    @property
    def num_basis(self) -> int:
        return self.grid_size + self.spline_order


@register_adapter("nera_kan")
class NeRAKAN(AdapterLayer):
    """Two KAN layers, ``d_in -> r -> d_out``; the up layer starts at zero, so the model starts unchanged."""

    mergeable = False
    options_cls = NeRAKANOptions

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        if geometry.kind != "linear":
            return f"nera_kan wraps nn.Linear only (a KAN basis over C_in*k^2 conv inputs per pixel is too costly), got {geometry.kind}"
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        options = options or NeRAKANOptions()
        return F_kan.nera_kan_param_count(geometry.fan_in, geometry.out_channels, rank, options.grid_size, options.spline_order)

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[NeRAKANOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        kw = self._factory_kwargs()
        d_in, d_out, r, n_basis = self.geometry.fan_in, self.geometry.out_channels, self.rank, self.options.num_basis
        self.down_base = nn.Parameter(torch.empty(r, d_in, **kw))
        nn.init.kaiming_uniform_(self.down_base, a=math.sqrt(5))
        std = self.options.spline_init_scale / math.sqrt(d_in * n_basis)
        self.down_spline = nn.Parameter(torch.randn(r, d_in, n_basis, **kw) * std)
        self.down_scale = nn.Parameter(torch.ones(d_in, **kw))
        self.down_shift = nn.Parameter(torch.zeros(d_in, **kw))
        self.up_base = nn.Parameter(torch.zeros(d_out, r, **kw))
        self.up_spline = nn.Parameter(torch.zeros(d_out, r, n_basis, **kw))
        self.up_scale = nn.Parameter(torch.ones(r, **kw))
        self.up_shift = nn.Parameter(torch.zeros(r, **kw))
        knots = F_kan.knot_vector(self.options.grid_size, self.options.spline_order, self.options.grid_range, device=kw["device"])
        self.register_buffer("knots", knots, persistent=False)

    def extra_repr(self) -> str:
        o = self.options
        return super().extra_repr() + f", grid_size={o.grid_size}, spline_order={o.spline_order}, grid_range={o.grid_range:g}"

    def hidden(self, x: Tensor) -> Tensor:
        """``KAN_down(x)``: the ``r`` hidden features."""
        return F_kan.kan_layer(x, self.down_base, self.down_spline, self.down_scale, self.down_shift, self.knots, self.options.spline_order)

    def adapter_path(self, x: Tensor) -> Tensor:
        """``scale * KAN_up(KAN_down(x))``."""
        h = self.hidden(x)
        out = F_kan.kan_layer(h, self.up_base, self.up_spline, self.up_scale, self.up_shift, self.knots, self.options.spline_order)
        return out * self.scale

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        return base_out + self.adapter_path(self.dropout(x)).to(base_out.dtype)

    @torch.no_grad()
    def update_grid(self, x: Tensor, margin: float = 0.01) -> None:
        """Grid update from the data range of ``x`` (this layer's input, ``[..., d_in]``).

        Re-centres and re-scales both KAN layers' inputs so the observed range of every feature
        fills ``[-grid_range, grid_range]`` and refits their spline coefficients by least squares,
        so the adapter's output on ``x`` is kept up to the spline's approximation error.
        """
        x = x.detach().reshape(-1, self.geometry.fan_in).to(self.down_base)
        h = self.hidden(x)
        for name, inputs in (("down", x), ("up", h)):
            scale, shift, coeff = (getattr(self, f"{name}_{p}") for p in ("scale", "shift", "spline"))
            lo, hi = inputs.amin(0), inputs.amax(0)
            half = ((hi - lo) / 2).clamp_min(1e-4) * (1 + margin)
            new_shift = (hi + lo) / 2
            new_scale = self.options.grid_range / half
            coeff.copy_(F_kan.refit_spline_coefficients(inputs, coeff, scale, shift, new_scale, new_shift, self.knots, self.options.spline_order))
            scale.copy_(new_scale)
            shift.copy_(new_shift)
