"""Gradient-informed LoRA initialisation: LoRA-GA and LoRA-SB factors from an estimated full gradient.

Wang et al., "LoRA-GA: Low-Rank Adaptation with Gradient Approximation" (arXiv 2407.05000):
with ``G = U S V^T`` the SVD of the (averaged) full-weight gradient, ``B = U[:, :r]`` and
``A = V[:, r:2r]^T`` make the first LoRA step ``B B^T G + G A^T A`` the best rank-2r approximation of
``G``'s direction; both are multiplied by ``m^(1/4) / sqrt(gamma)`` (the paper's stable scale,
``m`` = output size), and the initial product ``s B A`` is subtracted from ``W`` so the output is unchanged.

Ponkshe et al., "Initialization using Update Approximation is a Silver Bullet for Extremely Efficient
Low-Rank Fine-Tuning" (LoRA-SB, arXiv 2411.19557): in the LoRA-XS form ``dW = s B R A`` with ``B`` and
``A`` frozen and ``R`` (``r x r``) trained, the first full fine-tuning update ``dW_1 ~ -eta G`` is
approximated by its truncated SVD: ``B = U_r``, ``A = V_r^T`` (orthonormal) and ``R = S_r / s``.
The initial product IS the approximated first update (it is not subtracted).

Choices left open: ``G`` is the mean gradient over the given batches, in the layer's logical matrix
``[C_out, C_in * prod(k)]`` (convolutions included); when ``2r > min(m, n)`` LoRA-GA's ``A`` takes the
last ``r`` right singular vectors (overlapping ``B``'s), and ranks above ``min(m, n)`` are padded with
zero rows/columns.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lora_ga_factors", "lora_sb_factors"]


def _svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    return u, s, vh


def _pad_columns(x: Tensor, width: int) -> Tensor:
    return x if x.shape[1] >= width else torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], 1)


def lora_ga_factors(grad: Tensor, rank: int, *, gamma: float = 16.0) -> tuple[Tensor, Tensor]:
    """``(A [r, n], B [m, r])`` of LoRA-GA from the gradient matrix ``grad`` (``[m, n]``)."""
    m, n = grad.shape
    u, _, vh = _svd(grad)
    k = u.shape[1]
    b = _pad_columns(u[:, :rank], rank)
    start = rank if 2 * rank <= k else max(k - rank, 0)
    a = _pad_columns(vh[start:start + rank].t(), rank).t()
    factor = m ** 0.25 / gamma ** 0.5
    return (a * factor).to(grad.dtype), (b * factor).to(grad.dtype)


def lora_sb_factors(update: Tensor, rank: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(A [r, n], B [m, r], R [r, r])`` of LoRA-SB with ``s B R A`` the best rank-``r`` approximation of ``update``."""
    u, s, vh = _svd(update)
    b = _pad_columns(u[:, :rank], rank)
    a = _pad_columns(vh[:rank].t(), rank).t()
    sigma = torch.zeros(rank, dtype=s.dtype, device=s.device)
    sigma[: min(rank, s.numel())] = s[:rank]
    return a.to(update.dtype), b.to(update.dtype), (torch.diag(sigma) / scale).to(update.dtype)
