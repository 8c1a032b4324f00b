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

from torch import Tensor

__all__ = ["row_norm", "dora_weight", "dora_output_scale", "lowrank_row_norm"]


def row_norm(weight: Tensor) -> Tensor:
    """L2 norm of each output row of a logical ``[C_out, ...]`` kernel, shape ``[C_out]``."""
    return weight.flatten(1).norm(dim=1)


def dora_output_scale(weight: Tensor, delta: Tensor, magnitude: Tensor, *, detach_norm: bool = True) -> Tensor:
    """Per-output-channel factor ``m / ||W + dW||``, shape ``[C_out]``."""
    norm = row_norm(weight + delta)
    if detach_norm:
        norm = norm.detach()
    return magnitude / norm


def dora_weight(weight: Tensor, delta: Tensor, magnitude: Tensor, *, detach_norm: bool = True) -> Tensor:
    """Logical adapted kernel ``m * (W + dW) / ||W + dW||``."""
    factor = dora_output_scale(weight, delta, magnitude, detach_norm=detach_norm)
    return (weight + delta) * factor.view(-1, *([1] * (weight.dim() - 1)))


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
