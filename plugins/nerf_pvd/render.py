"""Rays from camera poses, stratified + importance sampling, and volume rendering (NeRF, Mildenhall et al. 2020).

Conventions: camera-to-world matrices in the OpenGL/Blender convention (the camera looks along its
``-z`` axis, ``+y`` is up), as in ``transforms.json``. Rays are clipped to the scene cube
``[-bound, bound]^3`` (slab test); a ray that misses it sees only the background colour.

Sampling: ``n_coarse`` stratified samples per ray are evaluated without gradient to get the
compositing weights, then ``n_fine`` samples are drawn from that piecewise-constant PDF by inverse
transform sampling; the field is evaluated once more, with gradient, on the sorted union of both
sets. One field does both passes (no separate coarse network, no occupancy grid): a choice of this
module, made so that every architecture is rendered the same way. :func:`sample_along_rays` is
separate from :func:`composite` so that PVD can share one set of samples between teacher and student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from lowrank_vision.datasets.nerf.cameras import camera_rays

from .fields import RadianceField, trunc_exp

__all__ = ["RenderConfig", "camera_rays", "near_far_cube", "sample_along_rays", "composite", "render_teacher", "render_rays",
           "render_image"]


@dataclass(frozen=True)
class RenderConfig:
    """How rays are sampled and composited."""

    n_coarse: int = 32
    """Stratified samples per ray (first pass, no gradient)."""
    n_fine: int = 32
    """Importance samples per ray drawn from the first pass's weights (0: stratified only)."""
    background: float = 1.0
    """Grey level of the background composited behind every ray (1.0: white, as in Blender scenes)."""
    perturb: bool = True
    """Jitter the stratified samples while training (off at evaluation)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.n_coarse, int) and self.n_coarse >= 2):
            raise ValueError(f"RenderConfig.n_coarse must be an int >= 2, got {self.n_coarse!r}")
        if not (isinstance(self.n_fine, int) and self.n_fine >= 0):
            raise ValueError(f"RenderConfig.n_fine must be an int >= 0, got {self.n_fine!r}")
        if not 0.0 <= self.background <= 1.0:
            raise ValueError(f"RenderConfig.background must be in [0, 1], got {self.background!r}")


def near_far_cube(o: Tensor, d: Tensor, bound: float, min_near: float = 0.05) -> tuple[Tensor, Tensor, Tensor]:
    """Entry/exit distances of rays through ``[-bound, bound]^3`` and a mask of the rays that hit it."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (-bound - o) * inv, (bound - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=min_near)
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    far = torch.where(hit, far, near + 1e-3)
    return near, far, hit


def _stratified(near: Tensor, far: Tensor, n: int, perturb: bool) -> Tensor:
    u = (torch.arange(n, device=near.device, dtype=near.dtype) + 0.5) / n
    u = u.expand(near.shape[0], n)
    if perturb:
        u = u + (torch.rand_like(u) - 0.5) / n
    return near[:, None] + (far - near)[:, None] * u


def _sample_pdf(bins: Tensor, weights: Tensor, n: int, perturb: bool) -> Tensor:
    """Inverse-transform samples from the piecewise-constant PDF ``weights`` over intervals ``bins``."""
    w = weights + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)], -1)
    u = torch.rand(bins.shape[0], n, device=bins.device) if perturb else torch.linspace(0.0, 1.0, n, device=bins.device).expand(bins.shape[0], n)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(1, idx - 1), cdf.gather(1, idx)
    b0, b1 = bins.gather(1, idx - 1), bins.gather(1, idx)
    t = ((u - c0) / (c1 - c0).clamp(min=1e-8)).clamp(0, 1)
    return b0 + t * (b1 - b0)


def _deltas(t: Tensor, far: Tensor) -> Tensor:
    return torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:]).clamp(min=1e-4)], -1)


