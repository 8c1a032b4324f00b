"""Image metrics without downloaded weights (PSNR, SSIM; no LPIPS) and the comparison figure.

SSIM follows Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), C1 = (0.01)^2, C2 = (0.03)^2 for
images in [0, 1], computed per channel with 'valid' borders and averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "comparison_figure"]


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = F.mse_loss(pred.float().clamp(0, 1), target.float()).item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


def _gauss(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor) -> float:
    """Mean SSIM of two ``[H, W, 3]`` (or ``[N, H, W, 3]``) images in [0, 1]."""
    a = pred.float().clamp(0, 1).reshape(-1, *pred.shape[-3:]).permute(0, 3, 1, 2)
    b = target.float().reshape(-1, *target.shape[-3:]).permute(0, 3, 1, 2)
    size = min(11, a.shape[-1], a.shape[-2])
    g = _gauss(size, 1.5 * size / 11)
    c = a.shape[1]
    kx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def comparison_figure(rows: Sequence[tuple[str, Sequence[Tensor]]], path: str | Path, col_titles: Sequence[str] = ()) -> Path:
    """A grid of images: one row per ``(label, [H, W, 3] images)``; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_vision.core.files import save_figure

    n_cols = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.8 * n_cols, 1.9 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(imgs[c].clamp(0, 1).numpy())
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
    return save_figure(fig, path)
