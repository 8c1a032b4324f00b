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

Evaluation (knots are uniform): an input at ``s`` knot steps lies in interval ``j = floor(s)``, where only
``k + 1`` basis functions are nonzero; their values are a fixed polynomial of ``t = s - j``
(``[1, t, ..., t^k] @ M``, ``M`` from de Boor's triangle). :func:`kan_layer` sums the ``k + 1`` active coefficients
per input feature (``embedding_bag``) and never forms the ``[tokens, d_in, G + k]`` basis; backward keeps only
``s``. Measured on CPU (``python bench/nera_basis.py --threads 2 --rounds 3``, ``docs/results/nera_basis.md``):
NeRA's adapter path at ViT-S/ViT-B widths (1576 tokens) keeps 9.6 / 19 MiB for backward instead of 234 / 462 MiB,
peaks at 0.36 / 0.56 of the previous (Cox-de Boor) form's memory and steps in 0.62 / 0.35 of its time.
The KAN convolution still forms its expanded input map (``grid_size + spline_order + 1`` times the layer's
input; :func:`bspline_basis`, scattered from the local values). One KAN layer has
``d_out * fan_in * (grid_size + spline_order + 1) + 2 * d_in`` parameters, i.e. about
``grid_size + spline_order + 1`` times LoRA's at the same rank.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knot_vector", "bspline_local", "bspline_basis", "spline_term", "kan_layer", "bspline_basis_dense", "kan_layer_dense", "kan_conv", "kan_layer_param_count", "nera_param_count", "refit_spline_coefficients"]


def knot_vector(grid_size: int, spline_order: int, grid_range: float, *, dtype=torch.float32, device=None) -> Tensor:
    """Uniform knots ``t_0 .. t_{G+2k}`` over ``[-R, R]`` extended by ``k`` knots on each side."""
    step = 2.0 * grid_range / grid_size
    index = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=dtype, device=device)
    return -grid_range + index * step


_MATRICES: dict[tuple, Tensor] = {}


def _polynomial_triangle(order: int) -> list[list[float]]:
    """Coefficients (power 0 upwards) of the ``order + 1`` uniform B-spline pieces on one interval, in ``t`` in [0, 1).

    De Boor's triangle on polynomials: ``N^p_m = ((t + p - m) N^{p-1}_{m-1} + (m + 1 - t) N^{p-1}_m) / p``.
    """
    pieces = [[1.0]]
    for p in range(1, order + 1):
        level = []
        for m in range(p + 1):
            poly = [0.0] * (p + 1)
            if m > 0:  # (t + p - m) * N^{p-1}_{m-1}
                for e, c in enumerate(pieces[m - 1]):
                    poly[e + 1] += c
                    poly[e] += (p - m) * c
            if m < p:  # (m + 1 - t) * N^{p-1}_m
                for e, c in enumerate(pieces[m]):
                    poly[e] += (m + 1) * c
                    poly[e + 1] -= c
            level.append([c / p for c in poly])
        pieces = level
    return pieces