def _weights(sigma_pre: Tensor, deltas: Tensor) -> Tensor:
    alpha = 1.0 - torch.exp(-trunc_exp(sigma_pre) * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    return alpha * trans


def sample_along_rays(field: RadianceField, o: Tensor, d: Tensor, cfg: RenderConfig, *, training: bool = False) -> dict:
    """Sample distances ``t [R, S]`` (and ``near``, ``far``, ``hit``): stratified, then importance from ``field``'s weights."""
    near, far, hit = near_far_cube(o, d, field.bound)
    perturb = cfg.perturb and training
    t = _stratified(near, far, cfg.n_coarse, perturb)
    if cfg.n_fine:
        with torch.no_grad():
            x = o[:, None] + d[:, None] * t[..., None]
            sigma = field.density_pre(x.reshape(-1, 3)).reshape(t.shape)
            w = _weights(sigma, _deltas(t, far))
            mids = 0.5 * (t[:, 1:] + t[:, :-1])
            bins = torch.cat([near[:, None], mids, far[:, None]], -1)
            fine = _sample_pdf(bins, w, cfg.n_fine, perturb)
        t = torch.sort(torch.cat([t, fine], -1), -1).values
    return {"t": t.detach(), "near": near, "far": far, "hit": hit}


def _evaluate(field: RadianceField, o: Tensor, d: Tensor, t: Tensor) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """``field`` at the points ``o + t d``: ``sigma_pre [R,S]``, ``feature [R,S,F]`` (or ``None``), ``rgb [R,S,3]``."""
    r, s = t.shape
    x = (o[:, None] + d[:, None] * t[..., None]).reshape(-1, 3)
    out = field(x, d[:, None].expand(r, s, 3).reshape(-1, 3))
    return out.sigma_pre.reshape(r, s), None if out.feature is None else out.feature.reshape(r, s, -1), out.rgb.reshape(r, s, 3)


def _composite_points(sigma_pre: Tensor, feature: Optional[Tensor], rgb_pts: Tensor, samples: dict, background: float) -> dict:
    t, far, hit = samples["t"], samples["far"], samples["hit"]
    w = _weights(torch.where(hit[:, None], sigma_pre, torch.full_like(sigma_pre, -30.0)), _deltas(t, far))
    acc = w.sum(-1)
    rgb = (w[..., None] * rgb_pts).sum(1) + (1.0 - acc[:, None]) * background
    return {"rgb": rgb, "acc": acc, "depth": (w * t).sum(-1), "weights": w, "sigma_pre": sigma_pre, "point_rgb": rgb_pts,
            "feature": feature}


def composite(field: RadianceField, o: Tensor, d: Tensor, samples: dict, background: float) -> dict:
    """Evaluate ``field`` at the samples and composite: ``rgb [R,3]``, ``acc``, ``depth``, per-point outputs ``[R,S,...]``."""
    return _composite_points(*_evaluate(field, o, d, samples["t"]), samples, background)


@torch.no_grad()
def render_teacher(field: RadianceField, o: Tensor, d: Tensor, cfg: RenderConfig, *, training: bool = False,
                   coarse_every: int = 1) -> tuple[dict, dict]:
    """``sample_along_rays`` then ``composite`` of a frozen field in one pass over each sample: ``(samples, outputs)``.

    The coarse samples' full outputs (not only their density) are kept, and the field is evaluated once more only at
    the fine samples: ``n_coarse + n_fine`` evaluations per ray instead of ``2 n_coarse + n_fine``, with the same random
    draws in the same order, so the same samples and (up to float rounding) the same outputs as the two calls.
    ``coarse_every = k > 1``: the samples returned (and composited) are every k-th coarse sample and all the fine ones
    (the fine ones are still drawn from all the coarse weights), so a field evaluated on them spends its points where
    this field's weights are.
    """
    near, far, hit = near_far_cube(o, d, field.bound)
    perturb = cfg.perturb and training
    t = _stratified(near, far, cfg.n_coarse, perturb)
    sigma, feature, rgb = _evaluate(field, o, d, t)
    if cfg.n_fine:
        mids = 0.5 * (t[:, 1:] + t[:, :-1])
        bins = torch.cat([near[:, None], mids, far[:, None]], -1)
        fine = _sample_pdf(bins, _weights(sigma, _deltas(t, far)), cfg.n_fine, perturb)
        f_sigma, f_feature, f_rgb = _evaluate(field, o, d, fine)
        if coarse_every > 1:
            t, sigma, rgb = t[:, ::coarse_every], sigma[:, ::coarse_every], rgb[:, ::coarse_every]
            feature = None if feature is None else feature[:, ::coarse_every]
        t, order = torch.sort(torch.cat([t, fine], -1), -1)
        sigma = torch.cat([sigma, f_sigma], -1).gather(1, order)
        rgb = torch.cat([rgb, f_rgb], 1).gather(1, order[..., None].expand(-1, -1, 3))
        if feature is not None:
            feature = torch.cat([feature, f_feature], 1).gather(1, order[..., None].expand(-1, -1, feature.shape[-1]))
    samples = {"t": t, "near": near, "far": far, "hit": hit}
    return samples, _composite_points(sigma, feature, rgb, samples, cfg.background)


def render_rays(field: RadianceField, o: Tensor, d: Tensor, cfg: RenderConfig, *, training: bool = False,
                samples: Optional[dict] = None) -> dict:
    """Sample (unless ``samples`` are given) and composite one batch of rays."""
    if samples is None:
        samples = sample_along_rays(field, o, d, cfg, training=training)
    return composite(field, o, d, samples, cfg.background) | {"samples": samples}


@torch.no_grad()
def render_image(field: RadianceField, c2w: Tensor, height: int, width: int, intrinsics: tuple, cfg: RenderConfig,
                 chunk: int = 4096) -> dict:
    """Render one camera: ``rgb [H, W, 3]``, ``depth [H, W]``, ``acc [H, W]`` (evaluation sampling, in chunks)."""
    dev = next(field.parameters()).device
    o, d = camera_rays(c2w.to(dev, torch.float32), height, width, *intrinsics)
    parts = [render_rays(field, o[i:i + chunk], d[i:i + chunk], cfg) for i in range(0, o.shape[0], chunk)]
    return {k: torch.cat([p[k] for p in parts]).reshape(height, width, *parts[0][k].shape[1:]).cpu()
            for k in ("rgb", "depth", "acc")}
