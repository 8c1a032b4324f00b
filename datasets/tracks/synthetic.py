"""Deterministic dynamic scenes with ground truth, for training and evaluating track-to-4D models.

A scene (everything drawn from ``numpy.random.default_rng(seed)``):

* a **static background**: points on a ground plane and a back wall, 4-10 units in front of the camera;
* one or two **moving objects** (ellipsoid point clouds) whose motion is exactly low-rank: the whole
  object translates, ``s(t)·d`` (rank 1 over the rest shape); one half of it swings about a joint,
  ``J + R(θ(t))(X - J)``, which Rodrigues' formula writes as a combination of three fixed fields with
  coefficients ``1, cos θ(t), sin θ(t)``; and it bends, ``a(t)·D(X)`` with a smooth displacement field
  ``D``. Every object point is therefore ``X_0 + Σ_k c_k(t) B_k`` with at most 6 time coefficients;
* a **moving camera** (a sideways/forward sweep with a look-at rotation), known intrinsics, poses and depth;
* tracks = projections with Gaussian pixel noise, hidden where the point leaves the image or lies
  behind the camera, plus random occlusion spans. Points seen in fewer than half the frames are
  resampled, so every scene has exactly ``points`` tracks. Point order is shuffled.

Splits are disjoint by scene seed (:func:`split_seeds`): train, val and test seeds never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from lowrank_vision.core.validate import require

from .formats import TrackSet, validate_tracks

__all__ = ["SceneConfig", "Scene", "make_scene", "split_seeds", "look_at"]

_SPLIT_BASE = {"train": 100_000, "val": 200_000, "test": 300_000}


@dataclass(frozen=True)
class SceneConfig:
    """What a generated scene looks like."""

    frames: int = 24
    """Number of frames T."""
    points: int = 128
    """Number of tracks N."""
    image_size: tuple[int, int] = (240, 320)
    """(H, W) in pixels."""
    dynamic_fraction: float = 0.35
    """Fraction of the tracks that lie on moving objects (0: a static scene)."""
    noise_px: float = 0.5
    """Standard deviation of the Gaussian noise added to every track coordinate (pixels)."""
    occlusion_rate: float = 0.2
    """Probability that a track has one occlusion span (2 .. T/3 frames)."""
    camera_motion: float = 1.0
    """Scale of the camera sweep (0: a static camera)."""

    def __post_init__(self) -> None:
        require(self, "frames", isinstance(self.frames, int) and self.frames >= 2, "an int >= 2")
        require(self, "points", isinstance(self.points, int) and self.points >= 4, "an int >= 4")
        require(self, "image_size", len(self.image_size) == 2 and min(self.image_size) >= 16, "(H, W) with H, W >= 16")
        require(self, "dynamic_fraction", 0.0 <= self.dynamic_fraction < 1.0, "in [0, 1)")
        require(self, "noise_px", self.noise_px >= 0, ">= 0")
        require(self, "occlusion_rate", 0.0 <= self.occlusion_rate <= 1.0, "in [0, 1]")
        require(self, "camera_motion", self.camera_motion >= 0, ">= 0")


@dataclass(frozen=True)
class Scene:
    """A generated scene: the tracks a tracker would give plus the ground truth."""

    seed: int
    tracks: np.ndarray
    """float32 [T, N, 2] noisy pixel tracks."""
    visible: np.ndarray
    """bool [T, N]."""
    K: np.ndarray
    """[3, 3] intrinsics."""
    R: np.ndarray
    """[T, 3, 3] world -> camera rotations."""
    t: np.ndarray
    """[T, 3] world -> camera translations (``x_cam = R x_world + t``)."""
    points: np.ndarray
    """[T, N, 3] world positions of every track's point."""
    depth: np.ndarray
    """[T, N] camera-frame z."""
    dynamic: np.ndarray
    """bool [N]: the point lies on a moving object."""
    image_size: tuple[int, int]

    def to_trackset(self) -> TrackSet:
        gt = {"gt_R": self.R, "gt_t": self.t, "gt_points": self.points, "gt_depth": self.depth, "gt_dynamic": self.dynamic}
        return validate_tracks(self.tracks, self.visible, K=self.K, image_size=self.image_size, gt=gt, source=f"scene {self.seed}")


def split_seeds(split: Literal["train", "val", "test"], count: int, start: int = 0) -> list[int]:
    """Scene seeds of a split; the three ranges are disjoint for any ``count`` < 100,000."""
    if split not in _SPLIT_BASE:
        raise ValueError(f"split must be one of {sorted(_SPLIT_BASE)}, got {split!r}")
    if not 0 <= start and start + count <= 100_000:
        raise ValueError(f"start + count must be <= 100000, got {start} + {count}")
    return [_SPLIT_BASE[split] + start + i for i in range(count)]


