"""EGGROLL: evolution strategies with low-rank ``A B^T`` perturbations, evaluated in one batched forward.

"Evolution Strategies at the Hyperscale" (EGGROLL, 2025). Member ``i`` of a
population of ``P`` perturbs a weight ``W`` (``[m, n]``, a convolution kernel unfolded to
``[C_out, C_in * prod(k)]``) by ``sigma * E_i`` with ``E_i = A_i B_i^T / sqrt(r)``, ``A_i: [m, r]``,
``B_i: [n, r]`` standard normal. Its extra output is computed on activations, ``sigma/sqrt(r) (x B_i) A_i^T``
(``O(r (m + n))`` per position, the layer's own op down to ``r`` channels then a 1x1 op up for
convolutions), while ``x W^T`` is shared by the whole population in one batched call. The ES estimate
``g = 1/(P sigma) sum_i f_i E_i`` is a sum of ``P`` rank-``r`` terms, hence high rank.

Choices left open: members come in antithetic pairs (``+E``, ``-E``; ``P`` must be even); fitness is
shaped to centred ranks in ``[-0.5, 0.5]`` (ties share their mean rank) so the step does not depend on the
objective's scale; biases get dense Gaussian perturbations (they are vectors).
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layout import layer_forward

__all__ = ["centered_ranks", "member_signs", "linear_perturbation", "conv_perturbation", "es_matrix_gradient", "es_vector_gradient"]


def centered_ranks(fitness: Tensor) -> Tensor:
    """Fitness -> centred ranks in ``[-0.5, 0.5]``; equal fitness values get equal (averaged) ranks."""
    flat = fitness.detach().float().flatten()
    n = flat.numel()
    if n < 2:
        return torch.zeros_like(flat)
    order = flat.argsort()
    ranks = torch.empty(n, dtype=torch.float32, device=flat.device)
    ranks[order] = torch.arange(n, dtype=torch.float32, device=flat.device)
    values, inverse = torch.unique(flat, return_inverse=True)
    mean_rank = torch.zeros(values.numel(), device=flat.device).index_add_(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse, minlength=values.numel()).float()
    return mean_rank[inverse] / (n - 1) - 0.5


def member_signs(population: int, *, dtype=torch.float32, device=None) -> Tensor:
    """``[+1, -1, +1, -1, ...]``: member ``2h`` and ``2h + 1`` share the noise of pair ``h`` with opposite signs."""
    return torch.tensor([1.0, -1.0], dtype=dtype, device=device).repeat(population // 2)


def linear_perturbation(x: Tensor, factor_a: Tensor, factor_b: Tensor, coefficient: Tensor) -> Tensor:
    """Per-member ``coefficient_i (x_i B_i) A_i^T`` for a Linear layer.

    ``x``: ``[P, ..., n]``; ``factor_a``: ``[P, m, r]``; ``factor_b``: ``[P, n, r]``; ``coefficient``: ``[P]``
    (sign * sigma / sqrt(r)). Returns ``[P, ..., m]``.
    """
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-1])
    hidden = torch.bmm(flat, factor_b.to(x.dtype))
    out = torch.bmm(hidden, factor_a.to(x.dtype).transpose(1, 2)) * coefficient.to(x.dtype).view(-1, 1, 1)
    return out.reshape(*shape[:-1], factor_a.shape[1])


def conv_perturbation(layer: nn.Module, x: Tensor, factor_a: Tensor, factor_b: Tensor, coefficient: Tensor) -> Tensor:
    """Per-member low-rank kernel perturbation of a (non-grouped) convolution, as two grouped convolutions.

    ``x``: ``[P, b, C_in, *S]``; ``factor_a``: ``[P, C_out, r]``; ``factor_b``: ``[P, C_in * prod(k), r]``.
    Returns ``[P, b, C_out, *S_out]``.
    """
    population, batch, c_in = x.shape[:3]
    kernel, rank = tuple(layer.kernel_size), factor_a.shape[2]
    stacked = x.transpose(0, 1).reshape(batch, population * c_in, *x.shape[3:])
    down = factor_b.to(x.dtype).transpose(1, 2).reshape(population * rank, c_in, *kernel)
    hidden = layer_forward(layer, stacked, down, None, groups=population)
    up = (factor_a.to(x.dtype) * coefficient.to(x.dtype).view(-1, 1, 1)).reshape(population * factor_a.shape[1], rank, *([1] * len(kernel)))
    out = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1](hidden, up, groups=population)
    return out.reshape(batch, population, factor_a.shape[1], *out.shape[2:]).transpose(0, 1)


def es_matrix_gradient(factor_a: Tensor, factor_b: Tensor, pair_weights: Tensor, sigma: float, population: int) -> Tensor:
    """``1/(P sigma) sum_i f_i E_i`` for antithetic pairs: ``sum_h w_h A_h B_h^T / (sqrt(r) P sigma)``, ``[m, n]``.

    ``factor_a``: ``[H, m, r]``; ``factor_b``: ``[H, n, r]``; ``pair_weights``: ``[H]`` (``f_2h - f_2h+1``).
    """
    rank = factor_a.shape[2]
    weighted = factor_a * pair_weights.to(factor_a.dtype).view(-1, 1, 1)
    return torch.einsum("hmr,hnr->mn", weighted, factor_b) / (math.sqrt(rank) * population * sigma)


def es_vector_gradient(noise: Tensor, pair_weights: Tensor, sigma: float, population: int) -> Tensor:
    """ES estimate for a dense-perturbed vector: ``sum_h w_h eps_h / (P sigma)``; ``noise``: ``[H, d]``."""
    return (noise * pair_weights.to(noise.dtype).view(-1, 1)).sum(0) / (population * sigma)
