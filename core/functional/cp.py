"""CP-LoRA: a rank-R CP (CANDECOMP/PARAFAC) update of the whole kernel tensor.

Minoccheri et al., "LoRA-based methods on Unet for transfer learning in Subarachnoid
Hematoma Segmentation" (arXiv 2508.01772):
``dW[o, i, k1, ..., kd] = scale * sum_r U[o, r] V[i, r] K1[k1, r] ... Kd[kd, r]`` with
``R * (C_out + C_in + sum(k))`` parameters. On Linear (no kernel axes) this is LoRA with
``B = U`` and ``A = V^T``.

Choices the paper leaves open: ``U`` (output factor) starts at zero so ``dW = 0``; ``V`` is
uniform with bound ``1/sqrt(C_in)`` and each kernel factor is normal with variance ``1/k_j``,
so the implied ``A`` rows have the same element spread as LoRA's Kaiming-uniform ``A``.
"""

from __future__ import annotations

import math
import string
from typing import Optional, Sequence

import torch
from torch import Tensor

from .layout import LayerGeometry
from .lora import lora_add_to_weight

__all__ = ["init_cp_factors", "cp_delta", "cp_param_count", "cp_einsum_equation", "cp_as_lora_factors", "cp_add_to_weight"]


def cp_param_count(geometry: LayerGeometry, rank: int) -> int:
    return rank * (geometry.out_channels + geometry.in_channels + sum(geometry.kernel_size))


def init_cp_factors(
    geometry: LayerGeometry, rank: int, *, dtype=None, device=None, generator: Optional[torch.Generator] = None
) -> list[Tensor]:
    """Factors ``[U (C_out x R), V (C_in x R), K_1 (k_1 x R), ...]``; ``U`` is zero."""
    out_factor = torch.zeros(geometry.out_channels, rank, dtype=dtype, device=device)
    bound = 1.0 / math.sqrt(geometry.in_channels)
    in_factor = torch.empty(geometry.in_channels, rank, dtype=dtype, device=device).uniform_(-bound, bound, generator=generator)
    kernel_factors = [
        torch.randn(k, rank, dtype=dtype, device=device, generator=generator) / math.sqrt(k) for k in geometry.kernel_size
    ]
    return [out_factor, in_factor, *kernel_factors]


def cp_einsum_equation(num_factors: int) -> str:
    """``"ar,br,cr->abc"`` style equation for ``num_factors`` factor matrices."""
    letters = [c for c in string.ascii_lowercase if c != "r"][:num_factors]
    return ",".join(f"{c}r" for c in letters) + "->" + "".join(letters)


def cp_delta(factors: Sequence[Tensor], geometry: LayerGeometry, scale: float) -> Tensor:
    """Logical update built with one einsum over all factors."""
    delta = torch.einsum(cp_einsum_equation(len(factors)), *factors)
    return delta.mul(scale).reshape(geometry.logical_shape)


def cp_as_lora_factors(factors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The CP update as LoRA factors: ``B = U`` and ``A[r] = V[:, r] (x) K_1[:, r] (x) ... (x) K_d[:, r]``.

    ``A`` (``[R, C_in * prod(k)]``) is built with ``d`` broadcasted products, so the dense update is one
    GEMM ``U @ A`` and the activation path is LoRA's; the factors stay CP-structured (and CP-sized).
    """
    out_factor, in_factor, *kernel_factors = factors
    rows = in_factor.t()  # [R, C_in]
    for kernel_factor in kernel_factors:
        rows = (rows.unsqueeze(-1) * kernel_factor.t().unsqueeze(1)).flatten(1)
    return rows, out_factor


def cp_add_to_weight(weight: Tensor, *factors: Tensor, scale: float, geometry: LayerGeometry) -> Tensor:
    """``weight + dW`` of the CP factors ``[U, V, K_1, ...]``: :func:`cp_as_lora_factors`, then LoRA's one GEMM."""
    lora_a, lora_b = cp_as_lora_factors(factors)
    return lora_add_to_weight(weight, lora_a, lora_b, scale=scale, geometry=geometry)
