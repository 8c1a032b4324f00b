"""Super-resolution pairs: bicubic LR from HR, paired LR/HR folders, evaluation sets and patches.

* :class:`SRPatchDataset` draws random aligned ``(lr, hr)`` patches with flips and 90-degree
  rotations from HR images (LR made by bicubic down-sampling) or from paired folders
  (DIV2K/LSDIR layout: ``0001.png`` <-> ``0001x4.png``).
* :func:`load_eval_set` defaults to the bundled *eval* photos, :meth:`SRPatchDataset.from_bundled`
  to the disjoint bundled *train* photos (:mod:`.readers`).

Bicubic degradation: ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` on the
float image (Keys kernel a = -0.5 with the kernel widened by the scale, as MATLAB ``imresize``),
then rounded to 8 bits. HR images are first cropped to a multiple of the scale ("mod crop").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .readers import bundled_photos, image_files, load_hr_folder, read_image

__all__ = [
    "SRImage",
    "mod_crop",
    "bicubic_downsample",
    "bicubic_upsample",
    "load_paired_folder",
    "load_eval_set",
    "SRPatchDataset",
]


@dataclass
class SRImage:
    """One evaluation image: ``lr [3, h, w]`` and ``hr [3, s*h, s*w]``, float in ``[0, 1]``."""

    name: str
    lr: Tensor
    hr: Tensor


def mod_crop(img: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right so both sides are multiples of ``scale``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def bicubic_downsample(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic down-sampling of ``[3, H, W]`` or ``[B, 3, H, W]``, quantised to 8 bits."""
    batched = hr.dim() == 4
    x = hr if batched else hr.unsqueeze(0)
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}; call mod_crop first")
    lr = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    lr = lr.clamp(0, 1).mul(255).round().div(255)
    return lr if batched else lr[0]


