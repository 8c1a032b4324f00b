"""convLoRA: the loralib ConvLoRA parametrisation, generalised to 1-D, 2-D and 3-D kernels.

Aleem et al., "ConvLoRA and AdaBN based Domain Adaptation via Self-Training" (arXiv 2402.04964),
using microsoft/loralib's ConvLoRA form: ``A`` is ``[r*k, C_in*k]``, ``B`` is
``[C_out*k^(d-1), r*k]`` and ``B @ A`` (``C_out*k^(d-1) x C_in*k``) is reshaped to the
``[C_out, C_in, k, ..., k]`` kernel. The original only reshapes correctly for d = 2; the
``k^(d-1)`` row factor makes it exact for any d. The form needs a cubic kernel (all k equal);
on Linear/Embedding (d = 0, k = 1) it is plain LoRA.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .layout import LayerGeometry, logical_to_weight
from .lora import lora_delta

__all__ = ["conv_lora_shapes", "init_conv_lora_factors", "conv_lora_delta", "conv_lora_param_count", "conv_lora_unsupported_reason", "conv_lora_add_to_weight"]


def _edge(geometry: LayerGeometry) -> int:
    return geometry.kernel_size[0] if geometry.kernel_size else 1


def conv_lora_unsupported_reason(geometry: LayerGeometry) -> Optional[str]:
    if geometry.kernel_size and len(set(geometry.kernel_size)) != 1:
        return f"convLoRA needs equal kernel sizes on every axis, got {geometry.kernel_size}"
    return None


def conv_lora_shapes(geometry: LayerGeometry, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of ``A`` and ``B``."""
    k, d = _edge(geometry), geometry.ndim
    a_shape = (rank * k, geometry.in_channels * k)
    b_shape = (geometry.out_channels * k ** max(d - 1, 0), rank * k)
    return a_shape, b_shape


def conv_lora_param_count(geometry: LayerGeometry, rank: int) -> int:
    (a0, a1), (b0, b1) = conv_lora_shapes(geometry, rank)
    return a0 * a1 + b0 * b1


def init_conv_lora_factors(
    geometry: LayerGeometry, rank: int, *, dtype=None, device=None, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """``A`` uniform with bound ``1/sqrt(C_in*k)`` (Kaiming, a=sqrt(5), as loralib), ``B`` zero."""
    a_shape, b_shape = conv_lora_shapes(geometry, rank)
    bound = 1.0 / math.sqrt(a_shape[1])
    lora_a = torch.empty(a_shape, dtype=dtype, device=device).uniform_(-bound, bound, generator=generator)
    lora_b = torch.zeros(b_shape, dtype=dtype, device=device)
    return lora_a, lora_b


def conv_lora_delta(lora_a: Tensor, lora_b: Tensor, geometry: LayerGeometry, scale: float) -> Tensor:
    """Logical ``[C_out, C_in, *k]`` update ``scale * reshape(B @ A)``: LoRA's product, with convLoRA's factor shapes."""
    return lora_delta(lora_a, lora_b, geometry, scale)


def conv_lora_add_to_weight(weight: Tensor, lora_a: Tensor, lora_b: Tensor, *, scale: float, geometry: LayerGeometry) -> Tensor:
    """``weight + scale * reshape(B @ A)`` in the stored layout."""
    return weight + logical_to_weight(conv_lora_delta(lora_a, lora_b, geometry, scale), geometry).to(weight.dtype)
