"""DoRA: weight-decomposed low-rank adaptation on top of any linear update.

Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation" (arXiv 2402.09353):
``W' = m * (W + dW) / ||W + dW||`` with the norm taken per output channel (over C_in and every
kernel axis) and ``m`` initialised to ``||W||``. DoRA-C, convDoRA and CP-DoRA (arXiv
2508.01772) are this same decomposition with ``dW`` from LoRA-C, convLoRA and CP-LoRA.

Following the DoRA paper (Sec. 4.3) the norm is treated as a constant in backward by default
(``detach_norm=True``), which saves the memory of its graph; ``detach_norm=False`` keeps the
exact gradient.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .layout import LayerGeometry, weight_to_logical

__all__ = ["row_norm", "channel_norm", "init_magnitude", "dora_weight", "dora_output_scale", "lowrank_row_norm", "lowrank_output_scale", "dora_build"]


def row_norm(weight: Tensor) -> Tensor:
    """L2 norm of each output row of a logical ``[C_out, ...]`` kernel, shape ``[C_out]``."""
    return weight.flatten(1).norm(dim=1)


def channel_norm(weight: Tensor, out_dim: int = 0) -> Tensor:
    """L2 norm per output channel of a kernel in any layout (``out_dim`` is its output axis), in at least fp32."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    return torch.linalg.vector_norm(weight, dim=[d for d in range(weight.dim()) if d != out_dim], dtype=dtype)


def init_magnitude(weight: Tensor, geometry: LayerGeometry) -> Tensor:
    """``m`` at the start: ``||W||`` per output channel of the stored weight ``W``, in fp32 (detached)."""
    with torch.no_grad():
        return row_norm(weight_to_logical(weight, geometry).float())


def dora_output_scale(weight: Tensor, delta: Tensor, magnitude: Tensor, *, detach_norm: bool = True) -> Tensor:
    """Per-output-channel factor ``m / ||W + dW||``, shape ``[C_out]``."""
    norm = row_norm(weight + delta)
    if detach_norm:
        norm = norm.detach()
    return magnitude / norm


def dora_weight(direction: Tensor, magnitude: Tensor, *, out_dim: int = 0, detach_norm: bool = True) -> Tensor:
    """Adapted kernel ``m * V / ||V||`` of ``V = W + dW`` (any layout; ``out_dim`` is its output axis).

    The norm is accumulated in at least fp32 and the result keeps ``V``'s dtype.
    """
    norm = channel_norm(direction, out_dim)
    if detach_norm:
        norm = norm.detach()
    shape = [1] * direction.dim()
    shape[out_dim] = -1
    return direction * (magnitude.to(norm.dtype) / norm).to(direction.dtype).view(shape)


def lowrank_row_norm(weight_2d: Tensor, lora_a: Tensor, lora_b: Tensor, scale: float) -> Tensor:
    """``||W + scale * B @ A||`` per row without forming ``B @ A`` (O(out*in*r) work, O(out*r) memory).

    ``||W + sBA||^2 = ||W||^2 + 2s <W, BA> + s^2 ||BA||^2`` with ``<W, BA>_o = sum_r B[o, r] (W A^T)[o, r]``
    and ``||BA||^2_o = sum_r B[o, r] (B A A^T)[o, r]``.
    """
    weight_2d, lora_a, lora_b = weight_2d.float(), lora_a.float(), lora_b.float()
    cross = ((weight_2d @ lora_a.t()) * lora_b).sum(1)
    low = ((lora_b @ (lora_a @ lora_a.t())) * lora_b).sum(1)
    squared = weight_2d.square().sum(1) + 2.0 * scale * cross + scale * scale * low
    return squared.clamp_min(0).sqrt()


def lowrank_output_scale(weight_2d: Tensor, lora_a: Tensor, lora_b: Tensor, scale: float, magnitude: Tensor, *, detach_norm: bool = True) -> Tensor:
    """Per-output-channel factor ``m / ||W + scale * B @ A||`` (fp32) without forming ``B @ A``."""
    norm = lowrank_row_norm(weight_2d, lora_a, lora_b, scale)
    if detach_norm:
        norm = norm.detach()
    return magnitude.float() / norm


def dora_build(weight: Tensor, magnitude: Tensor, *factors: Tensor, build: Callable[..., Tensor], scale: float,
               geometry: LayerGeometry, detach_norm: bool = True) -> Tensor:
    """DoRA's whole weight build as one pure function: ``V = build(W, *factors)`` (``W + dW``), then ``m * V / ||V||``.

    ``build`` is a delta's ``*_add_to_weight`` function; the compiled path (``core.functional.compiled``) turns this
    into one generated function, so the norm and the magnitude scaling fuse with the merge.
    """
    direction = build(weight, *factors, scale=scale, geometry=geometry)
    return dora_weight(direction, magnitude, out_dim=geometry.weight_out_dim, detach_norm=detach_norm)
