"""NOLA: LoRA factors as linear mixtures of seeded random bases.

Koohpayegani et al., "NOLA: Compressing LoRA using Linear Combination of Random Basis"
(arXiv 2310.02556): ``A = sum_i alpha_i A_i``, ``B = sum_j beta_j B_j`` with frozen random
``A_i``, ``B_j`` regenerated from a stored seed (never saved); only ``alpha`` and ``beta`` train.

Choices left open by the paper: bases are drawn on the CPU with ``torch.Generator`` (so they
are identical on every device) from a uniform distribution with bound ``1/sqrt(fan_in)`` of
each factor; ``beta`` starts at zero so ``dW = 0``, ``alpha`` uniform with bound
``1/sqrt(num_basis_a)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["nola_bases", "nola_mix"]


def nola_bases(seed: int, num_basis: int, shape: Sequence[int], *, dtype=None, device=None) -> Tensor:
    """``[num_basis, *shape]`` random bases, a pure function of ``seed`` (CPU generator)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    bound = 1.0 / math.sqrt(shape[-1])
    bases = torch.empty(num_basis, *shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    return bases.to(dtype=dtype or torch.float32, device=device)


def nola_mix(coefficients: Tensor, bases: Tensor) -> Tensor:
    """``sum_i c_i * bases[i]``."""
    return torch.tensordot(coefficients.to(bases.dtype), bases, dims=1)
