"""Deterministic synthetic hyperspectral scenes with ground truth (the embedded HSI default).

No public hyperspectral cube with labels ships inside an installable package, so the
default is generated: a label map of field-like regions (a Voronoi tessellation whose
coordinates are warped by a smooth random field, with unlabelled "roads" between
fields), a library of smooth endmember spectra, linear mixing with a class-specific
Dirichlet abundance that varies smoothly in space (texture), a smooth illumination
gain, and additive noise that is correlated across neighbouring bands.

``domain_shift`` builds a second scene of the same classes as seen by another sensor /
season (shifted and re-weighted spectra, another layout), used to test fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowrank_vision.core.validate import require

from .cube import HSICube

__all__ = ["SyntheticSceneConfig", "make_synthetic_scene", "make_endmembers"]


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Size and difficulty of a synthetic scene."""

    height: int = 128
    width: int = 128
    bands: int = 64
    num_classes: int = 8
    cells: int = 64
    """Number of Voronoi fields (each gets one class)."""
    noise: float = 0.02
    """Standard deviation of the (band-correlated) noise, in reflectance units."""
    texture: float = 0.35
    """Strength of the spatial variation of abundances (0 = every pixel of a class identical)."""
    road_width: float = 0.6
    """Width in pixels of the unlabelled gaps between fields."""
    domain_shift: float = 0.0
    """0 = the reference sensor; >0 shifts band centres (in bands) and tilts/gains each spectrum."""
    seed: int = 0

    def __post_init__(self) -> None:
        require(self, "height", self.height >= 8, ">= 8 pixels")
        require(self, "width", self.width >= 8, ">= 8 pixels")
        require(self, "bands", self.bands >= 3, ">= 3")
        require(self, "num_classes", 2 <= self.num_classes <= 64, "in 2..64")
        require(self, "cells", self.cells >= self.num_classes, f">= num_classes ({self.num_classes})")
        for name in ("noise", "texture", "road_width", "domain_shift"):
            require(self, name, getattr(self, name) >= 0, ">= 0")


