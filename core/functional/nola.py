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
import zlib
from typing import Sequence

import torch
from torch import Tensor

from .layout import LayerGeometry

__all__ = ["layer_seed", "nola_bases", "init_nola_bases", "init_nola_coefficients", "nola_param_count", "nola_mix"]


def layer_seed(seed: int, layer_name: str) -> int:
    """Seed of one layer's bases: ``seed`` combined with a CRC32 of the layer's module name."""
    return (int(seed) * 1_000_003 + zlib.crc32(layer_name.encode())) % (2**31)


def nola_bases(seed: int, num_basis: int, shape: Sequence[int], *, dtype=None, device=None) -> Tensor:
    """``[num_basis, *shape]`` random bases, a pure function of ``seed`` (CPU generator)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    bound = 1.0 / math.sqrt(shape[-1])
    bases = torch.empty(num_basis, *shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    return bases.to(dtype=dtype or torch.float32, device=device)


def init_nola_bases(geometry: LayerGeometry, rank: int, seed: int, num_basis_a: int, num_basis_b: int, *, dtype=None, device=None) -> tuple[Tensor, Tensor]:
    """Bases of ``A`` (``[num_basis_a, r, C_in*prod(k)]``, seed ``seed``) and ``B`` (``[num_basis_b, C_out, r]``, seed ``seed + 1``)."""
    bases_a = nola_bases(seed, num_basis_a, (rank, geometry.fan_in), dtype=dtype, device=device)
    bases_b = nola_bases(seed + 1, num_basis_b, (geometry.out_channels, rank), dtype=dtype, device=device)
    return bases_a, bases_b


def init_nola_coefficients(num_basis_a: int, num_basis_b: int, *, dtype=None, device=None) -> tuple[Tensor, Tensor]:
    """``alpha`` uniform with bound ``1/sqrt(num_basis_a)`` (global RNG), ``beta`` zero so that ``dW = 0``."""
    bound = num_basis_a ** -0.5
    coeff_a = torch.empty(num_basis_a, dtype=dtype, device=device).uniform_(-bound, bound)
    coeff_b = torch.zeros(num_basis_b, dtype=dtype, device=device)
    return coeff_a, coeff_b


def nola_param_count(num_basis_a: int, num_basis_b: int) -> int:
    """Only the mixing coefficients train."""
    return num_basis_a + num_basis_b


def nola_mix(coefficients: Tensor, bases: Tensor) -> Tensor:
    """``sum_i c_i * bases[i]``."""
    return torch.tensordot(coefficients.to(bases.dtype), bases, dims=1)
