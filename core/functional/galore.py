"""Gradient low-rank projection: GaLore (SVD and SVD-free DCT bases) and Fira's full-rank residual.

Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection" (arXiv 2403.03507);
"SVD-Free Low-Rank Adaptive Gradient Optimization for Large Language Models"
(2025); Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank
Constraint?" (arXiv 2410.01623).

Choices the papers leave open, stated here:

* Tensors above 2-D (convolution kernels ``[C_out, C_in, *k]``) are unfolded to the matrix
  ``[C_out, C_in * prod(k)]`` (:func:`matricize`), projected, and folded back by a plain reshape, so
  the update of a Conv3d is the update of its unfolded matrix (the layout ``core.functional.layout`` uses).
* The projected side is the shorter one (as GaLore): ``left`` (``R = P^T G``, ``[r, n]``) when
  ``m <= n``, else ``right`` (``R = G P``, ``[m, r]``). A basis is ``[d, r]`` with orthonormal columns.
* DCT: the orthonormal DCT-II matrix of the projected dimension is the fixed basis; its columns are
  ranked by the norm of the gradient's component along each one (``||b_j^T G||`` on the left,
  ``||G b_j||`` on the right) and the top ``r`` are kept, in increasing index order.
* Fira's norm-based scaling is per column of the kept axis (the axis the projection does not touch):
  ``phi_j = ||N_j|| / ||R_j||`` where ``N`` is Adam's output on ``R``; the residual ``G - P P^T G`` is
  scaled column by column. The limiter caps ``||S_t|| <= gamma * ||S_{t-1}||``.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor

from ..validate import is_number

__all__ = [
    "Side", "matricize", "projection_side", "resolve_rank", "project", "project_back", "svd_basis", "dct_matrix",
    "dct_select", "adam_direction", "fira_residual_scale", "limit_norm_growth",
]

Side = Literal["left", "right"]


def matricize(tensor: Tensor) -> Tensor:
    """``[d0, d1, *k]`` -> ``[d0, d1 * prod(k)]`` (a view); 2-D tensors are returned as they are."""
    if tensor.dim() < 2:
        raise ValueError(f"gradient projection needs a tensor of 2 or more dims, got shape {tuple(tensor.shape)}")
    return tensor.reshape(tensor.shape[0], -1)


def projection_side(shape: tuple[int, ...]) -> Side:
    """``left`` when the unfolded matrix has no more rows than columns, else ``right``."""
    m, n = shape[0], math.prod(shape[1:])
    return "left" if m <= n else "right"


def resolve_rank(rank: float, shape: tuple[int, ...]) -> int:
    """An int rank is absolute (clipped to ``min(m, n)``); a float in ``(0, 1]`` is that fraction of ``min(m, n)`` (ceil)."""
    short = min(shape[0], math.prod(shape[1:]))
    if not is_number(rank) or rank <= 0:
        raise ValueError(f"rank must be an int >= 1 or a fraction in (0, 1], got {rank!r}")
    if isinstance(rank, float):
        if rank > 1:
            raise ValueError(f"a float rank is a fraction of the layer's shorter side and must be in (0, 1], got {rank!r}")
        return max(1, math.ceil(rank * short))
    return min(int(rank), short)


def project(grad: Tensor, basis: Tensor, side: Side) -> Tensor:
    """``P^T G`` (left, ``[r, n]``) or ``G P`` (right, ``[m, r]``)."""
    return basis.t() @ grad if side == "left" else grad @ basis


def project_back(low: Tensor, basis: Tensor, side: Side) -> Tensor:
    """Inverse map to the full matrix: ``P R`` (left) or ``R P^T`` (right)."""
    return basis @ low if side == "left" else low @ basis.t()


def svd_basis(grad: Tensor, rank: int, side: Side) -> Tensor:
    """Top-``rank`` singular vectors of ``grad`` on ``side`` (computed in float32), ``[d, rank]``."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    basis = u[:, :rank] if side == "left" else vh[:rank].t()
    return basis.to(grad.dtype).contiguous()


def dct_matrix(n: int, *, dtype=torch.float32, device=None) -> Tensor:
    """Orthonormal DCT-II basis ``[n, n]``: column ``k`` is ``c_k cos(pi (2i + 1) k / 2n)`` over ``i``."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    k = torch.arange(n, dtype=torch.float64, device=device)
    basis = torch.cos(math.pi * (2 * i[:, None] + 1) * k[None, :] / (2 * n)) * math.sqrt(2.0 / n)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.to(dtype)


def dct_select(grad: Tensor, basis: Tensor, rank: int, side: Side) -> Tensor:
    """Indices (ascending) of the ``rank`` columns of ``basis`` best aligned with ``grad``: one matmul and a top-k."""
    coefficients = project(grad, basis.to(grad.dtype), side)  # [d, n] on the left, [m, d] on the right
    scores = coefficients.norm(dim=1 if side == "left" else 0)
    return torch.topk(scores.float(), rank).indices.sort().values


def adam_direction(low: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, betas: tuple[float, float], eps: float) -> Tensor:
    """Update the moments in place and return the bias-corrected Adam direction ``m_hat / (sqrt(v_hat) + eps)``."""
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(low, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(low, low, value=1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(eps)
    return (exp_avg / (1 - beta1**step)) / denom


def fira_residual_scale(low: Tensor, direction: Tensor, side: Side, eps: float = 1e-8) -> Tensor:
    """Fira's norm-based factor per column of the kept axis, shaped to broadcast over the full ``[m, n]`` residual."""
    dim = 0 if side == "left" else 1
    phi = direction.norm(dim=dim) / (low.norm(dim=dim) + eps)
    return phi[None, :] if side == "left" else phi[:, None]


def limit_norm_growth(update: Tensor, previous_norm: Optional[float], gamma: float) -> tuple[Tensor, float]:
    """Fira's norm-growth limiter: if ``||S_t|| > gamma ||S_{t-1}||`` rescale ``S_t`` to ``gamma ||S_{t-1}||``.

    Returns the (possibly rescaled) update and its norm, the ``previous_norm`` of the next step.
    """
    norm = float(update.norm())
    if previous_norm is not None and previous_norm > 0 and norm > gamma * previous_norm:
        update = update * (gamma * previous_norm / norm)
        norm = gamma * previous_norm
    return update, norm
