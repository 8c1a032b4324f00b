"""Deterministic procedural scenes for NeRF: textured analytic SDF primitives, sphere-traced with lighting.

The default scene has five objects inside ``[-1, 1]^3`` (z up): a checkered sphere with a specular
highlight (view-dependent colour), a rounded box with wood-like rings, a striped torus, a capsule
with value-noise colour and a tiled round floor slab. Colours are solid (3-D) textures evaluated at
the hit point; shading is Lambert + ambient from one directional light with hard shadows (a shadow
ray is sphere-traced too) plus a Blinn-Phong highlight on the sphere. Every view is an RGBA image
(alpha = the ray hit an object), so a reader composites it on any background, as with the Blender
scenes. Camera centres lie on a sphere around the origin; train, val and test views are drawn
from disjoint random streams (no pose appears in two splits). Same seed -> same bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cameras import camera_rays

__all__ = ["SceneConfig", "render_scene_views", "make_scene", "look_at", "orbit_poses"]


@dataclass(frozen=True)
class SceneConfig:
    """Size and camera rig of a generated scene."""

    width: int = 64
    """Image width and height in pixels."""
    n_train: int = 40
    """Training views."""
    n_val: int = 8
    """Validation views (for choosing hyper-parameters)."""
    n_test: int = 8
    """Test views (reported numbers only)."""
    radius: float = 3.2
    """Distance of every camera centre from the origin."""
    camera_angle_x: float = 0.6
    """Horizontal field of view in radians."""
    min_elevation_deg: float = 10.0
    """Lowest camera elevation above the floor plane."""
    max_elevation_deg: float = 65.0
    """Highest camera elevation."""
    seed: int = 0
    """Seed of the camera poses and of the noise textures."""

    def __post_init__(self) -> None:
        for name in ("width", "n_train", "n_val", "n_test"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"SceneConfig.{name} must be an int >= 1, got {v!r}")
        if self.width < 8:
            raise ValueError(f"SceneConfig.width must be >= 8, got {self.width!r}")
        if not self.radius > 1.8:
            raise ValueError(f"SceneConfig.radius must be > 1.8 (outside the scene cube), got {self.radius!r}")
        if not 0.1 < self.camera_angle_x < 3.0:
            raise ValueError(f"SceneConfig.camera_angle_x must be in (0.1, 3.0) radians, got {self.camera_angle_x!r}")
        if not -10.0 <= self.min_elevation_deg < self.max_elevation_deg <= 89.0:
            raise ValueError("SceneConfig.min_elevation_deg/max_elevation_deg must satisfy -10 <= min < max <= 89, "
                             f"got {self.min_elevation_deg!r}, {self.max_elevation_deg!r}")


# ----------------------------------------------------------------------------- signed distances


def _sd_sphere(p: Tensor, c, r: float) -> Tensor:
    return (p - p.new_tensor(c)).norm(dim=-1) - r


def _sd_round_box(p: Tensor, c, half, r: float) -> Tensor:
    q = (p - p.new_tensor(c)).abs() - p.new_tensor(half)
    return q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0) - r


def _sd_torus(p: Tensor, c, big: float, small: float) -> Tensor:
    q = p - p.new_tensor(c)
    return torch.stack([q[:, :2].norm(dim=-1) - big, q[:, 2]], -1).norm(dim=-1) - small


def _sd_capsule(p: Tensor, a, b, r: float) -> Tensor:
    a, b = p.new_tensor(a), p.new_tensor(b)
    pa, ba = p - a, b - a
    h = ((pa * ba).sum(-1) / (ba * ba).sum()).clamp(0, 1)
    return (pa - h[:, None] * ba).norm(dim=-1) - r


def _sd_slab(p: Tensor, z: float, radius: float, half_height: float) -> Tensor:
    d = torch.stack([p[:, :2].norm(dim=-1) - radius, (p[:, 2] - z).abs() - half_height], -1)
    return d.clamp(min=0).norm(dim=-1) + d.amax(-1).clamp(max=0)


_OBJECTS = (
    lambda p: _sd_sphere(p, (0.35, -0.35, -0.38), 0.42),
    lambda p: _sd_round_box(p, (-0.45, -0.3, -0.53), (0.2, 0.22, 0.25), 0.04),
    lambda p: _sd_torus(p, (-0.1, 0.5, -0.6), 0.3, 0.1),
    lambda p: _sd_capsule(p, (0.5, 0.45, -0.7), (0.55, 0.3, 0.1), 0.12),
    lambda p: _sd_slab(p, -0.8, 0.95, 0.04),
)


def _scene_sdf(p: Tensor) -> tuple[Tensor, Tensor]:
    d = torch.stack([f(p) for f in _OBJECTS], -1)
    return d.min(-1)


# ----------------------------------------------------------------------------- textures


def _value_noise(p: Tensor, freq: float, seed: int) -> Tensor:
    """Smooth 3-D value noise in [0, 1] from a hashed integer lattice (deterministic in ``seed``)."""
    q = p * freq
    i, f = q.floor().long(), q - q.floor()
    f = f * f * (3 - 2 * f)

    def h(ix, iy, iz):
        v = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)
        return ((v % 1000003).float() / 1000003.0)

    out = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
                out = out + w * h(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz)
    return out


def _albedo(p: Tensor, obj: Tensor, seed: int) -> Tensor:
    c = torch.zeros_like(p)
    # 0 sphere: checker in spherical angles, red / cream
    q = p - p.new_tensor((0.35, -0.35, -0.38))
    th, ph = torch.atan2(q[:, 1], q[:, 0]), torch.acos((q[:, 2] / q.norm(dim=-1).clamp(min=1e-6)).clamp(-1, 1))
    chk = ((th * 8 / math.pi).floor() + (ph * 6 / math.pi).floor()) % 2
    c = torch.where((obj == 0)[:, None], torch.where(chk[:, None] > 0, p.new_tensor((0.85, 0.15, 0.1)), p.new_tensor((0.95, 0.9, 0.75))), c)
    # 1 box: wood rings around a vertical axis, perturbed by noise
    r = (p[:, :2] - p.new_tensor((-0.45, -0.3))).norm(dim=-1) * 18 + 4 * _value_noise(p, 6.0, seed)
    ring = 0.5 + 0.5 * torch.sin(r)
    wood = p.new_tensor((0.55, 0.33, 0.14)) * (0.6 + 0.4 * ring[:, None])
    c = torch.where((obj == 1)[:, None], wood, c)
    # 2 torus: stripes around the ring, blue / yellow
    ang = torch.atan2(p[:, 1] - 0.5, p[:, 0] + 0.1)
    stripe = (torch.sin(ang * 10) > 0).float()[:, None]
    c = torch.where((obj == 2)[:, None], stripe * p.new_tensor((0.1, 0.3, 0.85)) + (1 - stripe) * p.new_tensor((0.95, 0.8, 0.1)), c)
    # 3 capsule: two-octave value noise between green and white
    n = (0.65 * _value_noise(p, 8.0, seed + 1) + 0.35 * _value_noise(p, 20.0, seed + 2))[:, None]
    c = torch.where((obj == 3)[:, None], n * p.new_tensor((0.1, 0.7, 0.3)) + (1 - n) * p.new_tensor((0.9, 0.95, 0.9)), c)
    # 4 floor: grey tiles with dark grout
    u = p[:, :2] * 5
    grout = ((u - u.round()).abs().amin(-1) < 0.06).float()[:, None]
    tile = 0.55 + 0.25 * ((u.floor().sum(-1) % 2)[:, None])
    c = torch.where((obj == 4)[:, None], (1 - grout) * tile * p.new_tensor((0.8, 0.8, 0.85)) + grout * 0.15, c)
    return c


# ----------------------------------------------------------------------------- cameras and tracing


def look_at(eye: np.ndarray, target=(0.0, 0.0, -0.45), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 (OpenGL: the camera looks along -z) at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return m


def _random_poses(n: int, cfg: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    az = rng.uniform(0, 2 * math.pi, n)
    el = np.radians(rng.uniform(cfg.min_elevation_deg, cfg.max_elevation_deg, n))
    eyes = cfg.radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
    return np.stack([look_at(e) for e in eyes])


def orbit_poses(n: int, radius: float, elevation_deg: float = 30.0) -> np.ndarray:
    """``n`` camera-to-world matrices evenly around the vertical axis (for orbit videos)."""
    el = math.radians(elevation_deg)
    az = np.linspace(0, 2 * math.pi, n, endpoint=False)
    eyes = radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(n, math.sin(el))], -1)
    return np.stack([look_at(e) for e in eyes])


def _trace(o: Tensor, d: Tensor, t_max: float | Tensor, steps: int = 128) -> tuple[Tensor, Tensor]:
    t = torch.zeros(o.shape[0], device=o.device)
    hit = torch.zeros(o.shape[0], dtype=torch.bool, device=o.device)
    for _ in range(steps):
        dist, _ = _scene_sdf(o + d * t[:, None])
        hit |= dist < 1e-4
        t = torch.where(hit, t, t + dist * 0.9)
        if bool((hit | (t > t_max)).all()):
            break
    return t, hit & (t < t_max)


def _normal(p: Tensor) -> Tensor:
    e = 1e-3
    n = torch.stack([_scene_sdf(p + p.new_tensor(v))[0] - _scene_sdf(p - p.new_tensor(v))[0]
                     for v in ((e, 0, 0), (0, e, 0), (0, 0, e))], -1)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-8)


_LIGHT = torch.tensor([0.5, -0.35, 0.8]) / math.sqrt(0.5 ** 2 + 0.35 ** 2 + 0.8 ** 2)


def render_scene_views(c2w: np.ndarray, width: int, camera_angle_x: float, seed: int = 0, views_per_batch: int = 64,
                       device: str = "cpu") -> np.ndarray:
    """RGBA float images ``[N, W, W, 4]`` of the scene seen by each camera-to-world matrix.

    ``views_per_batch`` views are traced together (one set of tensor ops for all their rays); every ray's result
    is the same as when its view is traced alone. ``device="cuda"`` traces on a GPU (much faster; its float
    rounding may differ from the CPU's in the last bit, so "same seed -> same bytes" holds per device).
    """
    light = _LIGHT.to(device)
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    images = []
    for k in range(0, len(c2w), views_per_batch):
        group = c2w[k:k + views_per_batch]
        rays = [camera_rays(torch.as_tensor(m, dtype=torch.float32, device=device), width, width, focal, focal, width / 2,
                            width / 2) for m in group]
        o, d = torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])
        t_max = torch.cat([torch.full((r[0].shape[0],), float(np.linalg.norm(m[:3, 3])) + 3.0, device=device)
                           for r, m in zip(rays, group)])
        t, hit = _trace(o, d, t_max=t_max)
        p = o + d * t[:, None]
        _, obj = _scene_sdf(p)
        n = _normal(p)
        lam = (n @ light).clamp(min=0)
        so = p + n * 3e-3
        ts, shadow_hit = _trace(so, light.expand_as(so), t_max=4.0, steps=64)
        lit = lam * (~shadow_hit).float()
        colour = _albedo(p, obj, seed) * (0.25 + 0.75 * lit[:, None])
        half = light - d
        half = half / half.norm(dim=-1, keepdim=True)
        spec = (n * half).sum(-1).clamp(min=0) ** 40 * lit * (obj == 0).float()
        colour = (colour + 0.6 * spec[:, None]).clamp(0, 1)
        colour = torch.where(hit[:, None] & torch.isfinite(colour), colour, torch.zeros_like(colour))
        rgba = torch.cat([colour, hit[:, None].float()], -1)
        images.extend(rgba.reshape(len(group), width, width, 4).cpu().numpy())
    return np.stack(images)


def make_scene(out_dir: str | Path, cfg: SceneConfig = SceneConfig(), device: str = "cpu") -> dict:
    """Write ``train/ val/ test/`` RGBA PNGs, Blender ``transforms_<split>.json`` and a nerfstudio ``transforms.json``.

    The Blender files give ``camera_angle_x`` and ``file_path`` without extension; ``transforms.json``
    gives ``fl_x, fl_y, cx, cy, w, h``, paths with extension and ``train/val/test_filenames``.
    Everything is written into a temporary folder that replaces ``out_dir`` at the end.
    Returns a summary dict (paths, counts, bounds). ``device``: where the views are ray-traced (see
    :func:`render_scene_views`).
    """
    from PIL import Image

    from lowrank_vision.core.files import atomic_dir, write_json

    rng = np.random.default_rng(cfg.seed)
    split_rngs = dict(zip(("train", "val", "test"), rng.spawn(3)))
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    focal = 0.5 * cfg.width / math.tan(0.5 * cfg.camera_angle_x)
    ns_frames, names = [], {}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for split, n in counts.items():
            poses = _random_poses(n, cfg, split_rngs[split])
            images = render_scene_views(poses, cfg.width, cfg.camera_angle_x, cfg.seed, device=device)
            frames = []
            (tmp / split).mkdir()
            for k, (pose, img) in enumerate(zip(poses, images)):
                stem = f"{split}/r_{k:03d}"
                Image.fromarray((img * 255 + 0.5).astype(np.uint8), "RGBA").save(tmp / f"{stem}.png")
                frames.append({"file_path": f"./{stem}", "transform_matrix": pose.tolist()})
                ns_frames.append({"file_path": f"{stem}.png", "transform_matrix": pose.tolist()})
            names[f"{split}_filenames"] = [f"{split}/r_{k:03d}.png" for k in range(n)]
            write_json(tmp / f"transforms_{split}.json", {"camera_angle_x": cfg.camera_angle_x, "frames": frames})
        write_json(tmp / "transforms.json", {"camera_model": "OPENGL", "fl_x": focal, "fl_y": focal, "cx": cfg.width / 2,
                                             "cy": cfg.width / 2, "w": cfg.width, "h": cfg.width, "frames": ns_frames, **names})
        write_json(tmp / "scene.json", {"generator": "lowrank_vision.datasets.nerf.procedural", "config": asdict(cfg),
                                        "bound": 1.0, "background": "transparent (RGBA)"})
    return {"path": str(out_dir), "views": counts, "width": cfg.width, "bound": 1.0}
