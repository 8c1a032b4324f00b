"""Networks of the hemorrhage plugin: MONAI 3-D UNet and a 2-D multi-view UNet; their checkpoint file.

Minoccheri et al. (arXiv 2508.01772) fine-tune a "multi-view Unet" whose exact form is not public.
Choice made here (:class:`MultiViewUNet`): three independent 2-D MONAI UNets, one per anatomical
plane; each segments every slice of the volume along its axis (axial: slices along z, coronal:
along y, sagittal: along x), and the three per-voxel probabilities are averaged. The fused output
is returned as a logit, ``log(p / (1 - p))``, so the same loss and threshold serve both networks.
Training uses the mean of the three per-view losses and the loss of the fused output.

A checkpoint is a ``torch.save`` dict ``{"format", "arch", "windows", "geometry", "state_dict"}``; ``geometry``
is the canonical grid the network was trained on (``{"orientation": "RAS", "spacing_mm": [...]}``, see
:mod:`lowrank_vision.datasets.ct.geometry`): every volume is brought there before the network sees it.
A checkpoint without it (written before geometry was stored) is used on each volume's own grid.
Loading a checkpoint into another architecture raises a ``ValueError`` that names both.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lowrank_vision.core.files import write_bytes

from .config import UNetConfig

__all__ = ["MultiViewUNet", "build_network", "save_checkpoint", "load_checkpoint", "save_torch", "DECODER_REGEX",
           "pad_to_multiple", "checkpoint_grid"]

CHECKPOINT_FORMAT = "lowrank_vision.hemorrhage_seg.unet/1"
# Up-path modules of a MONAI UNet: model.2, model.1.submodule.2, model.1.submodule.1.submodule.2, ...
DECODER_REGEX = r"(.*\.)?model\.(1\.submodule\.)*2(\..*)?"


def _unet(cfg: UNetConfig, dims: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=dims, in_channels=cfg.in_channels, out_channels=1, channels=cfg.channels,
                strides=cfg.strides, num_res_units=cfg.num_res_units)


# slicing axis of (B, C, X, Y, Z) per view
_VIEW_AXIS = {"axial": 4, "coronal": 3, "sagittal": 2}


class MultiViewUNet(nn.Module):
    """Three 2-D UNets on axial, coronal and sagittal slices; probabilities averaged (see module doc)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.views = nn.ModuleDict({name: _unet(cfg, 2) for name in _VIEW_AXIS})

    @staticmethod
    def _run_view(net: nn.Module, x: torch.Tensor, axis: int) -> torch.Tensor:
        b, c = x.shape[:2]
        moved = x.movedim(axis, 1)  # (B, S, C, a, b) after moving the slice axis next to batch
        s, rest = moved.shape[1], moved.shape[3:]
        out = net(moved.reshape(b * s, c, *rest))  # (B*S, 1, a, b)
        return out.reshape(b, s, 1, *rest).movedim(1, axis)

    def view_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-view logits, each (B, 1, X, Y, Z)."""
        if x.dim() != 5:
            raise ValueError(f"MultiViewUNet expects (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        return {name: self._run_view(self.views[name], x, axis) for name, axis in _VIEW_AXIS.items()}

    @staticmethod
    def fuse(logits: dict[str, torch.Tensor]) -> torch.Tensor:
        p = torch.stack([torch.sigmoid(v.float()) for v in logits.values()]).mean(0).clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)

    def forward(self, x: torch.Tensor, return_views: bool = False):
        """Fused logits (B, 1, X, Y, Z); with ``return_views`` also the per-view logits."""
        views = self.view_logits(x)
        fused = self.fuse(views)
        return (fused, views) if return_views else fused


def build_network(cfg: UNetConfig | dict | None = None) -> nn.Module:
    """A fresh network for ``cfg`` (a :class:`UNetConfig` or its dict)."""
    if cfg is None:
        cfg = UNetConfig()
    elif isinstance(cfg, dict):
        cfg = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return MultiViewUNet(cfg) if cfg.kind == "multiview" else _unet(cfg, 3)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last three axes of ``x`` up to multiples of ``multiple``; returns the crop back."""
    pads, crop = [], [slice(None)] * (x.dim() - 3)
    for n in x.shape[-3:]:
        extra = (-n) % multiple
        pads.append((extra // 2, extra - extra // 2))
        crop.append(slice(extra // 2, extra // 2 + n))
    flat = [v for p in reversed(pads) for v in p]
    return torch.nn.functional.pad(x, flat), tuple(crop)


def save_checkpoint(model: nn.Module, cfg: UNetConfig, path: str | os.PathLike, windows: Sequence[str], extra: dict | None = None,
                    half: bool = False, grid=None) -> Path:
    """Write the base network (no adapters) atomically; ``grid`` (a ``CanonicalGrid``) is the grid it was trained
    on; ``half`` stores float16 weights."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}
    geometry = {"geometry": grid.to_dict()} if grid is not None else {}
    return save_torch({"format": CHECKPOINT_FORMAT, "arch": asdict(cfg), "windows": list(windows), **geometry, "state_dict": sd,
                       **(extra or {})}, path)


def checkpoint_grid(ckpt: dict):
    """The canonical grid (``CanonicalGrid``) stored in a checkpoint dict, or None for an old checkpoint without one."""
    from lowrank_vision.datasets.ct.geometry import CanonicalGrid

    g = ckpt.get("geometry")
    if g is None:
        return None
    try:
        return CanonicalGrid.from_dict(g)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint geometry {g!r} is not valid: {exc}") from exc


def save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` through an in-memory buffer and an atomic write: the same object gives the same bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, expect: UNetConfig | None = None) -> tuple[nn.Module, UNetConfig, dict]:
    """``(network with weights, its UNetConfig, the raw checkpoint dict)``; clear errors for foreign files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{p} is not a readable torch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p} is not a hemorrhage_seg UNet checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    cfg = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["arch"].items()})
    if expect is not None and cfg != expect:
        raise ValueError(f"checkpoint {p} holds architecture {cfg}, but {expect} was requested")
    net = build_network(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        net.load_state_dict(sd)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {p} does not fit architecture {cfg}: {exc}") from exc
    return net, cfg, ckpt
