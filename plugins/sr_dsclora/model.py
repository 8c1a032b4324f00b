"""SPAN: Swift Parameter-free Attention Network (Wan et al., arXiv 2405.00602).

Implemented from the paper's description: a 3x3 head conv, six SPABs, a 3x3 conv, a 1x1 conv over
``[head, block6, block1, block5-inner]`` and a pixel-shuffle tail. Each SPAB is three
re-parameterisable 3x3 convs with SiLU between them and the parameter-free attention
``(out3 + x) * (sigmoid(out3) - 0.5)``.

Choices the paper leaves open, stated here:

* ``Conv3XC`` training form is 1x1 expand (gain 2) -> 3x3 (no padding, on the zero-padded input)
  -> 1x1 reduce, plus a 1x1 skip; :meth:`Conv3XC.reparameterize` folds it into ``eval_conv`` and
  *drops* the branches, so the deployed model holds only the 3x3 kernels (state-dict keys
  ``*.eval_conv.weight``, the layout of the NTIRE-2025 DSCF checkpoint).
* Input is mean-subtracted (DIV2K RGB mean) and multiplied by ``img_range``; the output is divided
  by ``img_range`` and the mean added back, so the network predicts images in ``[0, 1]``.
* The ``channels=26, blocks=6`` default (:class:`~.config.SPANConfig`) is the DSCLoRA challenge model (130,828 parameters at x4).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import SPANConfig
from .functional import fuse_conv3xc

__all__ = ["Conv3XC", "SPAB", "SPAN", "build_span", "reparameterize", "is_deployed", "deployed_param_count"]

_DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class Conv3XC(nn.Module):
    """Re-parameterisable 3x3 conv: training branches, or one folded ``eval_conv`` once deployed."""

    def __init__(self, in_channels: int, out_channels: int, gain: int = 2) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.gain = in_channels, out_channels, gain
        self.sk: Optional[nn.Conv2d] = nn.Conv2d(in_channels, out_channels, 1)
        self.conv: Optional[nn.Sequential] = nn.Sequential(
            nn.Conv2d(in_channels, in_channels * gain, 1),
            nn.Conv2d(in_channels * gain, out_channels * gain, 3),
            nn.Conv2d(out_channels * gain, out_channels, 1),
        )
        self.eval_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.eval_conv.requires_grad_(False)  # derived from the branches until deployed
        self.sync_eval_conv()

    @property
    def deployed(self) -> bool:
        return self.conv is None

    def fused(self) -> tuple[Tensor, Tensor]:
        """The branches folded into one 3x3 ``(kernel, bias)``."""
        if self.deployed:
            return self.eval_conv.weight, self.eval_conv.bias
        e, m, r = self.conv
        return fuse_conv3xc(e.weight, e.bias, m.weight, m.bias, r.weight, r.bias, self.sk.weight, self.sk.bias)

    @torch.no_grad()
    def sync_eval_conv(self) -> None:
        """Copy the folded branches into ``eval_conv`` (used in ``eval()`` mode)."""
        if not self.deployed:
            kernel, bias = self.fused()
            self.eval_conv.weight.copy_(kernel)
            self.eval_conv.bias.copy_(bias)

    def reparameterize(self) -> None:
        """Fold the branches into ``eval_conv`` for good and delete them."""
        if self.deployed:
            return
        self.sync_eval_conv()
        self.sk = None
        self.conv = None
        self.eval_conv.requires_grad_(True)

    def train(self, mode: bool = True) -> "Conv3XC":
        super().train(mode)
        if not mode:
            self.sync_eval_conv()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed or not self.training:
            return self.eval_conv(x)
        return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)


class SPAB(nn.Module):
    """Swift parameter-free attention block. Returns ``(out, out1, attention)``."""

    def __init__(self, channels: int, gain: int = 2) -> None:
        super().__init__()
        self.c1_r = Conv3XC(channels, channels, gain)
        self.c2_r = Conv3XC(channels, channels, gain)
        self.c3_r = Conv3XC(channels, channels, gain)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out1 = self.c1_r(x)
        out2 = self.c2_r(F.silu(out1))
        out3 = self.c3_r(F.silu(out2))
        attention = torch.sigmoid(out3) - 0.5
        return (out3 + x) * attention, out1, attention


class SPAN(nn.Module):
    """SPAN super-resolution network; ``forward(lr [B,3,h,w] in [0,1]) -> sr [B,3,s*h,s*w]``.

    ``forward_features`` also returns the distillation taps: the six block outputs and the
    feature entering the pixel-shuffle tail (output of ``conv_cat``).
    """

    num_blocks = 6

    def __init__(self, config: Optional[SPANConfig] = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = SPANConfig(**overrides)
        elif overrides:
            raise TypeError(f"pass either config or keyword overrides, not both (got {sorted(overrides)})")
        self.config = config
        c, g = config.channels, config.gain
        mean = _DIV2K_MEAN if config.in_channels == 3 else (0.5,) * config.in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.conv_1 = Conv3XC(config.in_channels, c, g)
        for i in range(1, self.num_blocks + 1):
            self.add_module(f"block_{i}", SPAB(c, g))
        self.conv_cat = nn.Conv2d(4 * c, c, 1)
        self.conv_2 = Conv3XC(c, c, g)
        self.upsampler = nn.Sequential(
            nn.Conv2d(c, config.out_channels * config.scale**2, 3, padding=1), nn.PixelShuffle(config.scale)
        )

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x must be [B, {self.config.in_channels}, H, W], got shape {tuple(x.shape)}")
        x = (x - self.mean) * self.config.img_range
        head = self.conv_1(x)
        taps: list[Tensor] = []
        out, inner, _ = self.block_1(head)
        first = out
        taps.append(out)
        for i in range(2, self.num_blocks + 1):
            out, inner, _ = getattr(self, f"block_{i}")(out)
            taps.append(out)
        # ``inner`` is block 6's first conv output (SPAN's "out_b5_2").
        tail = self.conv_cat(torch.cat([head, self.conv_2(out), first, inner], dim=1))
        taps.append(tail)
        sr = self.upsampler(tail) / self.config.img_range + self.mean
        return sr, taps

    def forward(self, x: Tensor, return_features: bool = False):
        """``sr``, or ``(sr, taps)`` with ``return_features=True`` (goes through DDP's ``__call__``)."""
        sr, taps = self.forward_features(x)
        return (sr, taps) if return_features else sr


def build_span(scale: int = 4, channels: int = 26, **kwargs) -> SPAN:
    """SPAN in training form (re-parameterisable branches)."""
    return SPAN(SPANConfig(scale=scale, channels=channels, **kwargs))


def reparameterize(model: nn.Module) -> nn.Module:
    """Fold every :class:`Conv3XC` of ``model`` in place; returns ``model``."""
    for module in model.modules():
        if isinstance(module, Conv3XC):
            module.reparameterize()
    return model


def is_deployed(model: nn.Module) -> bool:
    return all(m.deployed for m in model.modules() if isinstance(m, Conv3XC))


def deployed_param_count(config: SPANConfig) -> int:
    """Parameters of the deployed SPAN, from the formula (3x3 convs with bias everywhere)."""
    c, cin, cout, s = config.channels, config.in_channels, config.out_channels, config.scale
    conv3 = lambda i, o: 9 * i * o + o  # noqa: E731
    return conv3(cin, c) + SPAN.num_blocks * 3 * conv3(c, c) + (4 * c * c + c) + conv3(c, c) + conv3(c, cout * s * s)

