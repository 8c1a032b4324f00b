"""NOBLE: a permanent nonlinear low-rank branch ``sigma(x W_down) W_up`` beside a linear layer.

"NOBLE: Accelerating Transformers with Nonlinear Low-Rank Branches" (arXiv 2603.06492): the
layer computes ``y = x W + sigma(x W_down) W_up`` and is trained from scratch with its branch
(the branch is part of the architecture, not a fine-tuning adapter). ``sigma`` is CosNet, the
activation the paper found best: two cosines with learnable frequency and phase and an ``r x r``
linear map between them, all in the bottleneck space:

    sigma(h) = cos(freq2 * (M cos(freq1 * h + phase1)) + phase2)

Choices the paper's abstract leaves open (stated here):
- frequencies start at 1, phases uniform in ``[-pi, pi)`` (so the ``r`` units start as random
  Fourier features of ``x W_down`` rather than all at the flat top of the cosine); ``M`` and
  ``W_down`` start Kaiming-uniform like ``nn.Linear``; ``W_up`` starts at zero, so a layer that
  receives the branch computes what it computed before.
- on a convolution ``W_down`` is a convolution with the layer's own geometry down to ``r``
  channels and ``W_up`` a 1x1 convolution (LoRA-C's factor layout, ``core.functional.lora``);
  CosNet then acts per position on the ``r`` channels.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .layout import LayerGeometry

__all__ = ["init_cosnet", "cosnet", "noble_branch_param_count"]


def init_cosnet(rank: int, *, dtype=None, device=None, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """CosNet parameters: ``freq1, phase1, freq2, phase2`` (``[r]``) and the mixing matrix ``mix`` (``[r, r]``)."""
    def phase() -> Tensor:
        return torch.empty(rank, dtype=dtype, device=device).uniform_(-math.pi, math.pi, generator=generator)

    bound = 1.0 / math.sqrt(rank)
    return {
        "freq1": torch.ones(rank, dtype=dtype, device=device),
        "phase1": phase(),
        "mix": torch.empty(rank, rank, dtype=dtype, device=device).uniform_(-bound, bound, generator=generator),
        "freq2": torch.ones(rank, dtype=dtype, device=device),
        "phase2": phase(),
    }


def cosnet(h: Tensor, freq1: Tensor, phase1: Tensor, mix: Tensor, freq2: Tensor, phase2: Tensor, *, channel_dim: int = -1) -> Tensor:
    """``cos(freq2 * (mix @ cos(freq1 * h + phase1)) + phase2)`` over the ``r`` channels of ``h`` (axis ``channel_dim``)."""
    moved = channel_dim not in (-1, h.dim() - 1)
    if moved:
        h = h.movedim(channel_dim, -1)
    h = torch.cos(h * freq1.to(h.dtype) + phase1.to(h.dtype))
    h = torch.cos(torch.nn.functional.linear(h, mix.to(h.dtype)) * freq2.to(h.dtype) + phase2.to(h.dtype))
    return h.movedim(-1, channel_dim) if moved else h


def noble_branch_param_count(geometry: LayerGeometry, rank: int) -> int:
    """``W_down`` (``r * C_in * prod(k)``) + ``W_up`` (``C_out * r``) + CosNet (``r * r + 4 * r``)."""
    return rank * (geometry.fan_in + geometry.out_channels) + rank * rank + 4 * rank
