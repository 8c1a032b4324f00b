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

__all__ = ["row_norm", "dora_weight", "dora_output_scale"]


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