def _smooth_field(rng: np.random.Generator, shape: tuple, scale: float) -> np.ndarray:
    """Zero-mean unit-std random field smoothed with a Gaussian of ``scale`` pixels (FFT)."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * scale) ** 2 * (fx**2 + fy**2))
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    field -= field.mean()
    return field / (field.std() + 1e-12)


def make_endmembers(rng: np.random.Generator, count: int, wavelengths: np.ndarray) -> np.ndarray:
    """``count`` smooth reflectance spectra ``[count, B]`` in (0, 1): baseline + slope + Gaussian features."""
    wl = (wavelengths - wavelengths.min()) / max(np.ptp(wavelengths), 1e-9)
    spectra = np.empty((count, wl.size))
    for i in range(count):
        s = rng.uniform(0.15, 0.5) + rng.uniform(-0.25, 0.25) * wl
        for _ in range(rng.integers(2, 5)):
            centre, width = rng.uniform(0.0, 1.0), rng.uniform(0.03, 0.15)
            s = s + rng.uniform(-0.25, 0.3) * np.exp(-0.5 * ((wl - centre) / width) ** 2)
        spectra[i] = s
    return np.clip(spectra, 0.02, 0.95)


def _label_map(cfg: SyntheticSceneConfig, rng: np.random.Generator) -> np.ndarray:
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = max(h, w) / 12.0
    yy = yy + warp * _smooth_field(rng, (h, w), max(h, w) / 6.0)
    xx = xx + warp * _smooth_field(rng, (h, w), max(h, w) / 6.0)
    centres = rng.uniform([0, 0], [h, w], size=(cfg.cells, 2))
    # every class owns at least cells // num_classes fields, the rest are drawn at random
    cell_class = np.concatenate([np.arange(cfg.num_classes), rng.integers(0, cfg.num_classes, cfg.cells - cfg.num_classes)])
    rng.shuffle(cell_class)
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    nearest = order[..., 0]
    d_sorted = np.take_along_axis(d, order[..., :2], axis=-1)
    labels = cell_class[nearest] + 1
    # unlabelled roads where the two nearest centres are almost equidistant
    gap = np.sqrt(d_sorted[..., 1]) - np.sqrt(d_sorted[..., 0])
    labels[gap < cfg.road_width] = 0
    return labels.astype(np.int64)


def make_synthetic_scene(cfg: SyntheticSceneConfig | None = None, **overrides) -> HSICube:
    """Generate a scene; the same config always gives the same cube (bit-identical).

    The endmember library depends only on ``num_classes``/``bands`` (seed 1234), so two
    scenes with different ``seed`` share classes but not layout; ``domain_shift > 0``
    changes the spectra the way another sensor or season would.
    """
    cfg = cfg or SyntheticSceneConfig()
    if overrides:
        cfg = SyntheticSceneConfig(**{**cfg.__dict__, **overrides})
    rng = np.random.default_rng(cfg.seed)
    lib_rng = np.random.default_rng(1234 + cfg.num_classes)
    wavelengths = np.linspace(400.0, 2500.0, cfg.bands)
    n_end = cfg.num_classes + 3
    endmembers = make_endmembers(lib_rng, n_end, wavelengths)
    # class c is dominated by endmember c; shares of the 3 "background" endmembers make classes overlap
    concentration = np.full((cfg.num_classes, n_end), 0.3)
    concentration[np.arange(cfg.num_classes), np.arange(cfg.num_classes)] = 6.0
    class_mean = np.stack([lib_rng.dirichlet(c) for c in concentration])  # [K, n_end]
    if cfg.domain_shift > 0:
        shift_rng = np.random.default_rng(4321)
        grid = np.arange(cfg.bands, dtype=np.float64)
        shifted = np.stack([np.interp(grid - cfg.domain_shift * 2.0, grid, e) for e in endmembers])
        tilt = 1.0 + cfg.domain_shift * 0.15 * np.linspace(-1, 1, cfg.bands)
        endmembers = np.clip(shifted * tilt * shift_rng.uniform(0.8, 1.2, (n_end, 1)), 0.02, 0.95)
        class_mean = 0.7 * class_mean + 0.3 * np.stack([shift_rng.dirichlet(c) for c in concentration])

    labels = _label_map(cfg, rng)
    h, w = labels.shape
    cls = np.clip(labels - 1, 0, None)  # roads take the abundances of their nearest field's class, plus extra noise
    texture = np.stack([_smooth_field(rng, (h, w), 3.0) for _ in range(n_end)], axis=-1)
    abund = class_mean[cls] * np.exp(cfg.texture * texture)
    road = labels == 0
    abund[road] = rng.dirichlet(np.ones(n_end), size=int(road.sum()))
    abund /= abund.sum(-1, keepdims=True)
    gain = 1.0 + 0.1 * _smooth_field(rng, (h, w), 8.0)
    cube = (abund @ endmembers) * gain[..., None]
    # band-correlated noise: white noise smoothed along the spectral axis, rescaled to `noise`
    white = rng.standard_normal((h, w, cfg.bands))
    k = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    k /= np.sqrt((k**2).sum())
    padded = np.pad(white, ((0, 0), (0, 0), (4, 4)), mode="reflect") if cfg.bands > 4 else None
    correlated = white if padded is None else sum(k[j] * padded[..., j : j + cfg.bands] for j in range(9))
    cube = cube + cfg.noise * correlated
    return HSICube(
        data=cube.astype(np.float32),
        labels=labels,
        wavelengths=wavelengths,
        class_names=[f"class_{i + 1}" for i in range(cfg.num_classes)],
        source=f"synthetic(seed={cfg.seed}, shift={cfg.domain_shift}, {h}x{w}x{cfg.bands}, K={cfg.num_classes})",
    )
