"""Field factory, the camera rig a field was trained under, and checkpoints (one ``.safetensors`` file).

A checkpoint holds the field's tensors plus, in the safetensors metadata, the :class:`FieldConfig`,
the :class:`CameraRig` (intrinsics, image size, where the training cameras were: what PVD needs to
draw random poses "within the teacher's bounds") and free-form provenance.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import FIELD_KINDS, FieldConfig
from .fields import DenseSHGridField, HashGridField, MLPField, RadianceField, TensoRFVMField

__all__ = ["FIELD_BUILDERS", "register_field", "build_field", "CameraRig", "rig_from_cameras", "random_poses",
           "save_field", "load_field"]

FIELD_BUILDERS: dict[str, Callable[[FieldConfig], RadianceField]] = {}


def register_field(kind: str):
    """Decorator registering ``builder(cfg) -> RadianceField`` under ``kind`` (open names)."""
    def deco(fn):
        FIELD_BUILDERS[kind] = fn
        return fn
    return deco


@register_field("mlp")
def _mlp(c: FieldConfig) -> RadianceField:
    return MLPField(c.bound, c.geo_feat_dim, width=c.mlp_width, depth=c.mlp_depth)


@register_field("hash")
def _hash(c: FieldConfig) -> RadianceField:
    return HashGridField(c.bound, c.geo_feat_dim, levels=c.hash_levels, log2_table=c.hash_log2_table, max_res=c.hash_max_res)


@register_field("tensorf_vm")
def _tensorf(c: FieldConfig) -> RadianceField:
    return TensoRFVMField(c.bound, c.geo_feat_dim, resolution=c.tensorf_resolution, density_rank=c.tensorf_density_rank,
                          app_rank=c.tensorf_app_rank)


@register_field("grid")
def _grid(c: FieldConfig) -> RadianceField:
    return DenseSHGridField(c.bound, c.geo_feat_dim, resolution=c.grid_resolution, sh_degree=c.grid_sh_degree)


def build_field(cfg: FieldConfig) -> RadianceField:
    if cfg.kind not in FIELD_BUILDERS:
        raise ValueError(f"field kind must be one of {sorted(FIELD_BUILDERS)}, got {cfg.kind!r}")
    return FIELD_BUILDERS[cfg.kind](cfg)


@dataclass(frozen=True)
class CameraRig:
    """Intrinsics and the region the training cameras occupied."""

    width: int
    height: int
    intrinsics: tuple
    """(fx, fy, cx, cy) in pixels."""
    radius_range: tuple
    """Min and max distance of the camera centres from ``target``."""
    elevation_range: tuple
    """Min and max elevation (degrees) of the camera centres seen from ``target`` (z up)."""
    target: tuple
    """Point closest to every training camera's optical axis (least squares)."""
    background: float = 1.0
    """Background grey level the images were composited on."""


def rig_from_cameras(c2w: np.ndarray, width: int, height: int, intrinsics: tuple, background: float = 1.0) -> CameraRig:
    centres, axes = c2w[:, :3, 3].astype(np.float64), -c2w[:, :3, 2].astype(np.float64)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    proj = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    target = np.linalg.lstsq(proj.sum(0), (proj @ centres[:, :, None]).sum(0)[:, 0], rcond=None)[0]
    rel = centres - target
    r = np.linalg.norm(rel, axis=1)
    el = np.degrees(np.arcsin(np.clip(rel[:, 2] / r, -1, 1)))
    return CameraRig(int(width), int(height), tuple(float(v) for v in intrinsics), (float(r.min()), float(r.max())),
                     (float(el.min()), float(el.max())), tuple(float(v) for v in target), float(background))


def random_poses(rig: CameraRig, n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 4, 4]`` camera-to-world poses looking at the rig's target, uniform in its radius/elevation/azimuth ranges."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    r = rig.radius_range[0] + u[:, 0] * (rig.radius_range[1] - rig.radius_range[0])
    el = torch.deg2rad(rig.elevation_range[0] + u[:, 1] * (rig.elevation_range[1] - rig.elevation_range[0]))
    az = u[:, 2] * 2 * math.pi
    target = torch.tensor(rig.target, dtype=torch.float64)
    eye = target + r[:, None] * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)
    back = (eye - target) / (eye - target).norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(back)
    right = torch.linalg.cross(up, back)
    right = right / right.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    m = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3] = right, torch.linalg.cross(back, right), back, eye
    return m.float()


def save_field(path: str | Path, field: RadianceField, cfg: FieldConfig, rig: CameraRig, info: dict | None = None) -> Path:
    """Write ``field`` with its config, rig and ``info`` to one ``.safetensors`` file (atomically)."""
    from safetensors.torch import save_file

    from lowrank_vision.core.files import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {str(path)!r}")
    meta = {"format": "lowrank_vision.nerf_pvd/1", "field": json.dumps(asdict(cfg)), "rig": json.dumps(asdict(rig)),
            "info": json.dumps(info or {}, default=float)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in field.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_field(path: str | Path, device: str = "cpu") -> tuple[RadianceField, FieldConfig, CameraRig, dict]:
    """Read a checkpoint written by :func:`save_field`; errors name the file and what is wrong."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable .safetensors checkpoint ({exc})") from exc
    if meta.get("format") != "lowrank_vision.nerf_pvd/1":
        raise ValueError(f"{path}: not a nerf_pvd field checkpoint (metadata format {meta.get('format')!r})")
    fc = json.loads(meta["field"])
    if fc.get("kind") not in FIELD_KINDS:
        raise ValueError(f"{path}: unknown field kind {fc.get('kind')!r}")
    cfg = FieldConfig(**fc)
    rig = json.loads(meta["rig"])
    rig = CameraRig(**{k: tuple(v) if isinstance(v, list) else v for k, v in rig.items()})
    field = build_field(cfg)
    missing, unexpected = field.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match a {cfg.kind} field (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return field.to(device).eval(), cfg, rig, json.loads(meta.get("info", "{}"))
