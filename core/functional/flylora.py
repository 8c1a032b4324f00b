"""FlyLoRA: a frozen sparse random down-projection as implicit router, rank-wise top-k in the up-projection.

"FlyLoRA: Boosting Task Decoupling and Parameter Efficiency via Implicit Rank-Wise
Mixture-of-Experts" (Oct 2025): ``y = W x + scale * B mask_k(A x)`` where ``A``
(``r x fan_in``) is a frozen sparse random matrix (the fly olfactory circuit's sparse random
projection) and each of the ``r`` rank-one pieces ``B[:, i] A[i, :]`` is an expert; ``mask_k`` keeps the
``k`` entries of ``A x`` with the largest magnitude, so ``A x`` is both the router's score and the
down-projection. Only ``B`` trains. Random ``A`` of different tasks are nearly orthogonal, which is
what lets separately trained FlyLoRA adapters be merged with little interference.

Choices the abstract leaves open (stated here):
- every row of ``A`` has ``p = max(1, round(density * fan_in))`` nonzeros at distinct random
  columns, with values ``N(0, 1/p)`` (a white input then gives ``A x`` unit variance); ``A`` is drawn
  on a CPU generator from the option ``seed`` and the layer's name, never saved.
- top-k is taken per token (per position on a convolution) over the ``r`` channels; ties keep the
  lower index (``torch.topk``); gradients flow to ``B`` through the kept entries only.
- no load-balancing term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import LayerGeometry

__all__ = ["row_nonzeros", "sparse_router", "topk_mask", "flylora_param_count"]


def row_nonzeros(fan_in: int, density: float) -> int:
    """Nonzeros per row of the router: ``max(1, round(density * fan_in))`` (at most ``fan_in``)."""
    return min(fan_in, max(1, round(density * fan_in)))


def sparse_router(seed: int, rank: int, fan_in: int, nonzeros: int, *, dtype=None, device=None) -> Tensor:
    """Dense ``[r, fan_in]`` tensor with exactly ``nonzeros`` entries ``N(0, 1/nonzeros)`` per row, a pure function of ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    columns = torch.rand(rank, fan_in, generator=generator).argsort(dim=1)[:, :nonzeros]
    values = torch.randn(rank, nonzeros, generator=generator) / nonzeros ** 0.5
    router = torch.zeros(rank, fan_in).scatter(1, columns, values)
    return router.to(dtype=dtype or torch.float32, device=device)


def topk_mask(h: Tensor, k: int, *, channel_dim: int = -1) -> Tensor:
    """``h`` with all but its ``k`` largest-magnitude entries along ``channel_dim`` set to zero."""
    index = h.detach().abs().topk(k, dim=channel_dim).indices
    mask = torch.zeros_like(h).scatter(channel_dim, index, 1.0)
    return h * mask


def flylora_param_count(geometry: LayerGeometry, rank: int) -> int:
    """Only ``B`` trains: ``C_out * r``."""
    return geometry.out_channels * rank