def bicubic_upsample(lr: Tensor, scale: int) -> Tensor:
    """Bicubic up-sampling baseline (``[B, 3, h, w]`` -> ``[B, 3, s*h, s*w]``), clamped to ``[0, 1]``."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def load_paired_folder(hr_dir: Union[str, Path], lr_dir: Union[str, Path], scale: int) -> list[tuple[str, Tensor, Tensor]]:
    """Pair HR and LR folders by file stem (``0001`` with ``0001`` or ``0001x4``): ``[(stem, lr, hr)]``."""
    lr_by_stem = {}
    for p in image_files(Path(lr_dir)):
        stem = p.stem[: -len(f"x{scale}")] if p.stem.endswith(f"x{scale}") else p.stem
        lr_by_stem[stem] = p
    pairs = []
    for p in image_files(Path(hr_dir)):
        if p.stem not in lr_by_stem:
            raise ValueError(f"no LR image for HR {p.name} in {lr_dir} (expected {p.stem}.* or {p.stem}x{scale}.*)")
        lr, hr = read_image(lr_by_stem[p.stem]), read_image(p)
        if hr.shape[-2] < lr.shape[-2] * scale or hr.shape[-1] < lr.shape[-1] * scale:
            raise ValueError(f"HR {p.name} {tuple(hr.shape[-2:])} is smaller than {scale}x LR {tuple(lr.shape[-2:])}")
        pairs.append((p.stem, lr, hr[..., : lr.shape[-2] * scale, : lr.shape[-1] * scale]))
    return pairs


def _paired_layout(root: Path, scale: int) -> Optional[tuple[Path, Path]]:
    """Recognise ``root/HR`` + ``root/LR_bicubic/X4`` (DIV2K) or ``root/HR`` + ``root/LR``."""
    hr = root / "HR"
    for lr in (root / "LR_bicubic" / f"X{scale}", root / f"LR_bicubic_X{scale}", root / "LR"):
        if hr.is_dir() and lr.is_dir():
            return hr, lr
    return None


def load_eval_set(source: Union[str, Path, None], scale: int) -> list[SRImage]:
    """Evaluation images: ``None`` -> the bundled ``eval`` photos; a folder of HR images (bicubic LR);
    or a paired folder (``HR/`` with ``LR_bicubic/X{scale}/`` or ``LR/``)."""
    if scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
    if source is None:
        items = [(n, hr) for n, hr in bundled_photos("eval")]
    else:
        root = Path(source)
        layout = _paired_layout(root, scale) if root.is_dir() else None
        if layout is not None:
            return [SRImage(n, lr, hr) for n, lr, hr in load_paired_folder(*layout, scale)]
        items = load_hr_folder(root)
    out = []
    for name, hr in items:
        hr = mod_crop(hr, scale)
        out.append(SRImage(name, bicubic_downsample(hr, scale), hr))
    return out


class SRPatchDataset(Dataset):
    """Random aligned ``(lr [3, p, p], hr [3, s*p, s*p])`` patches with flips and rot90.

    ``images`` is a list of ``(name, hr)`` (LR made by bicubic) or ``(name, lr, hr)`` (paired).
    One "epoch" has ``length`` samples; image choice and crop come from ``seed`` and the index,
    so a given index always returns the same patch (reproducible, worker-safe).
    """

    def __init__(
        self,
        images: Sequence[tuple],
        scale: int,
        lr_patch: int = 32,
        length: int = 1000,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
        if lr_patch < 4:
            raise ValueError(f"lr_patch must be >= 4, got {lr_patch}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not images:
            raise ValueError("images is empty")
        self.scale, self.lr_patch, self.length, self.augment, self.seed = scale, lr_patch, length, augment, seed
        self.pairs: list[tuple[str, Tensor, Tensor]] = []
        for item in images:
            if len(item) == 2:
                name, hr = item
                hr = mod_crop(hr, scale)
                lr = bicubic_downsample(hr, scale)
            elif len(item) == 3:
                name, lr, hr = item
            else:
                raise ValueError(f"images entries must be (name, hr) or (name, lr, hr), got {len(item)} fields")
            if min(lr.shape[-2:]) < lr_patch:
                raise ValueError(f"image {name!r} LR size {tuple(lr.shape[-2:])} is smaller than lr_patch={lr_patch}")
            self.pairs.append((name, lr, hr))
        # Sample images proportionally to their area, so big photos are not under-used.
        areas = np.array([p[1].shape[-2] * p[1].shape[-1] for p in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()

    @classmethod
    def from_folder(cls, directory: Union[str, Path], scale: int, lr_dir: Union[str, Path, None] = None, **kwargs) -> "SRPatchDataset":
        """HR folder (bicubic LR) or, with ``lr_dir``, a paired folder."""
        if lr_dir is not None:
            return cls(load_paired_folder(directory, lr_dir, scale), scale, **kwargs)
        return cls(load_hr_folder(directory), scale, **kwargs)

    @classmethod
    def from_bundled(cls, scale: int, **kwargs) -> "SRPatchDataset":
        """The bundled ``train`` photos (disjoint from the evaluation photos)."""
        return cls(bundled_photos("train"), scale, **kwargs)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        rng = random.Random(self.seed * 1_000_003 + index)
        k = rng.choices(range(len(self.pairs)), weights=self.weights)[0]
        _, lr, hr = self.pairs[k]
        p, s = self.lr_patch, self.scale
        y, x = rng.randrange(lr.shape[-2] - p + 1), rng.randrange(lr.shape[-1] - p + 1)
        lr = lr[:, y : y + p, x : x + p]
        hr = hr[:, y * s : (y + p) * s, x * s : (x + p) * s]
        if self.augment:
            if rng.random() < 0.5:
                lr, hr = lr.flip(-1), hr.flip(-1)
            if rng.random() < 0.5:
                lr, hr = lr.flip(-2), hr.flip(-2)
            if rng.random() < 0.5:
                lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return lr.contiguous(), hr.contiguous()
