"""LoLA-SpecViT backbone in plain PyTorch (no timm, no adapters).

Paper: "LoLA-SpecViT: Local Attention SwiGLU Vision Transformer with LoRA for
Hyperspectral Imaging", arXiv 2506.17759. The abstract gives the parts: a 3-D
convolutional spectral front-end, local window self-attention, SwiGLU MLPs, and LoRA
in the attention and projection layers (inserted afterwards by
``lowrank_vision.core.apply``; this file only names the layers ``qkv``, ``proj``,
``fc1``, ``fc2``, ``spectral_proj`` so that glob targets find them).

Choices the paper's abstract leaves open (and what this file does):

* Front-end: three Conv3d+BN+SiLU layers with spectral kernels 7/5/3 and 3x3 spatial
  kernels (the HybridSN ladder the public code uses), spatial padding 1 (size kept),
  no spectral padding; then a squeeze-excitation over channels and a mean over the
  remaining spectral axis, followed by a 1x1 ``spectral_proj`` to the embedding width.
  The public code's BandDropout is kept as ``band_dropout`` (drops whole input bands).
* Tokens: a stride-2 3x3 conv patch embedding plus a learned position embedding.
* Attention: non-overlapping ``window x window`` windows with a relative position bias.
  Unlike the public code, windows that need padding use a key mask, so no token attends
  to padding.
* Between stages: LayerNorm + stride-2 3x3 conv doubling the width.
* MLP: SwiGLU ``fc2(SiLU(a) * b)`` with ``[a, b] = fc1(x)`` and hidden width
  ``mlp_ratio * dim`` (one gate, not the public code's LoRA-SwiGLU-LoRA sandwich).
* Head: mean over tokens, LayerNorm, Linear (``head``), timm style (``forward_features``,
  ``forward_head``, ``reset_classifier``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpecViTConfig", "LoLASpecViT", "WindowAttention", "SwiGLU", "window_partition", "window_reverse"]


@dataclass(frozen=True)
class SpecViTConfig:
    """Architecture of one LoLA-SpecViT variant."""

    in_chans: int = 15
    """Input bands (PCA components)."""
    num_classes: int = 8
    img_size: int = 9
    """Patch side in pixels (the position embedding is sized for it)."""
    frontend_channels: tuple = (8, 16, 32)
    spectral_kernels: tuple = (7, 5, 3)
    embed_dim: int = 48
    depths: tuple = (2, 2)
    num_heads: tuple = (2, 4)
    window_size: int = 3
    mlp_ratio: float = 2.0
    band_dropout: float = 0.0
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.in_chans < 1:
            raise ValueError(f"in_chans: expected >= 1, got {self.in_chans}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes: expected >= 0, got {self.num_classes}")
        if self.img_size < 3:
            raise ValueError(f"img_size: expected >= 3, got {self.img_size}")
        if len(self.frontend_channels) != len(self.spectral_kernels):
            raise ValueError("frontend_channels and spectral_kernels: expected equal lengths")
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"num_heads: expected one per stage ({len(self.depths)}), got {len(self.num_heads)}")
        for i, h in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % h:
                raise ValueError(f"num_heads[{i}]: {h} does not divide the stage width {self.embed_dim * 2**i}")
        if self.window_size < 1:
            raise ValueError(f"window_size: expected >= 1, got {self.window_size}")


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``[B, H, W, C]`` (H, W multiples of ws) -> ``[B * nW, ws * ws, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """``[B * nW, ws * ws, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``ws x ws`` windows, with relative position bias and a padding mask."""

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads, self.ws = num_heads, window_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B*nW, N, C]``; ``key_mask [B*nW, N]`` true for padding tokens (never attended to)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)  # [1, heads, N, N]
        if key_mask is not None:
            bias = bias.masked_fill(key_mask[:, None, None, :], float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwiGLU(nn.Module):
    """``fc2(SiLU(a) * b)``, ``[a, b] = fc1(x)`` (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.drop(F.silu(a) * b))


class LocalBlock(nn.Module):
    """Pre-LN window attention + pre-LN SwiGLU, on ``[B, H, W, C]``."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, drop: float):
        super().__init__()
        self.ws = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.ws
        ph, pw = (-h) % ws, (-w) % ws
        y = F.pad(self.norm1(x), (0, 0, 0, pw, 0, ph))
        mask = None
        if ph or pw:
            pad = torch.zeros(1, h + ph, w + pw, 1, dtype=torch.bool, device=x.device)
            pad[:, h:, :, :] = True
            pad[:, :, w:, :] = True
            mask = window_partition(pad, ws)[..., 0].repeat(b, 1)
        y = window_partition(y, ws)
        y = window_reverse(self.attn(y, mask), ws, h + ph, w + pw)[:, :h, :w]
        x = x + y
        return x + self.mlp(self.norm2(x))


class SpectralFrontEnd(nn.Module):
    """3-D conv ladder over (bands, H, W), SE gate, spectral mean, 1x1 projection: ``[B, k, H, W] -> [B, D, H, W]``."""

    def __init__(self, in_chans: int, channels: Sequence[int], kernels: Sequence[int], out_dim: int, band_dropout: float):
        super().__init__()
        layers, c_in, depth = [], 1, in_chans
        for c, k in zip(channels, kernels):
            k_eff = min(k, depth)  # few-band inputs (e.g. RGB-NIR GeoTIFFs) shrink the spectral kernel
            layers += [nn.Conv3d(c_in, c, (k_eff, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(c), nn.SiLU()]
            c_in, depth = c, depth - k_eff + 1
        self.convs = nn.Sequential(*layers)
        self.band_dropout = band_dropout
        hidden = max(c_in // 4, 4)
        self.se = nn.Sequential(nn.Linear(c_in, hidden), nn.SiLU(), nn.Linear(hidden, c_in), nn.Sigmoid())
        self.spectral_proj = nn.Conv2d(c_in, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.band_dropout > 0:
            keep = (torch.rand(x.shape[0], x.shape[1], 1, 1, device=x.device) > self.band_dropout).to(x.dtype)
            x = x * keep / (1.0 - self.band_dropout)
        y = self.convs(x.unsqueeze(1))  # [B, C, d, H, W]
        y = y * self.se(y.mean(dim=(2, 3, 4)))[:, :, None, None, None]
        return self.spectral_proj(y.mean(dim=2))


class LoLASpecViT(nn.Module):
    """Spectral 3-D conv front-end + hierarchical local-window transformer + linear head.

    Input ``[B, in_chans, img_size, img_size]`` (a PCA-reduced patch centred on the pixel to
    classify); output ``[B, num_classes]`` logits.
    """

    def __init__(self, cfg: SpecViTConfig | None = None, **kwargs):
        super().__init__()
        if cfg is None:
            cfg = SpecViTConfig(**kwargs)
        elif kwargs:
            cfg = SpecViTConfig(**{**cfg.__dict__, **kwargs})
        self.cfg = cfg
        self.num_classes, self.in_chans = cfg.num_classes, cfg.in_chans
        d = cfg.embed_dim
        self.frontend = SpectralFrontEnd(cfg.in_chans, cfg.frontend_channels, cfg.spectral_kernels, d, cfg.band_dropout)
        self.patch_embed = nn.Conv2d(d, d, 3, stride=2, padding=1)
        grid = (cfg.img_size + 1) // 2
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            dim = d * 2**i
            if i > 0:
                self.downsamples.append(nn.Sequential(nn.LayerNorm(dim // 2), _ChannelsLastConv(dim // 2, dim)))
            self.stages.append(nn.Sequential(*[LocalBlock(dim, heads, cfg.window_size, cfg.mlp_ratio, cfg.drop_rate)
                                               for _ in range(depth)]))
        self.num_features = d * 2 ** (len(cfg.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, k, P, P] -> [B, h, w, C]`` tokens of the last stage."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected [B, {self.in_chans}, H, W] (in_chans={self.in_chans} bands), got {tuple(x.shape)}")
        y = self.patch_embed(self.frontend(x)).permute(0, 2, 3, 1)
        if y.shape[1:3] == self.pos_embed.shape[1:3]:
            y = y + self.pos_embed
        else:  # other patch sizes: resample the position embedding
            y = y + F.interpolate(self.pos_embed.permute(0, 3, 1, 2), size=y.shape[1:3], mode="bilinear",
                                  align_corners=False).permute(0, 2, 3, 1)
        for i, stage in enumerate(self.stages):
            if i > 0:
                y = self.downsamples[i - 1](y)
            y = stage(y)
        return y

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.norm(x.mean(dim=(1, 2))))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class _ChannelsLastConv(nn.Module):
    """Stride-2 3x3 conv on ``[B, H, W, C]`` tensors (stage transition)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.reduction = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
