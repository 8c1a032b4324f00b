"""The in-memory hyperspectral cube shared by every HSI reader, writer and generator.

A cube is ``data[H, W, B]`` (float32, band-last, the layout of the ``.mat`` files of
Indian Pines / Salinas / PaviaU) with an optional ground-truth map ``labels[H, W]``
(int64; ``0`` = unlabelled, classes ``1..K``), optional band centres in nanometres and
optional georeferencing (``crs`` as WKT/EPSG string, ``transform`` as the six GDAL
affine coefficients ``(a, b, c, d, e, f)`` of rasterio's ``Affine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["HSICube"]


@dataclass
class HSICube:
    """A hyperspectral cube ``[H, W, B]`` with optional labels, wavelengths and georeferencing."""

    data: np.ndarray
    """Reflectance / radiance, float32 ``[H, W, B]``."""
    labels: Optional[np.ndarray] = None
    """Ground truth ``[H, W]`` int64, 0 = unlabelled, classes 1..K; ``None`` when the file has none."""
    wavelengths: Optional[np.ndarray] = None
    """Band centres in nm, ``[B]``, when the file states them."""
    crs: Optional[str] = None
    """Coordinate reference system (WKT or ``EPSG:xxxx``) when the file is georeferenced."""
    transform: Optional[tuple] = None
    """Affine pixel->map transform ``(a, b, c, d, e, f)`` when the file is georeferenced."""
    class_names: list = field(default_factory=list)
    """Optional names of classes 1..K."""
    source: str = ""
    """Where the cube came from (path or generator description)."""

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise ValueError(f"data: expected a [H, W, B] array, got shape {data.shape}")
        self.data = data.astype(np.float32, copy=False)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != data.shape[:2]:
                raise ValueError(
                    f"labels: expected shape {data.shape[:2]} (the cube's H, W), got {labels.shape}"
                )
            if labels.min() < 0:
                raise ValueError(f"labels: expected 0 (unlabelled) or class ids >= 1, found {labels.min()}")
            self.labels = labels.astype(np.int64, copy=False)
        if self.wavelengths is not None:
            wl = np.asarray(self.wavelengths, dtype=np.float64).reshape(-1)
            if wl.shape[0] != data.shape[2]:
                raise ValueError(f"wavelengths: expected {data.shape[2]} values (one per band), got {wl.shape[0]}")
            self.wavelengths = wl
        if self.transform is not None:
            t = tuple(float(v) for v in self.transform)
            if len(t) not in (6, 9):
                raise ValueError(f"transform: expected 6 affine coefficients, got {len(t)}")
            self.transform = t[:6]

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def bands(self) -> int:
        return int(self.data.shape[2])

    @property
    def num_classes(self) -> int:
        """Largest class id in the ground truth (0 when there is none)."""
        return 0 if self.labels is None else int(self.labels.max())

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None
