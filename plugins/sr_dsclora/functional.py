"""Pure tensor math of the SR plugin: Conv3XC re-parameterisation and spatial-affinity distillation.

No state and no ``nn.Module`` here; the module shells in :mod:`.span` and :mod:`.distill` call these.

* Re-parameterisation (SPAN, Wan et al., "Swift Parameter-free Attention Network for Efficient
  Super-Resolution", arXiv 2405.00602): a 1x1 expand -> 3x3 -> 1x1 reduce chain plus a 1x1 skip is
  linear, so it folds into one 3x3 kernel and bias.
* Spatial affinity (FAKD, He et al., "Feature-Affinity Based Knowledge Distillation for Efficient
  Image Super-Resolution", ICIP 2020; used by DSCLoRA, arXiv 2504.11271): normalise every pixel's
  feature vector over channels, take the ``HW x HW`` Gram matrix, compare teacher and student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "fuse_conv3xc",
    "expand_to_conv3xc",
    "spatial_affinity",
    "affinity_distance",
]


def fuse_conv3xc(
    w_expand: Tensor,
    b_expand: Tensor,
    w_mid: Tensor,
    b_mid: Tensor,
    w_reduce: Tensor,
    b_reduce: Tensor,
    w_skip: Tensor,
    b_skip: Tensor,
) -> tuple[Tensor, Tensor]:
    """Fold ``reduce(mid(expand(pad(x)))) + skip(x)`` into one zero-padded 3x3 conv.

    Shapes: ``w_expand [G*Ci, Ci, 1, 1]``, ``w_mid [G*Co, G*Ci, 3, 3]``, ``w_reduce [Co, G*Co, 1, 1]``,
    ``w_skip [Co, Ci, 1, 1]``; biases are 1-D. Returns ``(kernel [Co, Ci, 3, 3], bias [Co])``.

    The training form pads ``x`` with zeros *before* the expand conv, so padded pixels carry
    ``b_expand`` into the 3x3; the folded conv pads after, and the fold puts ``w_mid * b_expand``
    into the bias. Both forms are therefore equal on the border too (tested).
    """
    e = w_expand.flatten(1)  # [G*Ci, Ci]
    r = w_reduce.flatten(1)  # [Co, G*Co]
    # kernel[o, i] = sum_m sum_n r[o, m] w_mid[m, n] e[n, i]
    kernel = torch.einsum("om,mnhw,ni->oihw", r, w_mid, e)
    mid_bias = w_mid.sum(dim=(2, 3)) @ b_expand + b_mid  # [G*Co]
    bias = r @ mid_bias + b_reduce
    kernel = kernel.clone()
    kernel[:, :, 1, 1] += w_skip.flatten(1)
    return kernel, bias + b_skip


def expand_to_conv3xc(kernel: Tensor, bias: Tensor, gain: int) -> dict[str, Tensor]:
    """Branch weights whose :func:`fuse_conv3xc` equals ``(kernel, bias)``.

    Used by the exporter: original-SPAN loaders (e.g. spandrel) require the training-form keys
    ``sk``/``conv.0``/``conv.1``/``conv.2`` and recompute ``eval_conv`` from them. We write identity
    1x1 expand/reduce (into the first ``Ci``/``Co`` channels), the kernel in the 3x3 and a zero skip.
    """
    if gain < 1:
        raise ValueError(f"gain must be >= 1, got {gain}")
    co, ci = kernel.shape[:2]
    w_expand = torch.zeros(gain * ci, ci, 1, 1, dtype=kernel.dtype)
    w_expand[:ci, :, 0, 0] = torch.eye(ci, dtype=kernel.dtype)
    w_mid = torch.zeros(gain * co, gain * ci, 3, 3, dtype=kernel.dtype)
    w_mid[:co, :ci] = kernel
    b_mid = torch.zeros(gain * co, dtype=kernel.dtype)
    b_mid[:co] = bias
    w_reduce = torch.zeros(co, gain * co, 1, 1, dtype=kernel.dtype)
    w_reduce[:, :co, 0, 0] = torch.eye(co, dtype=kernel.dtype)
    return {
        "conv.0.weight": w_expand,
        "conv.0.bias": torch.zeros(gain * ci, dtype=kernel.dtype),
        "conv.1.weight": w_mid,
        "conv.1.bias": b_mid,
        "conv.2.weight": w_reduce,
        "conv.2.bias": torch.zeros(co, dtype=kernel.dtype),
        "sk.weight": torch.zeros(co, ci, 1, 1, dtype=kernel.dtype),
        "sk.bias": torch.zeros(co, dtype=kernel.dtype),
    }


def spatial_affinity(feature: Tensor, max_side: int = 16) -> Tensor:
    """Second-order spatial affinity ``S = F^T F`` of ``feature [B, C, H, W]`` -> ``[B, HW', HW']``.

    Each pixel's feature vector is L2-normalised over channels first, so ``S`` holds cosine
    similarities between positions. The paper leaves the memory problem open (``S`` is ``HW x HW``);
    we average-pool the map so that neither side exceeds ``max_side`` (16 by default, 256 positions)
    before forming ``S``.
    """
    if feature.dim() != 4:
        raise ValueError(f"feature must be [B, C, H, W], got shape {tuple(feature.shape)}")
    h, w = feature.shape[-2:]
    if h > max_side or w > max_side:
        feature = F.adaptive_avg_pool2d(feature, (min(h, max_side), min(w, max_side)))
    flat = F.normalize(feature.flatten(2), dim=1, eps=1e-6)  # [B, C, HW]
    return flat.transpose(1, 2) @ flat


def affinity_distance(student: Tensor, teacher: Tensor, max_side: int = 16) -> Tensor:
    """Mean absolute difference of the spatial affinities (FAKD's L1 form)."""
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"student and teacher features must share batch and spatial size, got {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    return (spatial_affinity(student, max_side) - spatial_affinity(teacher, max_side)).abs().mean()
