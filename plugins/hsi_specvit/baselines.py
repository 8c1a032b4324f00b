"""Baseline for the HSI harness: a small HybridSN-like 3-D/2-D CNN.

HybridSN (Roy et al., "HybridSN: Exploring 3-D-2-D CNN Feature Hierarchy for Hyperspectral
Image Classification", IEEE GRSL 2020, arXiv 1902.06701): three Conv3d layers (spectral
kernels 7/5/3, spatial 3x3, 8/16/32 channels), the spectral axis folded into channels,
one 3x3 Conv2d (64), then two dense layers with dropout. Choices here: the dense widths
are 128/64 instead of 256/128 and spatial padding keeps small patches usable (the paper
uses 25x25 windows with valid convolutions); a global average pool precedes the dense
layers so any patch size works.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HybridSN"]


class HybridSN(nn.Module):
    """``[B, in_chans, P, P] -> [B, num_classes]``."""

    def __init__(self, in_chans: int = 15, num_classes: int = 8, img_size: int = 9, channels=(8, 16, 32),
                 kernels=(7, 5, 3), conv2d_channels: int = 64, hidden=(128, 64), dropout: float = 0.4):
        super().__init__()
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"in_chans and num_classes: expected >= 1, got {in_chans}, {num_classes}")
        self.in_chans, self.num_classes, self.img_size = in_chans, num_classes, img_size
        self.config = dict(in_chans=in_chans, num_classes=num_classes, img_size=img_size, channels=tuple(channels),
                           kernels=tuple(kernels), conv2d_channels=conv2d_channels, hidden=tuple(hidden), dropout=dropout)
        layers, c_in, depth = [], 1, in_chans
        for c, k in zip(channels, kernels):
            k_eff = min(k, depth)
            layers += [nn.Conv3d(c_in, c, (k_eff, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c), nn.ReLU()]
            c_in, depth = c, depth - k_eff + 1
        self.conv3d = nn.Sequential(*layers)
        self.conv2d = nn.Sequential(nn.Conv2d(c_in * depth, conv2d_channels, 3), nn.BatchNorm2d(conv2d_channels), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(conv2d_channels, hidden[0]), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected [B, {self.in_chans}, H, W] (in_chans={self.in_chans} bands), got {tuple(x.shape)}")
        y = self.conv3d(x.unsqueeze(1))  # [B, C, d, H, W]
        y = self.conv2d(y.flatten(1, 2))
        return self.head(self.fc(y.mean(dim=(2, 3))))
