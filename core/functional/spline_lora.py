"""Spline-LoRA (``spline_lora``): LoRA with one learnable spline activation on the ``r`` hidden channels.

A simplification of NeRA ("FLORA dataset and NeRA adapter", arXiv 2411.13901), kept under its own
name: the paper's NeRA makes both projections KAN layers (``core.functional.nera``); here only the
``r`` hidden channels pass through a learned univariate function:
``y = base(x) + scale * U(phi(D(x)))`` where ``D`` projects to rank ``r`` with the layer's own
geometry (so it works on every layer LoRA does), ``phi`` applies one learnable univariate function
per rank channel and ``U`` is a zero-initialised 1x1 up-projection, so the adapter starts as the
identity. It costs LoRA's parameters plus ``r * (G + 1)``.

Basis choice: ``phi_c(z) = w_c * silu(z) + sum_g c[c, g] * hat_g(z)`` with degree-1 B-splines
("hat" functions) on a fixed uniform grid of ``G`` knots over ``[-R, R]`` (defaults G = 8,
R = 3). Hat functions are the basis the authors' code uses; we keep the knots fixed rather than
learnable so the basis is one broadcasted expression (no Python loops, compiles to a single
fused kernel) and the spline lives on the ``r`` hidden channels instead of the ``d_in`` inputs,
which keeps the ``[tokens, channels, G]`` intermediate ``d_in / r`` times smaller. ``phi`` is
nonlinear in ``x``, so spline_lora has no dense ``dW`` and cannot be merged into the base weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import LayerGeometry
from .lora import init_lora_factors

__all__ = ["init_spline_lora_factors", "spline_grid", "hat_basis", "spline_activation", "spline_lora_param_count"]


def init_spline_lora_factors(geometry: LayerGeometry, rank: int, grid_size: int, *, dtype=None, device=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(down, up, spline_coeff, silu_weight)``: ``down`` is LoRA's Kaiming-uniform ``A`` (``[r, C_in*prod(k)]``),
    ``up`` (``[C_out, r]``) and the spline coefficients (``[r, G]``) are zero, the SiLU weights one, so the
    adapter starts as the identity and ``phi`` starts as SiLU."""
    down, _ = init_lora_factors(geometry, rank, dtype=dtype, device=device)
    up = torch.zeros(geometry.out_channels, rank, dtype=dtype, device=device)
    spline_coeff = torch.zeros(rank, grid_size, dtype=dtype, device=device)
    silu_weight = torch.ones(rank, dtype=dtype, device=device)
    return down, up, spline_coeff, silu_weight


def spline_grid(grid_size: int, grid_range: float, *, dtype=None, device=None) -> Tensor:
    return torch.linspace(-grid_range, grid_range, grid_size, dtype=dtype, device=device)


def hat_basis(z: Tensor, grid: Tensor) -> Tensor:
    """Degree-1 B-spline values ``[..., G]`` of ``z`` on a uniform ``grid``."""
    spacing = grid[1] - grid[0]
    return torch.relu(1.0 - (z.unsqueeze(-1) - grid).abs() / spacing)


def spline_activation(z: Tensor, coefficients: Tensor, silu_weight: Tensor, grid: Tensor, *, channel_dim: int) -> Tensor:
    """Apply ``phi_c`` to every channel ``c`` of ``z`` along ``channel_dim``.

    Args:
        z: hidden activations, channels on ``channel_dim`` (-1 for Linear, 1 for convolutions).
        coefficients: ``[r, G]`` spline coefficients.
        silu_weight: ``[r]`` weight of the SiLU base function.
    """
    rank = coefficients.shape[0]
    shape = [1] * z.dim()
    shape[channel_dim] = rank
    coeff = coefficients.view(*shape, coefficients.shape[1])
    spline = (hat_basis(z, grid) * coeff).sum(-1)
    return silu_weight.view(shape) * F.silu(z) + spline


def spline_lora_param_count(geometry: LayerGeometry, rank: int, grid_size: int) -> int:
    """Down projection + up projection + spline coefficients + SiLU weights."""
    return rank * (geometry.fan_in + geometry.out_channels + grid_size + 1)
