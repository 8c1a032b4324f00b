"""Foreground-aware random patches of a cached CT segmentation dataset (training at real resolution).

:class:`RandomPatches` plays the part of MONAI's ``CacheDataset`` + ``RandCropByPosNegLabeld``: the
volumes stay cached in memory (already windowed and on the model's canonical grid), and every item is
one ``roi`` crop whose centre is, with probability ``pos / (pos + neg)``, a random foreground voxel of the
label (else any voxel); a centre near the border is moved inwards so that the crop stays inside the
volume, and a volume smaller than ``roi`` is zero-padded (windowed air is 0). Item ``i`` is drawn from
``numpy.random.default_rng([seed, i])``: the same index gives the same crop, so a resumed run sees the
same batches; ``samples_per_case`` crops per case make one pass.

Thick-slice augmentation (``thick_slice_prob``, ``thick_slice_factor``): with that probability a crop's image is
area-averaged along the slice axis by ``thick_slice_factor`` and interpolated back linearly, which is what
:func:`..geometry.to_canonical` does to a scan whose slices are that many times thicker than the canonical
spacing; the label stays on the fine grid, so one model serves thin- and thick-slice scans. The images are
windowed before this (the windows clip), a small departure from averaging raw HU that the choice accepts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .geometry import resample_axes

__all__ = ["RandomPatches", "crop_or_pad", "thick_slices"]


def crop_or_pad(x: torch.Tensor, start: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    """``x[..., start:start + roi]`` over the last three axes, zero-padded where ``roi`` exceeds the volume."""
    out = x.new_zeros((*x.shape[:-3], *roi))
    src, dst = [], []
    for s, r, n in zip(start, roi, x.shape[-3:]):
        a, b = max(0, s), min(n, s + r)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[(..., *dst)] = x[(..., *src)]
    return out


class RandomPatches(torch.utils.data.Dataset):
    """``samples_per_case`` random ``roi`` crops per case of ``dataset`` (items ``{"image", "label"}``), see module doc."""

    def __init__(self, dataset, roi: Sequence[int], samples_per_case: int = 4, pos: float = 1.0, neg: float = 1.0, seed: int = 0,
                 thick_slice_prob: float = 0.0, thick_slice_factor: int = 2):
        if len(roi) != 3 or any(int(r) < 1 for r in roi):
            raise ValueError(f"roi must be 3 sizes >= 1, got {roi!r}")
        if int(samples_per_case) < 1 or pos < 0 or neg < 0 or pos + neg <= 0:
            raise ValueError(f"samples_per_case must be >= 1 and pos, neg >= 0 with pos + neg > 0, got {samples_per_case}, {pos}, {neg}")
        if not 0.0 <= float(thick_slice_prob) <= 1.0 or int(thick_slice_factor) < 2:
            raise ValueError(f"thick_slice_prob must be in [0, 1] and thick_slice_factor an int >= 2, got {thick_slice_prob!r}, "
                             f"{thick_slice_factor!r}")
        self.thick_prob, self.thick_factor = float(thick_slice_prob), int(thick_slice_factor)
        self.dataset, self.roi, self.samples = dataset, tuple(int(r) for r in roi), int(samples_per_case)
        self.p_pos, self.seed = pos / (pos + neg), int(seed)
        self.foreground = [torch.nonzero(dataset[i]["label"][0] > 0.5) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.dataset) * self.samples

    def __getitem__(self, i: int) -> dict:
        case = i % len(self.dataset)
        item = self.dataset[case]
        shape = item["image"].shape[-3:]
        rng = np.random.default_rng([self.seed, int(i)])
        fg = self.foreground[case]
        if len(fg) and rng.uniform() < self.p_pos:
            centre = fg[int(rng.integers(len(fg)))].tolist()
        else:
            centre = [int(rng.integers(n)) for n in shape]
        start = [min(max(c - r // 2, 0), max(n - r, 0)) if n >= r else -((r - n) // 2) for c, r, n in zip(centre, self.roi, shape)]
        image = crop_or_pad(item["image"], start, self.roi)
        if self.thick_prob > 0 and rng.uniform() < self.thick_prob:
            image = thick_slices(image, self.thick_factor)
        return {"image": image, "label": crop_or_pad(item["label"], start, self.roi)}


def thick_slices(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``image`` (last axis = slices) as a scan with ``factor`` times thicker slices brought back to its grid."""
    shape = tuple(image.shape[-3:])
    coarse = (*shape[:2], max(1, int(round(shape[2] / factor))))
    return resample_axes(resample_axes(image.float(), coarse), shape).to(image.dtype)