def look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World -> camera rotation of a camera at ``center`` looking at ``target`` (y down, z forward)."""
    z = target - center
    z = z / np.linalg.norm(z)
    up = np.array([0.0, -1.0, 0.0])
    x = np.cross(-up, z)  # right-handed with y down: x = y × z  where y ≈ +down
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])  # rows: camera axes in world coordinates


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    on_ground = rng.random(n) < 0.5
    ground = np.stack([rng.uniform(-3.5, 3.5, n), np.full(n, 1.2), rng.uniform(3.5, 9.5, n)], 1)
    wall = np.stack([rng.uniform(-4.5, 4.5, n), rng.uniform(-2.5, 1.2, n), 9.5 + rng.normal(0, 0.15, n)], 1)
    return np.where(on_ground[:, None], ground, wall)


def _object_motion(rng: np.random.Generator, n: int, frames: int) -> np.ndarray:
    """[T, n, 3] positions of one object's points (low-rank motion, see the module docstring)."""
    center = np.array([rng.uniform(-1.2, 1.2), rng.uniform(-0.2, 0.6), rng.uniform(5.0, 6.5)])
    radii = rng.uniform(0.35, 0.7, 3)
    d = rng.normal(size=(n, 3))
    rest = center + radii * d / np.linalg.norm(d, axis=1, keepdims=True)
    u = np.linspace(0.0, 1.0, frames)
    phase = rng.uniform(0, 2 * np.pi, 3)
    direction = rng.normal(size=3) * np.array([1.0, 0.3, 0.6])
    direction *= rng.uniform(0.4, 1.0) / np.linalg.norm(direction)
    shift = np.sin(np.pi * u + phase[0])[:, None] * direction  # [T, 3]
    joint = center + np.array([radii[0] * 0.2, 0.0, 0.0])
    axis = rng.normal(size=3)
    swing = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * u + phase[1])
    child = rest[:, 0] > joint[0]
    bend_dir = rng.normal(size=3)
    bend_field = np.outer((rest[:, 1] - center[1]) / radii[1], bend_dir / np.linalg.norm(bend_dir)) * 0.25
    bend = np.sin(2 * np.pi * u + phase[2])
    out = np.empty((frames, n, 3))
    for i in range(frames):
        x = rest.copy()
        x[child] = joint + (x[child] - joint) @ _rotation(axis, swing[i]).T
        out[i] = x + shift[i] + bend[i] * bend_field
    return out


def make_scene(seed: int, config: SceneConfig = SceneConfig()) -> Scene:
    """Generate scene ``seed`` (same seed and config -> identical arrays)."""
    rng = np.random.default_rng(seed)
    T, N = config.frames, config.points
    H, W = config.image_size
    f = rng.uniform(0.55, 0.85) * W
    K = np.array([[f, 0, W / 2 + rng.uniform(-2, 2)], [0, f, H / 2 + rng.uniform(-2, 2)], [0, 0, 1.0]])

    u = np.linspace(0.0, 1.0, T)
    sweep = config.camera_motion * np.array([rng.uniform(1.8, 3.0) * rng.choice([-1, 1]), rng.uniform(-0.4, 0.4), rng.uniform(0.0, 1.5)])
    wobble = config.camera_motion * rng.uniform(0.0, 0.3)
    centers = np.stack([sweep[0] * (u - 0.5), sweep[1] * np.sin(np.pi * u) - 0.3 + wobble * np.sin(3 * np.pi * u), sweep[2] * u], 1)
    target = np.array([rng.uniform(-0.5, 0.5), 0.3, 6.5]) + np.outer(u - 0.5, [rng.uniform(-0.5, 0.5), 0, 0])
    R = np.stack([look_at(c, g) for c, g in zip(centers, target)])
    t = -np.einsum("tij,tj->ti", R, centers)

    n_dyn = int(round(config.dynamic_fraction * N))
    n_obj = 0 if n_dyn == 0 else int(rng.integers(1, 3))
    chosen: list[np.ndarray] = []
    dyn_flags: list[np.ndarray] = []
    wanted = {"static": N - n_dyn, "dynamic": n_dyn}
    for kind, need in wanted.items():
        got = 0
        for _attempt in range(50):
            if got >= need:
                break
            m = 4 * (need - got) + 8
            if kind == "static":
                pts = np.broadcast_to(_background(rng, m), (T, m, 3))
            else:
                per = [_object_motion(rng, m // n_obj + 1, T) for _ in range(n_obj)]
                pts = np.concatenate(per, 1)
            cam = np.einsum("tij,tnj->tni", R, pts) + t[:, None]
            z = cam[..., 2]
            pix = cam[..., :2] / np.maximum(z, 1e-6)[..., None] * [f, f] + K[:2, 2]
            inside = (z > 0.1) & (pix[..., 0] >= 0) & (pix[..., 0] < W) & (pix[..., 1] >= 0) & (pix[..., 1] < H)
            keep = np.flatnonzero(inside.sum(0) >= max(2, T // 2))[: need - got]
            chosen.append(pts[:, keep])
            dyn_flags.append(np.full(len(keep), kind == "dynamic"))
            got += len(keep)
        if got < need:
            raise RuntimeError(f"make_scene({seed}): could not place {need} {kind} points")
    points = np.concatenate(chosen, 1)
    dynamic = np.concatenate(dyn_flags)
    order = rng.permutation(N)
    points, dynamic = points[:, order], dynamic[order]

    cam = np.einsum("tij,tnj->tni", R, points) + t[:, None]
    depth = cam[..., 2]
    pix = cam[..., :2] / depth[..., None] * [K[0, 0], K[1, 1]] + K[:2, 2]
    visible = (depth > 0.1) & (pix[..., 0] >= 0) & (pix[..., 0] < W) & (pix[..., 1] >= 0) & (pix[..., 1] < H)
    for n in np.flatnonzero(rng.random(N) < config.occlusion_rate):
        length = int(rng.integers(2, max(3, T // 3 + 1)))
        start = int(rng.integers(0, T - length + 1))
        span = visible[:, n].copy()
        span[start:start + length] = False
        if span.sum() >= 2:
            visible[:, n] = span
    tracks = (pix + rng.normal(0.0, config.noise_px, pix.shape)).astype(np.float32)
    return Scene(seed=seed, tracks=tracks, visible=visible, K=K, R=R, t=t, points=points, depth=depth,
                 dynamic=dynamic, image_size=(H, W))
