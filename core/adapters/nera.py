"""NeRA (``nera``, alias ``nera_kan``): ``y = base(x) + scale * KAN_up(KAN_down(x))``, the paper's KAN form.

See ``core.functional.nera`` for the paper reference and the choices it leaves open. NeRA is
nonlinear in the input: it has no ``delta_weight`` and cannot be merged (``mergeable = False``;
``merge`` raises ``TypeError``). Linear and ungrouped, zero-padded ``nn.Conv1d/2d/3d`` are
supported; on a conv the down layer is a KAN convolution whose input is ``G + k + 1`` times the
layer's input map (see ``core.functional.nera``), the up layer a 1x1 KAN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..functional import nera as F_kan
from ..functional.layout import LayerGeometry
from ..validate import is_int, is_number, require
from .base import AdapterLayer
from .registry import register_adapter

__all__ = ["NeRAOptions", "NeRA"]


@dataclass
class NeRAOptions:
    grid_size: int = 5
    """Number of grid intervals G of the B-spline grid."""
    spline_order: int = 3
    """B-spline order k (3: cubic; 1: the hat functions of the authors' code)."""
    grid_range: float = 3.0
    """The grid spans ``[-grid_range, grid_range]`` in normalised input units."""
    spline_init_scale: float = 0.1
    """Std of the down layer's initial spline coefficients times ``sqrt(d_in * (G + k))``."""

    def __post_init__(self) -> None:
        require(self, "grid_size", is_int(self.grid_size, 1), "an integer >= 1")
        require(self, "spline_order", is_int(self.spline_order, 0), "an integer >= 0")
        require(self, "grid_range", is_number(self.grid_range) and self.grid_range > 0, "a positive number")
        require(self, "spline_init_scale", is_number(self.spline_init_scale) and self.spline_init_scale >= 0, "a number >= 0")

    @property
    def num_basis(self) -> int:
        return self.grid_size + self.spline_order


@register_adapter("nera", aliases=("nera_kan",))
class NeRA(AdapterLayer):
    """Two KAN layers, ``d_in -> r -> d_out``; the up layer starts at zero, so the model starts unchanged."""

    mergeable = False
    options_cls = NeRAOptions
    strategies = ("auto", "activation")  # nonlinear in the input: no weight-space path

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        if geometry.kind not in ("linear", "conv"):
            return f"nera wraps nn.Linear and nn.Conv1d/2d/3d, got {geometry.kind}"
        if geometry.groups != 1:
            return f"nera's KAN convolution needs an ungrouped conv, got groups={geometry.groups}"
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        options = options or NeRAOptions()
        return F_kan.nera_param_count(geometry.in_channels, geometry.out_channels, rank, options.grid_size, options.spline_order,
                                          geometry.kernel_numel)

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[NeRAOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        kw = self._factory_kwargs()
        g = self.geometry
        if g.kind == "conv" and getattr(self.root, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"nera needs zero padding on {layer_name or type(self.root).__name__}, got padding_mode={self.root.padding_mode!r}")
        d_in, d_out, r, n_basis, k = g.in_channels, g.out_channels, self.rank, self.options.num_basis, tuple(g.kernel_size)
        self.down_base = nn.Parameter(torch.empty(r, d_in, *k, **kw))
        nn.init.kaiming_uniform_(self.down_base, a=math.sqrt(5))
        std = self.options.spline_init_scale / math.sqrt(g.fan_in * n_basis)
        self.down_spline = nn.Parameter(torch.randn(r, d_in, n_basis, *k, **kw) * std)
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
        """``KAN_down(x)``: the ``r`` hidden features (channels on dim 1 for a conv)."""
        if self.geometry.kind == "conv":
            root = self.root
            return F_kan.kan_conv(x, self.down_base, self.down_spline, self.down_scale, self.down_shift, self.knots, self.options.spline_order,
                                  stride=root.stride, padding=root.padding, dilation=root.dilation)
        return F_kan.kan_layer(x, self.down_base, self.down_spline, self.down_scale, self.down_shift, self.knots, self.options.spline_order)

    def adapter_path(self, x: Tensor) -> Tensor:
        """``scale * KAN_up(KAN_down(x))``."""
        h = self.hidden(x)
        conv = self.geometry.kind == "conv"
        h = h.movedim(1, -1) if conv else h
        out = F_kan.kan_layer(h, self.up_base, self.up_spline, self.up_scale, self.up_shift, self.knots, self.options.spline_order)
        return (out.movedim(-1, 1) if conv else out) * self.scale

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
        x = x.detach().to(self.down_base)
        h = self.hidden(x)
        if self.geometry.kind == "conv":  # per-channel samples: every position of every image
            x, h = x.movedim(1, -1), h.movedim(1, -1)
        x, h = x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1])
        for name, inputs in (("down", x), ("up", h)):
            scale, shift, coeff = (getattr(self, f"{name}_{p}") for p in ("scale", "shift", "spline"))
            lo, hi = inputs.amin(0), inputs.amax(0)
            half = ((hi - lo) / 2).clamp_min(1e-4) * (1 + margin)
            new_shift = (hi + lo) / 2
            new_scale = self.options.grid_range / half
            taps = coeff.dim() - 3  # conv down layer: one edge function per kernel tap, refit as extra outputs
            order = (0, *range(3, 3 + taps), 1, 2)
            flat = coeff.permute(order).reshape(-1, coeff.shape[1], coeff.shape[2]) if taps else coeff
            refit = F_kan.refit_spline_coefficients(inputs, flat, scale, shift, new_scale, new_shift, self.knots, self.options.spline_order)
            if taps:
                refit = refit.reshape(coeff.shape[0], *coeff.shape[3:], coeff.shape[1], coeff.shape[2]).permute(0, taps + 1, taps + 2, *range(1, taps + 1))
            coeff.copy_(refit)
            scale.copy_(new_scale)
            shift.copy_(new_shift)
