"""TracksTo4D-style encoder: 2-D tracks -> cameras + a low-rank 3-D motion model (arXiv 2404.07097).

Inputs are tracks in normalised image coordinates (``K⁻¹ [x, y, 1]``) with a visibility flag, shape
[B, T, N, 3]. Each (frame, point) token gets a NeRF-style positional encoding of its three values plus a
constant 1, LayerNorm -> Linear -> LayerNorm to the width, and a sin-cos encoding of the frame index.
Blocks alternate self-attention across frames (per point) and across points (per frame); nothing
carries the point index, so the network is equivariant to the order of the points.

Heads (paper): per-frame features = mean over points -> circular ``Conv1d`` -> rotation (6-D,
Gram-Schmidt), translation, focal correction, K-1 motion coefficients (coefficient 0 is fixed to 1);
per-point features = mean over frames -> ``Linear`` -> K basis 3-D points and the uncertainty γ.
A point at frame t is ``X_p(t) = B_p0 + Σ_{k>=1} c_k(t) B_pk``; with K = 1 the scene is rigid.

Choices the paper leaves open or that differ from it (CPU-sized training):

* cameras are world -> camera, ``x_cam = R X + t`` (the paper predicts camera-to-world);
* the static basis point is predicted as a residual around the back-projection of the point's mean
  visible observation at depth ``init_depth`` (depth scaled by ``exp``), and the other basis points
  are scaled by ``init_depth``; with zero head outputs every camera is the identity and every track
  is re-projected onto its mean observation, so training starts from a consistent configuration
  instead of the paper's pose pre-training phase;
* γ = ``gamma_scale`` · (ELU + 1) + 1e-5 (the paper's ELU + 1 with a scale for normalised coordinates);
* the output layers of the heads start at 1 % of PyTorch's default initialisation;
* under mixed precision only the trunk runs in bf16/fp16: heads, decoding and projection stay float32
  (sub-pixel reprojection needs more than bf16's 8-bit mantissa).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = ["TracksTo4DNet", "SceneParameters", "positional_encoding", "rotation_from_6d", "decode_motion",
           "project", "frame_encoding"]


def positional_encoding(x: torch.Tensor, octaves: int) -> torch.Tensor:
    """``[x, sin(2^j π x), cos(2^j π x)]`` for j < octaves: [..., C] -> [..., C (1 + 2·octaves)]."""
    freqs = (2.0 ** torch.arange(octaves, device=x.device, dtype=x.dtype)) * math.pi
    ang = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, torch.sin(ang), torch.cos(ang)], dim=-1)


def frame_encoding(frames: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Transformer sin-cos encoding of the frame index, [T, width]."""
    pos = torch.arange(frames, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    pe = torch.zeros(frames, width, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : width // 2]
    return pe.to(dtype or torch.float32)


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt of two 3-vectors (Zhou et al. 2019): [..., 6] -> rotation matrices [..., 3, 3] (columns b1 b2 b3)."""
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def project(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor, focal: torch.Tensor, min_depth: float):
    """Pinhole projection in normalised coordinates.

    points [B, T, N, 3] (or [B, 1, N, 3]) world; R [B, T, 3, 3]; t [B, T, 3]; focal [B, T] (scale of f0).
    Returns (uv [B, T, N, 2], z [B, T, N]).
    """
    cam = torch.einsum("btij,btnj->btni", R, points.expand(-1, R.shape[1], -1, -1)) + t[:, :, None]
    z = cam[..., 2]
    uv = focal[..., None, None] * cam[..., :2] / z.clamp(min=min_depth)[..., None]
    return uv, z


def decode_motion(frame_raw: torch.Tensor, point_raw: torch.Tensor, obs_mean: torch.Tensor, config: ModelConfig,
                  focal_known: torch.Tensor) -> dict:
    """Raw head outputs -> cameras and the low-rank motion model (shared by the network and the baseline).

    frame_raw [B, T, 10 + K - 1] = (rot6d 6, translation 3, focal 1, coefficients K-1);
    point_raw [B, N, 3K + 1] = (K basis points, γ); obs_mean [B, N, 2] mean visible normalised observation;
    focal_known [B] bool (no focal correction where True).
    """
    K = config.num_basis
    d0 = config.init_depth
    identity_6d = torch.eye(3, dtype=frame_raw.dtype, device=frame_raw.device)[:2].flatten()  # made on the device: no host copy
    rot = rotation_from_6d(frame_raw[..., :6] + identity_6d)
    trans = frame_raw[..., 6:9] * d0
    focal = 1.0 + config.focal_range * frame_raw[..., 9]
    focal = torch.where(focal_known[:, None], torch.ones_like(focal), focal)
    ones = frame_raw.new_ones(frame_raw.shape[:2] + (1,))
    coeffs = torch.cat([ones, frame_raw[..., 10:10 + K - 1]], dim=-1)  # [B, T, K]
    basis_raw = point_raw[..., : 3 * K].unflatten(-1, (K, 3))  # [B, N, K, 3]
    z0 = d0 * torch.exp(basis_raw[..., 0, 2].clamp(max=10.0))
    static = torch.stack([(obs_mean[..., 0] + basis_raw[..., 0, 0]) * z0, (obs_mean[..., 1] + basis_raw[..., 0, 1]) * z0, z0], dim=-1)
    basis = torch.cat([static[..., None, :], basis_raw[..., 1:, :] * d0], dim=-2)
    gamma = config.gamma_scale * (F.elu(point_raw[..., 3 * K]) + 1.0) + 1e-5
    points = torch.einsum("btk,bnkd->btnd", coeffs, basis)
    return {"R": rot, "t": trans, "focal": focal, "coefficients": coeffs, "basis": basis, "gamma": gamma, "points": points}


def mean_observation(obs: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean normalised observation of each track over its visible frames: [B, T, N, 2] -> [B, N, 2]."""
    w = visible.to(obs.dtype)[..., None]
    return (obs * w).sum(1) / w.sum(1).clamp(min=1.0)


class _Block(nn.Module):
    """Attention across frames (per point), then across points (per frame); pre-LN residual layers."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()

        def layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)

        self.across_frames = layer()
        self.across_points = layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, N, C]
        B, T, N, C = x.shape
        x = self.across_frames(x.transpose(1, 2).reshape(B * N, T, C)).reshape(B, N, T, C).transpose(1, 2)
        x = self.across_points(x.reshape(B * T, N, C)).reshape(B, T, N, C)
        return x


class TracksTo4DNet(nn.Module):
    """Tracks [B, T, N, 2] (normalised) + visibility [B, T, N] -> cameras, basis, coefficients, γ, points."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        c = config
        in_dim = 3 * (1 + 2 * c.octaves) + 1
        self.embed = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, c.width), nn.LayerNorm(c.width))
        self.blocks = nn.ModuleList(_Block(c.width, c.heads, c.width * c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width)
        self.frame_head = nn.Conv1d(c.width, 10 + c.num_basis - 1, c.conv_kernel, padding=c.conv_kernel // 2, padding_mode="circular")
        self.point_head = nn.Linear(c.width, 3 * c.num_basis + 1)
        with torch.no_grad():
            for head in (self.frame_head, self.point_head):
                head.weight.mul_(0.01)
                head.bias.zero_()

    def forward(self, tracks: torch.Tensor, visible: torch.Tensor, focal_known: torch.Tensor | None = None) -> dict:
        if tracks.ndim != 4 or tracks.shape[-1] != 2:
            raise ValueError(f"tracks must have shape [B, T, N, 2], got {list(tracks.shape)}")
        if visible.shape != tracks.shape[:3]:
            raise ValueError(f"visible must have shape {list(tracks.shape[:3])}, got {list(visible.shape)}")
        B, T, N, _ = tracks.shape
        vis = visible.to(tracks.dtype)
        tokens = torch.cat([tracks * vis[..., None], vis[..., None]], dim=-1)
        feats = torch.cat([positional_encoding(tokens, self.config.octaves), torch.ones_like(vis[..., None])], dim=-1)
        x = self.embed(feats) + frame_encoding(T, self.config.width, tracks.device, tracks.dtype)[None, :, None]
        for block in self.blocks:
            x = block(x)
        if focal_known is None:
            focal_known = torch.ones(B, dtype=torch.bool, device=tracks.device)
        # heads, cameras and projection geometry in float32 even when the trunk runs under bf16/fp16 autocast
        with torch.autocast(device_type=tracks.device.type, enabled=False):
            x = self.norm(x.float())
            frame_raw = self.frame_head(x.mean(2).transpose(1, 2)).transpose(1, 2)  # [B, T, 10+K-1]
            point_raw = self.point_head(x.mean(1))  # [B, N, 3K+1]
            return decode_motion(frame_raw, point_raw, mean_observation(tracks.float(), visible), self.config, focal_known)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())


class SceneParameters(nn.Module):
    """The same motion model as free parameters of one scene (the per-scene optimisation baseline)."""

    def __init__(self, frames: int, points: int, config: ModelConfig):
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(0)
        # zero coefficients and zero basis would be a saddle (no gradient to either): start the coefficients small
        frame_raw = torch.zeros(1, frames, 10 + config.num_basis - 1)
        frame_raw[..., 10:] = 0.01 * torch.randn(1, frames, config.num_basis - 1, generator=gen)
        self.frame_raw = nn.Parameter(frame_raw)
        self.point_raw = nn.Parameter(torch.zeros(1, points, 3 * config.num_basis + 1))

    def forward(self, tracks: torch.Tensor, visible: torch.Tensor, focal_known: torch.Tensor | None = None) -> dict:
        if focal_known is None:
            focal_known = torch.ones(1, dtype=torch.bool, device=tracks.device)
        return decode_motion(self.frame_raw, self.point_raw, mean_observation(tracks, visible), self.config, focal_known)
