"""The networks of the HSI plugin in plain PyTorch: LoLA-SpecViT (no timm, no adapters) and a HybridSN baseline.

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

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import SpecViTConfig

__all__ = ["SpecViTConfig", "LoLASpecViT", "HybridSN", "VARIANTS", "create_lola_specvit", "WindowAttention", "SwiGLU",
           "window_partition", "window_reverse"]


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
            rows = torch.arange(h + ph, device=x.device) >= h  # built from shapes alone: no host data, capturable
            cols = torch.arange(w + pw, device=x.device) >= w
            pad = (rows[:, None] | cols[None, :])[None, :, :, None]
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
        if global_pool not in (None, "avg", ""):
            raise ValueError(f"global_pool must be 'avg' (mean over tokens), got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class _ChannelsLastConv(nn.Module):
    """Stride-2 3x3 conv on ``[B, H, W, C]`` tensors (stage transition)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.reduction = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


VARIANTS: dict[str, dict[str, Any]] = {
    "lola_specvit_tiny": dict(img_size=9, frontend_channels=(8, 16, 32), embed_dim=48, depths=(2, 2), num_heads=(2, 4),
                              window_size=3, mlp_ratio=2.0),
    "lola_specvit_small": dict(img_size=11, frontend_channels=(16, 32, 64), embed_dim=64, depths=(2, 2, 4),
                               num_heads=(2, 4, 8), window_size=3, mlp_ratio=2.0),
    "lola_specvit_base": dict(img_size=15, frontend_channels=(32, 64, 96), embed_dim=96, depths=(3, 4, 19),
                              num_heads=(4, 8, 16), window_size=4, mlp_ratio=4.0),
}
"""Named sizes. The paper's abstract gives none; ``base`` follows the public code's widths and depths
(96/192/384, [3, 4, 19]); ``tiny`` is this package's CPU default (and the one with shipped weights)."""

_TIMM_BOOKKEEPING = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
"""Passed by ``timm.create_model`` to every entry point; they only describe where pretrained weights live."""


def _check_timm_options(variant: str, options: dict) -> dict:
    """Turn timm's generic options into this model's, or refuse them: an option is never silently dropped."""
    options = dict(options)
    for key in _TIMM_BOOKKEEPING:
        options.pop(key, None)
    if options.pop("features_only", False):
        raise ValueError(f"{variant}: features_only=True is not supported (a per-pixel classifier has no feature "
                         f"pyramid); use model.forward_features(x) for the last stage's [B, h, w, C] tokens")
    for key in ("drop_path_rate", "drop_block_rate"):
        if options.pop(key, 0.0):
            raise ValueError(f"{variant}: {key} is not supported (no stochastic depth / DropBlock); use drop_rate")
    pool = options.pop("global_pool", "avg")
    if pool not in ("avg", "", None):
        raise ValueError(f"{variant}: global_pool must be 'avg' (mean over tokens), got {pool!r}")
    accepted = set(SpecViTConfig.__dataclass_fields__) | {"device", "dtype"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"{variant}: unexpected option(s) {unknown}; accepted: {sorted(accepted)}")
    return options


def create_lola_specvit(variant: str, **options: Any) -> LoLASpecViT:
    """Build a named variant with ``options`` overriding :class:`SpecViTConfig` fields (``in_chans=...``).

    timm's options are honoured or refused: ``device``/``dtype`` place the model, ``global_pool='avg'``
    is the only pooling, and ``features_only``, ``drop_path_rate`` and ``drop_block_rate`` raise.
    """
    if variant not in VARIANTS:
        raise KeyError(f"variant: unknown {variant!r}; expected one of {sorted(VARIANTS)}")
    options = _check_timm_options(variant, options)
    device, dtype = options.pop("device", None), options.pop("dtype", None)
    model = LoLASpecViT(SpecViTConfig(**{**VARIANTS[variant], **options}))
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


class HybridSN(nn.Module):
    """Baseline for the HSI harness: a small HybridSN-like 3-D/2-D CNN.

    HybridSN (Roy et al., "HybridSN: Exploring 3-D-2-D CNN Feature Hierarchy for Hyperspectral
    Image Classification", IEEE GRSL 2020, arXiv 1902.06701): three Conv3d layers (spectral
    kernels 7/5/3, spatial 3x3, 8/16/32 channels), the spectral axis folded into channels,
    one 3x3 Conv2d (64), then two dense layers with dropout. Choices here: the dense widths
    are 128/64 instead of 256/128 and spatial padding keeps small patches usable (the paper
    uses 25x25 windows with valid convolutions); a global average pool precedes the dense
    layers so any patch size works.

    ``[B, in_chans, P, P] -> [B, num_classes]``.
    """

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
