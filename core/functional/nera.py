"""NeRA (``nera``): the low-rank down- and up-projections are KAN layers, as the paper defines it.

"Dressing the Imagination: ... FLORA ... and a Novel NeRA Adapter" (arXiv 2411.13901; earlier
titled "... A Novel KAN Adapter ..."): ``y = W x + scale * KAN_up(KAN_down(x))`` with
``KAN_down: d_in -> r`` and ``KAN_up: r -> d_out``. A KAN layer (Liu et al., "KAN:
Kolmogorov-Arnold Networks") maps input ``x`` to output ``o`` by a sum over inputs ``i`` of a
learned univariate function ``phi_{o,i}(x_i) = w_{o,i} * silu(x_i) + sum_k c_{o,i,k} B_k(u_i)``.

Choices the paper leaves open (stated here):
- ``B_k`` are B-splines of order ``spline_order`` (default 3, cubic) on a uniform knot vector
  of ``grid_size`` intervals over ``[-grid_range, grid_range]``, extended by ``spline_order``
  knots on each side (``grid_size + spline_order`` basis functions per input).
- The spline sees ``u_i = (x_i - shift_i) * scale_i`` (the authors' code has a learnable
  per-input ``in_scale``); "grid update from the data range" sets ``shift``/``scale`` so the
  observed range of every input fills the grid and refits the coefficients by least squares so
  the layer's function is kept on the sample (:func:`refit_spline_coefficients`). The knots
  themselves stay fixed, so the whole state is in parameters and saves with the core's io.
- The SiLU base term acts on the raw input (as in the KAN paper); the up-layer's base weights
  and spline coefficients start at zero, so the adapted model starts equal to the base model.
- The basis is evaluated in float32 whatever the autocast dtype (B-spline recursions lose
  their partition of unity in bf16).

- On a convolution the down layer is a KAN convolution: every kernel tap of every input channel has
  its own edge function, ``o(p) = sum_{i,d} phi_{o,i,d}(x_i(p + d))``. That is exactly a convolution
  of the expanded feature map ``[silu(x), B_1(u), ..., B_K(u)]`` (``C_in * (K + 1)`` channels) with a
  ``[r, C_in * (K + 1), *k]`` kernel (:func:`kan_conv`); zero padding is applied to the expanded
  map (a padded tap contributes nothing). The up layer is a 1x1 KAN per position.

Cost: the down layer materialises a ``[tokens, d_in, grid_size + spline_order]`` basis (on a conv:
an input map ``grid_size + spline_order + 1`` times the layer's input); one KAN layer has
``d_out * fan_in * (grid_size + spline_order + 1) + 2 * d_in`` parameters, i.e. about
``grid_size + spline_order + 1`` times LoRA's at the same rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knot_vector", "bspline_basis", "kan_layer", "kan_conv", "kan_layer_param_count", "nera_param_count", "refit_spline_coefficients"]


def knot_vector(grid_size: int, spline_order: int, grid_range: float, *, dtype=torch.float32, device=None) -> Tensor:
    """Uniform knots ``t_0 .. t_{G+2k}`` over ``[-R, R]`` extended by ``k`` knots on each side."""
    step = 2.0 * grid_range / grid_size
    index = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=dtype, device=device)
    return -grid_range + index * step


def bspline_basis(u: Tensor, knots: Tensor, spline_order: int) -> Tensor:
    """B-spline basis values ``[..., G + k]`` of ``u`` (any shape) by the Cox-de Boor recursion."""
    u = u.unsqueeze(-1)
    basis = ((u >= knots[:-1]) & (u < knots[1:])).to(u.dtype)
    for p in range(1, spline_order + 1):
        left = (u - knots[: -(p + 1)]) / (knots[p:-1] - knots[: -(p + 1)]) * basis[..., :-1]
        right = (knots[p + 1:] - u) / (knots[p + 1:] - knots[1:-p]) * basis[..., 1:]
        basis = left + right
    return basis


def kan_layer(x: Tensor, base_weight: Tensor, spline_coeff: Tensor, input_scale: Tensor, input_shift: Tensor,
              knots: Tensor, spline_order: int) -> Tensor:
    """One KAN layer ``[..., d_in] -> [..., d_out]``.

    Args:
        base_weight: ``[d_out, d_in]`` weights of the SiLU base term.
        spline_coeff: ``[d_out, d_in, G + k]`` B-spline coefficients.
        input_scale, input_shift: ``[d_in]``; the spline sees ``(x - shift) * scale``.
    """
    base = F.linear(F.silu(x), base_weight.to(x.dtype))
    u = (x.float() - input_shift.float()) * input_scale.float()
    basis = bspline_basis(u, knots.float(), spline_order)
    spline = F.linear(basis.flatten(-2), spline_coeff.float().flatten(1))
    return base + spline.to(base.dtype)


def kan_conv(x: Tensor, base_weight: Tensor, spline_coeff: Tensor, input_scale: Tensor, input_shift: Tensor,
             knots: Tensor, spline_order: int, *, stride, padding, dilation) -> Tensor:
    """KAN convolution ``[N, C_in, *S] -> [N, r, *S']`` (``ndim`` = 1, 2 or 3 spatial axes).

    Args:
        base_weight: ``[r, C_in, *k]`` SiLU weights per kernel tap.
        spline_coeff: ``[r, C_in, K, *k]`` B-spline coefficients per kernel tap.
        input_scale, input_shift: ``[C_in]``.
    """
    ndim = x.dim() - 2
    view = (1, -1) + (1,) * ndim
    u = (x.float() - input_shift.float().view(view)) * input_scale.float().view(view)
    basis = bspline_basis(u, knots.float(), spline_order).movedim(-1, 2)  # [N, C_in, K, *S]
    features = torch.cat([F.silu(x.float()).unsqueeze(2), basis], dim=2).flatten(1, 2)
    r, c_in = base_weight.shape[:2]
    weight = torch.cat([base_weight.float().unsqueeze(2), spline_coeff.float()], dim=2).reshape(r, -1, *base_weight.shape[2:])
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    return conv(features.to(x.dtype), weight.to(x.dtype), None, stride, padding, dilation)


def kan_layer_param_count(d_in: int, d_out: int, grid_size: int, spline_order: int, kernel_numel: int = 1) -> int:
    return d_out * d_in * kernel_numel * (grid_size + spline_order + 1) + 2 * d_in


def nera_param_count(d_in: int, d_out: int, rank: int, grid_size: int, spline_order: int, kernel_numel: int = 1) -> int:
    """Down KAN (``d_in -> r``, with ``kernel_numel`` taps on a conv) plus up KAN (``r -> d_out``)."""
    return (kan_layer_param_count(d_in, rank, grid_size, spline_order, kernel_numel)
            + kan_layer_param_count(rank, d_out, grid_size, spline_order))


@torch.no_grad()
def refit_spline_coefficients(x: Tensor, spline_coeff: Tensor, old_scale: Tensor, old_shift: Tensor,
                              new_scale: Tensor, new_shift: Tensor, knots: Tensor, spline_order: int) -> Tensor:
    """Coefficients on the new input normalisation that best reproduce the old spline on ``x`` ``[N, d_in]``.

    One least-squares problem per input feature (float64 on the CPU): ``B_new c_new = B_old c_old``.
    """
    x = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
    knots64 = knots.to("cpu", torch.float64)
    coeff = spline_coeff.detach().to("cpu", torch.float64)  # [out, in, K]
    old = bspline_basis((x - old_shift.cpu().double()) * old_scale.cpu().double(), knots64, spline_order)  # [N, in, K]
    new = bspline_basis((x - new_shift.cpu().double()) * new_scale.cpu().double(), knots64, spline_order)
    target = torch.einsum("nik,oik->ino", old, coeff)  # [in, N, out]
    solution = torch.linalg.lstsq(new.transpose(0, 1), target, driver="gelsd").solution  # [in, K, out]
    return solution.permute(2, 0, 1).to(spline_coeff)
