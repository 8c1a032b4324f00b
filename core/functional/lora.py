"""LoRA and LoRA-C: ``dW = scale * B @ A`` reshaped to the kernel.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv 2106.09685). On a
convolution this is the layer-wise form that Ding et al. call LoRA-C (arXiv 2410.16954) and
that the SAH hemorrhage paper (arXiv 2508.01772) compares against: ``B`` is ``[C_out, r]``,
``A`` is ``[r, C_in * prod(k)]`` and the product is reshaped to the logical kernel. In
activation space this is a convolution with the layer's own geometry down to ``r`` channels
followed by a 1x1 convolution up to ``C_out`` (PEFT's Conv -> Conv1x1 form).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layout import LayerGeometry, layer_forward, logical_to_weight

__all__ = ["init_lora_factors", "lora_delta", "lora_bypass", "low_rank_down", "low_rank_up", "lora_param_count", "lora_bypass_supported", "lora_add_to_weight"]


def lora_param_count(geometry: LayerGeometry, rank: int) -> int:
    """``r * (C_out + C_in * prod(k))``."""
    return rank * (geometry.out_channels + geometry.fan_in)


def init_lora_factors(
    geometry: LayerGeometry, rank: int, *, dtype=None, device=None, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """``A`` Kaiming-uniform (a=sqrt(5), as ``nn.Linear``), ``B`` zero, so that ``dW = 0`` at start."""
    bound = 1.0 / math.sqrt(geometry.fan_in)
    lora_a = torch.empty(rank, geometry.fan_in, dtype=dtype, device=device).uniform_(-bound, bound, generator=generator)
    lora_b = torch.zeros(geometry.out_channels, rank, dtype=dtype, device=device)
    return lora_a, lora_b


def addmm_scaled(base: Tensor, m1: Tensor, m2: Tensor, scale, beta: float = 1.0) -> Tensor:
    """``beta * base + scale * m1 @ m2`` as one addmm. ``scale`` is a number (addmm's ``alpha``) or a 0-d tensor --
    a schedule filled in place between the steps of a captured CUDA graph -- which scales ``m1`` instead, since
    ``alpha`` would read it back to the host (a sync that capture refuses). Put the smaller factor first."""
    if isinstance(scale, Tensor):
        return torch.addmm(base, m1 * scale.to(m1.dtype), m2, beta=beta)
    return torch.addmm(base, m1, m2, beta=beta, alpha=scale)


def lora_delta(lora_a: Tensor, lora_b: Tensor, geometry: LayerGeometry, scale: float) -> Tensor:
    """Logical ``[C_out, C_in, *k]`` update ``scale * (B @ A)``."""
    return (lora_b @ lora_a).mul(scale).reshape(geometry.logical_shape)


def lora_bypass_supported(geometry: LayerGeometry) -> bool:
    """The two-op activation path exists for every layer but grouped convolutions."""
    return geometry.groups == 1


def low_rank_down(layer: nn.Module, x: Tensor, lora_a: Tensor, geometry: LayerGeometry, **kw) -> Tensor:
    """``A(x)``: the layer's own op (stride, padding, ...) down to ``r`` channels; channels last for Linear/Embedding."""
    if geometry.kind == "linear":
        return F.linear(x, lora_a)
    if geometry.kind == "embedding":
        return layer_forward(layer, x, lora_a.t())
    down = lora_a.reshape(lora_a.shape[0], geometry.in_channels, *geometry.kernel_size)
    if geometry.kind == "conv_transpose":
        down = down.transpose(0, 1)
    return layer_forward(layer, x, down, groups=1, **kw)


def low_rank_up(hidden: Tensor, lora_b: Tensor, geometry: LayerGeometry) -> Tensor:
    """``B h``: a Linear on the last axis, or a 1x1 convolution on channel axis 1."""
    if geometry.channel_dim == -1:
        return F.linear(hidden, lora_b)
    up = lora_b.reshape(geometry.out_channels, lora_b.shape[1], *([1] * geometry.ndim))
    return (F.conv1d, F.conv2d, F.conv3d)[geometry.ndim - 1](hidden, up)


def lora_bypass(layer: nn.Module, x: Tensor, lora_a: Tensor, lora_b: Tensor, geometry: LayerGeometry, scale: float, **kw) -> Tensor:
    """``scale * B(A(x))`` computed on activations: the layer's op down to ``r`` channels, then 1x1 up."""
    return low_rank_up(low_rank_down(layer, x, lora_a, geometry, **kw), lora_b, geometry) * scale


def lora_add_to_weight(weight: Tensor, lora_a: Tensor, lora_b: Tensor, *, scale: float, geometry: LayerGeometry) -> Tensor:
    """``weight + scale * B @ A`` in the stored layout ``weight`` has.

    Linear and convolutions: one addmm on ``W`` viewed as ``[C_out, C_in*prod(k)]``, outside autocast and in the
    weight's dtype (the layer's op casts the result once, as it casts ``W`` in full fine-tuning, instead of
    three extra casts per call). Transposed convolutions and embeddings: the logical update mapped to their layout.
    """
    if geometry.kind not in ("linear", "conv"):
        return weight + logical_to_weight(lora_delta(lora_a, lora_b, geometry, scale), geometry).to(weight.dtype)
    with torch.autocast(weight.device.type, enabled=False):
        flat = weight.reshape(weight.shape[0], -1)
        return addmm_scaled(flat, lora_b.to(weight.dtype), lora_a.to(weight.dtype), scale).view(weight.shape)
