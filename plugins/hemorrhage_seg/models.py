"""Networks of the hemorrhage plugin: MONAI 3-D UNet and a 2-D multi-view UNet; checkpoints.

Minoccheri et al. (arXiv 2508.01772) fine-tune a "multi-view Unet" whose exact form is not public.
Choice made here (:class:`MultiViewUNet`): three independent 2-D MONAI UNets, one per anatomical
plane; each segments every slice of the volume along its axis (axial: slices along z, coronal:
along y, sagittal: along x), and the three per-voxel probabilities are averaged. The fused output
is returned as a logit, ``log(p / (1 - p))``, so the same loss and threshold serve both networks.
Training uses the mean of the three per-view losses and the loss of the fused output.

A checkpoint is a ``torch.save`` dict ``{"format", "arch", "windows", "state_dict"}``; loading it into
another architecture raises a ``ValueError`` that names both.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

__all__ = ["UNetConfig", "MultiViewUNet", "build_network", "save_checkpoint", "load_checkpoint", "DECODER_REGEX",
           "pad_to_multiple"]

CHECKPOINT_FORMAT = "lowrank_vision.hemorrhage_seg.unet/1"
# Up-path modules of a MONAI UNet: model.2, model.1.submodule.2, model.1.submodule.1.submodule.2, ...
DECODER_REGEX = r"(.*\.)?model\.(1\.submodule\.)*2(\..*)?"


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the segmentation network (binary output: one logit channel)."""

    kind: Literal["3d", "multiview"] = "3d"
    """``"3d"``: one 3-D UNet; ``"multiview"``: axial/coronal/sagittal 2-D UNets with fused probabilities."""
    in_channels: int = 2
    """Input channels (one per HU window)."""
    channels: tuple[int, ...] = (8, 16, 32, 64)
    """Feature channels per UNet level."""
    strides: tuple[int, ...] = (2, 2, 2)
    """Down-sampling stride between levels (len(channels) - 1 entries)."""
    num_res_units: int = 1
    """Residual units per block (MONAI ``num_res_units``)."""

    def __post_init__(self) -> None:
        if self.kind not in ("3d", "multiview"):
            raise ValueError(f"UNetConfig.kind must be '3d' or 'multiview', got {self.kind!r}")
        if self.in_channels < 1:
            raise ValueError(f"UNetConfig.in_channels must be >= 1, got {self.in_channels!r}")
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(f"UNetConfig.strides must have len(channels) - 1 = {len(self.channels) - 1} entries, got {self.strides!r}")
        if self.num_res_units < 0:
            raise ValueError(f"UNetConfig.num_res_units must be >= 0, got {self.num_res_units!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this (product of the strides)."""
        out = 1
        for s in self.strides:
            out *= s
        return out


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
                    half: bool = False) -> Path:
    """Write the base network (no adapters) atomically; ``half`` stores float16 weights."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".tmp_" + out.name)
    torch.save({"format": CHECKPOINT_FORMAT, "arch": asdict(cfg), "windows": list(windows), "state_dict": sd, **(extra or {})}, tmp)
    os.replace(tmp, out)
    return out


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
