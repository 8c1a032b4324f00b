"""Grid geometry of CT volumes: bring a volume to a model's canonical orientation and spacing, and back.

A model is trained on volumes in one *canonical* grid (:class:`CanonicalGrid`: voxel axes ordered and
flipped to RAS, voxel size ``spacing`` mm). :func:`to_canonical` maps any input (any axis order or
flip, anisotropic or oblique affine) there and returns a :class:`GridMap`; :func:`from_canonical`
maps an array on the canonical grid (a probability map) back onto the input's exact grid.

Choices:

* Orientation: the voxel axes are permuted and flipped to the nearest RAS axes
  (``nibabel.orientations.io_orientation``); this is lossless, and an oblique affine keeps its
  rotation (the grid is resampled along its own voxel axes, never rotated), so an oblique input is
  not interpolated twice and the mask returns exactly onto it.
* Spacing: each axis is resampled separately to ``round(n * s / t)`` voxels (``s`` the input and
  ``t`` the canonical spacing; the extent is kept, so the realised spacing differs from ``t`` by
  less than half a voxel over the extent). Shrinking averages over each output voxel's footprint
  (``area``: no aliasing of thin bone or noise), growing interpolates linearly; voxel centres follow
  ``align_corners=False``. An axis whose size does not change is left untouched (bit-exact).
* Masks are resampled as fractions and thresholded at 0.5 by the caller.

Pure numpy/torch plus ``nibabel.orientations`` (no MONAI), so the same code runs in training,
prediction and the GPU benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["CanonicalGrid", "GridMap", "voxel_spacing", "axis_codes", "to_canonical", "from_canonical", "resample_axes"]


@dataclass(frozen=True)
class CanonicalGrid:
    """The grid a model works in: RAS voxel axes of ``spacing`` mm."""

    spacing: tuple[float, float, float]
    """Voxel size in mm along the canonical (R, A, S) axes."""
    orientation: str = "RAS"
    """Axis codes of the canonical grid (only ``"RAS"`` is supported)."""

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or not all(float(s) > 0 for s in self.spacing):
            raise ValueError(f"CanonicalGrid.spacing must be 3 positive mm values, got {self.spacing!r}")
        if self.orientation != "RAS":
            raise ValueError(f"CanonicalGrid.orientation must be 'RAS', got {self.orientation!r}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    def to_dict(self) -> dict:
        return {"orientation": self.orientation, "spacing_mm": list(self.spacing)}

    @classmethod
    def from_dict(cls, d: dict) -> "CanonicalGrid":
        return cls(spacing=tuple(d["spacing_mm"]), orientation=d.get("orientation", "RAS"))


@dataclass(frozen=True)
class GridMap:
    """How one input grid maps onto the canonical grid (returned by :func:`to_canonical`)."""

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    to_ras: np.ndarray
    """nibabel orientation array taking the input axes to RAS."""
    oriented_shape: tuple[int, int, int]
    canonical_shape: tuple[int, int, int]
    canonical_affine: np.ndarray
    """Voxel-to-world affine of the canonical grid (same world frame as the input)."""

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        return voxel_spacing(self.canonical_affine)

    @property
    def input_spacing(self) -> tuple[float, float, float]:
        return voxel_spacing(self.input_affine)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis: the column norms of the affine's 3x3 part."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0))


def axis_codes(affine: np.ndarray) -> str:
    """Nearest anatomical axis codes of the voxel axes, e.g. ``"RAS"``, ``"LPS"``, ``"PLS"``."""
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(np.asarray(affine, float)))


def _check(array: np.ndarray | torch.Tensor, affine) -> np.ndarray:
    aff = np.asarray(affine, float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise ValueError("affine is singular (a voxel axis has zero length or two axes coincide)")
    if array.ndim != 3:
        raise ValueError(f"volume must be 3-D (x, y, z), got shape {tuple(array.shape)}")
    return aff


def _resample_axis(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    n = x.shape[axis]
    if size == n:
        return x
    moved = x.movedim(axis, -1)
    flat = moved.reshape(-1, 1, n)
    mode = "area" if size < n else "linear"
    out = torch.nn.functional.interpolate(flat, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return out.reshape(*moved.shape[:-1], size).movedim(-1, axis)


def resample_axes(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample the last three axes of float tensor ``x`` to ``shape``, one axis at a time (see module doc)."""
    for k, size in enumerate(shape):
        x = _resample_axis(x, x.dim() - 3 + k, int(size))
    return x


def _apply_ornt(x: np.ndarray | torch.Tensor, ornt: np.ndarray):
    """``nibabel.orientations.apply_orientation`` for numpy arrays and torch tensors (last three axes)."""
    lead = x.ndim - 3
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            x = x.flip(lead + ax) if isinstance(x, torch.Tensor) else np.flip(x, lead + ax)
    perm = list(range(lead)) + [lead + int(i) for i in np.argsort(ornt[:, 0])]
    return x.permute(*perm) if isinstance(x, torch.Tensor) else np.transpose(x, perm)


def to_canonical(array: np.ndarray | torch.Tensor, affine, grid: CanonicalGrid) -> tuple[torch.Tensor, GridMap]:
    """``(float32 tensor on the canonical grid, GridMap)`` for a 3-D ``array`` with voxel-to-world ``affine``."""
    from nibabel.orientations import inv_ornt_aff, io_orientation

    aff = _check(array, affine)
    ornt = io_orientation(aff)
    x = torch.as_tensor(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array).float()
    x = _apply_ornt(x, ornt).contiguous()
    oriented_shape = tuple(int(s) for s in x.shape)
    oriented_aff = aff @ inv_ornt_aff(ornt, array.shape)
    spacing = voxel_spacing(oriented_aff)
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(oriented_shape, spacing, grid.spacing))
    scale = np.array([n / m for n, m in zip(oriented_shape, size)])
    step = np.diag([*scale, 1.0])
    step[:3, 3] = 0.5 * scale - 0.5  # centre of canonical voxel j at oriented index (j + 0.5) * n / m - 0.5
    out = resample_axes(x, size)
    gm = GridMap(tuple(int(s) for s in array.shape), aff, ornt, oriented_shape, size, oriented_aff @ step)
    return out, gm


def from_canonical(array: np.ndarray | torch.Tensor, gm: GridMap) -> torch.Tensor:
    """An array on ``gm``'s canonical grid (last three axes) back onto the input's exact grid (float32 tensor)."""
    from nibabel.orientations import ornt_transform

    x = torch.as_tensor(array).float()
    if tuple(x.shape[-3:]) != tuple(gm.canonical_shape):
        raise ValueError(f"array shape {tuple(x.shape[-3:])} is not the canonical shape {gm.canonical_shape}")
    x = resample_axes(x, gm.oriented_shape)
    back = ornt_transform(np.column_stack([np.arange(3), np.ones(3)]), gm.to_ras)
    x = _apply_ornt(x, back).contiguous()
    assert tuple(x.shape[-3:]) == gm.input_shape
    return x
