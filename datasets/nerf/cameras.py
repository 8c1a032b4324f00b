"""Pinhole camera rays in the OpenGL/Blender convention of ``transforms.json`` (camera looks along -z, +y up)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["camera_rays"]


def camera_rays(c2w: Tensor, height: int, width: int, fx: float, fy: float, cx: float, cy: float) -> tuple[Tensor, Tensor]:
    """Origins and unit directions ``[H*W, 3]`` of the pixel centres of one camera (row-major)."""
    j, i = torch.meshgrid(torch.arange(height, dtype=c2w.dtype, device=c2w.device) + 0.5,
                          torch.arange(width, dtype=c2w.dtype, device=c2w.device) + 0.5, indexing="ij")
    dirs = torch.stack([(i - cx) / fx, -(j - cy) / fy, -torch.ones_like(i)], dim=-1).reshape(-1, 3)
    d = dirs @ c2w[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    return c2w[:3, 3].expand_as(d).contiguous(), d