def _piece_matrix(order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``M [order + 1 powers, order + 1 pieces]`` so that ``[1, t, ..., t^k] @ M`` are the active B-spline values.

    Cached per dtype and device, so a step that reuses it launches no host-to-device copy (CUDA-graph capture)."""
    key = (order, dtype, str(device))
    matrix = None if torch.compiler.is_compiling() else _MATRICES.get(key)
    if matrix is None:
        matrix = torch.tensor(_polynomial_triangle(order), dtype=torch.float64).t().to(dtype=dtype, device=device)
        if not torch.compiler.is_compiling():
            _MATRICES[key] = matrix
    return matrix


def _local(s: Tensor, order: int, num_basis: int, *, slopes: bool = False) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """At ``s`` (knot steps from the first knot): indices ``[..., k + 1]`` of the active basis functions (clamped into
    range), their values (0 where a function does not exist there or ``s`` is off the knot span), and with ``slopes``
    their derivatives ``d value / d s``."""
    j = torch.floor(s)
    t = (s - j).unsqueeze(-1)
    index = j.long().clamp(-1, num_basis + order).unsqueeze(-1) + torch.arange(-order, 1, device=s.device)
    valid = (index >= 0) & (index < num_basis)  # implies s on the knot span [0, num_basis + k)
    matrix = _piece_matrix(order, s.dtype, s.device)
    powers = torch.cat([torch.ones_like(t)] + [t**e for e in range(1, order + 1)], -1) if order else torch.ones_like(t)
    values = torch.where(valid, powers @ matrix, 0.0)
    derivative = None
    if slopes:
        if order == 0:
            derivative = torch.zeros_like(values)
        else:
            dpowers = torch.cat([torch.zeros_like(t), torch.ones_like(t)] + [e * t ** (e - 1) for e in range(2, order + 1)], -1)
            derivative = torch.where(valid, dpowers @ matrix, 0.0)
    return index.clamp(0, num_basis - 1), values, derivative


class _LocalBasis(torch.autograd.Function):
    """``(values, indices)`` of the active B-splines at ``s``; saves only ``s`` for backward (``bspline_local``)."""

    @staticmethod
    def forward(ctx, s: Tensor, order: int, num_basis: int) -> tuple[Tensor, Tensor]:
        index, values, _ = _local(s, order, num_basis)
        ctx.save_for_backward(s)
        ctx.order, ctx.num_basis = order, num_basis
        ctx.mark_non_differentiable(index)
        return values, index

    @staticmethod
    def backward(ctx, grad_values: Tensor, grad_index: Optional[Tensor]):
        (s,) = ctx.saved_tensors
        _, _, slopes = _local(s, ctx.order, ctx.num_basis, slopes=True)
        return (grad_values * slopes).sum(-1), None, None


class _SplineTerm(torch.autograd.Function):
    """``out[n, o] = sum_{i, m} table[i * K + index[n, i, m], o] * value[n, i, m]`` for ``s [N, d_in]``, ``table [d_in * K, d_out]``.

    Forward: one ``embedding_bag`` (the ``k + 1`` active rows per input feature, weighted by the local values; no
    basis). Saved for backward: ``s`` and the table only. Backward recomputes the local values and forms one
    basis-sized buffer at a time, transiently: the table gradient ``basis^T @ grad`` (one GEMM) and the value
    gradients gathered from ``grad @ table^T``.
    """

    @staticmethod
    def forward(ctx, s: Tensor, table: Tensor, order: int, num_basis: int) -> Tensor:
        index, values, _ = _local(s, order, num_basis)
        flat = (index + torch.arange(s.shape[1], device=s.device).unsqueeze(-1) * num_basis).flatten(1)
        ctx.save_for_backward(s, table)
        ctx.order, ctx.num_basis = order, num_basis
        return F.embedding_bag(flat, table, per_sample_weights=values.flatten(1), mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        s, table = ctx.saved_tensors
        need_s, need_table = ctx.needs_input_grad[:2]
        index, values, slopes = _local(s, ctx.order, ctx.num_basis, slopes=need_s)
        flat = (index + torch.arange(s.shape[1], device=s.device).unsqueeze(-1) * ctx.num_basis).flatten(1)
        grad_s = grad_table = None
        if need_table:
            basis = grad_out.new_zeros(s.shape[0], table.shape[0]).scatter_add_(1, flat, values.flatten(1))
            grad_table = basis.t() @ grad_out
            del basis
        if need_s:
            grad_values = (grad_out @ table.t()).gather(1, flat).view_as(values)
            grad_s = (grad_values * slopes).sum(-1)
        return grad_s, grad_table, None, None


def _knot_steps(u: Tensor, knots: Tensor) -> Tensor:
    """``u`` in knot steps from the first knot (``knots`` uniform, as :func:`knot_vector` makes them)."""
    return (u - knots[0]) / (knots[1] - knots[0])


def bspline_local(u: Tensor, knots: Tensor, spline_order: int) -> tuple[Tensor, Tensor]:
    """The ``k + 1`` possibly nonzero B-spline values at ``u`` (any shape) and their basis indices, both ``[..., k + 1]``.

    ``knots`` must be uniform (:func:`knot_vector`); functions that do not exist at ``u`` get value 0 (and a clamped
    index). Gradients flow to ``u``; backward keeps only ``u``'s position in knot steps.
    """
    num_basis = knots.shape[0] - 1 - spline_order
    return _LocalBasis.apply(_knot_steps(u, knots), spline_order, num_basis)


def bspline_basis(u: Tensor, knots: Tensor, spline_order: int) -> Tensor:
    """B-spline basis values ``[..., G + k]`` of ``u`` (any shape) on uniform ``knots``.

    Scattered from :func:`bspline_local`: equal to the Cox-de Boor recursion (:func:`bspline_basis_dense`) without
    its ``k`` levels of intermediates. :func:`kan_conv` needs this dense form (its expanded input map);
    :func:`kan_layer` never forms it.
    """
    values, index = bspline_local(u, knots, spline_order)
    num_basis = knots.shape[0] - 1 - spline_order
    return values.new_zeros(*values.shape[:-1], num_basis).scatter_add(-1, index, values)


def spline_term(u: Tensor, spline_coeff: Tensor, knots: Tensor, spline_order: int) -> Tensor:
    """``sum_{i,k} c[o, i, k] B_k(u_i)`` for ``u [..., d_in]`` and ``c [d_out, d_in, K]``, in float32, without a basis
    tensor: each input feature touches ``k + 1`` coefficients (:class:`_SplineTerm`)."""
    d_out, d_in, num_basis = spline_coeff.shape
    with torch.autocast(u.device.type, enabled=False):
        s = _knot_steps(u.float(), knots.float()).reshape(-1, d_in)
        table = spline_coeff.float().permute(1, 2, 0).reshape(d_in * num_basis, d_out)
        out = _SplineTerm.apply(s, table, spline_order, num_basis)
    return out.reshape(*u.shape[:-1], d_out)


def kan_layer(x: Tensor, base_weight: Tensor, spline_coeff: Tensor, input_scale: Tensor, input_shift: Tensor,
              knots: Tensor, spline_order: int) -> Tensor:
    """One KAN layer ``[..., d_in] -> [..., d_out]`` (spline part by :func:`spline_term`, no basis tensor).

    Args:
        base_weight: ``[d_out, d_in]`` weights of the SiLU base term.
        spline_coeff: ``[d_out, d_in, G + k]`` B-spline coefficients.
        input_scale, input_shift: ``[d_in]``; the spline sees ``(x - shift) * scale``.
    """
    base = F.linear(F.silu(x), base_weight.to(x.dtype))
    u = (x.float() - input_shift.float()) * input_scale.float()
    return base + spline_term(u, spline_coeff, knots, spline_order).to(base.dtype)


def bspline_basis_dense(u: Tensor, knots: Tensor, spline_order: int) -> Tensor:
    """Reference: the full basis by the Cox-de Boor recursion on any knots (the form :func:`bspline_basis` and
    :func:`spline_term` replaced; kept for the tests and ``bench/nera_basis.py``, which compare against it)."""
    u = u.unsqueeze(-1)
    basis = ((u >= knots[:-1]) & (u < knots[1:])).to(u.dtype)
    for p in range(1, spline_order + 1):
        left = (u - knots[: -(p + 1)]) / (knots[p:-1] - knots[: -(p + 1)]) * basis[..., :-1]
        right = (knots[p + 1:] - u) / (knots[p + 1:] - knots[1:-p]) * basis[..., 1:]
        basis = left + right
    return basis


def kan_layer_dense(x: Tensor, base_weight: Tensor, spline_coeff: Tensor, input_scale: Tensor, input_shift: Tensor,
                    knots: Tensor, spline_order: int) -> Tensor:
    """Reference :func:`kan_layer` that materialises the ``[..., d_in, G + k]`` basis and multiplies it by the coefficients."""
    base = F.linear(F.silu(x), base_weight.to(x.dtype))
    u = (x.float() - input_shift.float()) * input_scale.float()
    basis = bspline_basis_dense(u, knots.float(), spline_order)
    return base + F.linear(basis.flatten(-2), spline_coeff.float().flatten(1)).to(base.dtype)


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
