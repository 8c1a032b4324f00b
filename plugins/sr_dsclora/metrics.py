"""Super-resolution metrics in the usual benchmark convention, and the plots the app writes.

PSNR and SSIM are computed on the luma (Y) channel of ITU-R BT.601 YCbCr (``16..235`` range, as
MATLAB's ``rgb2ycbcr``), on 8-bit-quantised images, after cropping ``border`` pixels (the scale
factor) from every side. SSIM is Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5),
``K1 = 0.01``, ``K2 = 0.03``, ``L = 255``, valid convolution (no padding).

Plots (loss curves, side-by-side crops) are PNGs written atomically through
:func:`lowrank_vision.core.files.save_figure`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rgb_to_y", "quantize", "psnr_y", "ssim_y", "psnr", "ssim", "plot_history", "plot_comparison"]

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def quantize(img: Tensor) -> Tensor:
    """Clamp to ``[0, 1]`` and round to 8-bit levels (still float in ``[0, 1]``)."""
    return img.clamp(0, 1).mul(255).round().div(255)


def rgb_to_y(img: Tensor) -> Tensor:
    """``img [B, 3, H, W]`` or ``[3, H, W]`` in ``[0, 1]`` -> Y ``[B, 1, H, W]`` in ``[16, 235]``."""
    if img.dim() == 3:
        img = img.unsqueeze(0)
    if img.dim() != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f"img must be [B, 3, H, W] or [B, 1, H, W], got shape {tuple(img.shape)}")
    if img.shape[1] == 1:  # grey images: Y of (g, g, g)
        return img * sum(_Y_WEIGHTS) + 16.0
    w = img.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True) + 16.0


def _prepare(sr: Tensor, hr: Tensor, border: int) -> tuple[Tensor, Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    y_sr, y_hr = rgb_to_y(quantize(sr.double())), rgb_to_y(quantize(hr.double()))
    if border:
        if min(y_sr.shape[-2:]) <= 2 * border:
            raise ValueError(f"image of size {tuple(y_sr.shape[-2:])} is too small for border={border}")
        y_sr = y_sr[..., border:-border, border:-border]
        y_hr = y_hr[..., border:-border, border:-border]
    return y_sr, y_hr


def psnr(a: Tensor, b: Tensor, data_range: float = 255.0) -> Tensor:
    """Per-image PSNR of ``[B, C, H, W]`` tensors in ``[0, data_range]``; returns ``[B]``."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)  # identical images give +inf


def ssim(a: Tensor, b: Tensor, data_range: float = 255.0) -> Tensor:
    """Per-image SSIM of single-channel ``[B, 1, H, W]`` tensors; returns ``[B]``.

    The 11x11 Gaussian window is separable, so the five local moments are filtered by one 11x1 and
    one 1x11 pass over a stacked batch (the same numbers as the 2-D window, about 5x faster).
    """
    coords = torch.arange(11, dtype=torch.float64, device=a.device) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    a, b = a.double(), b.double()
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {tuple(a.shape[-2:])}")
    n = a.shape[0]
    stacked = torch.cat([a, b, a * a, b * b, a * b]).flatten(0, 1).unsqueeze(1)  # [5B, 1, H, W]
    filtered = F.conv2d(F.conv2d(stacked, g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))
    mu_a, mu_b, e_aa, e_bb, e_ab = filtered.view(5, n, *filtered.shape[-2:])
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)


def psnr_y(sr: Tensor, hr: Tensor, border: int = 0) -> float:
    """Mean Y-channel PSNR (dB) of RGB images in ``[0, 1]``, ``border`` pixels cropped."""
    y_sr, y_hr = _prepare(sr, hr, border)
    return psnr(y_sr, y_hr).mean().item()


def ssim_y(sr: Tensor, hr: Tensor, border: int = 0) -> float:
    """Mean Y-channel SSIM of RGB images in ``[0, 1]``, ``border`` pixels cropped."""
    y_sr, y_hr = _prepare(sr, hr, border)
    return ssim(y_sr, y_hr).mean().item()


def plot_history(history: Sequence[dict], path: Union[str, Path], keys: Sequence[str] = ("loss",), title: str = "") -> Path:
    """Training curves (one line per key present in the logged metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_vision.core.files import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in keys:
        if any(key in h for h in history):
            ax.plot(steps, [h.get(key, float("nan")) for h in history], label=key)
    ax.set_xlabel("optimizer step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return save_figure(fig, Path(path), dpi=110)


def plot_comparison(panels: Sequence[tuple[str, Tensor]], path: Union[str, Path], crop: Optional[tuple[int, int, int]] = None) -> Path:
    """Side-by-side images ``[(title, img [3, H, W])]``; ``crop=(y, x, size)`` zooms into a region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_vision.core.files import save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (title, img) in zip(axes, panels):
        if crop is not None:
            y, x, size = crop
            img = img[:, y : y + size, x : x + size]
        ax.imshow(img.clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return save_figure(fig, Path(path), dpi=110)
