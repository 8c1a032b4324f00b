"""Deterministic synthetic hyperspectral scenes with ground truth (the embedded HSI default).

No public hyperspectral cube with labels ships inside an installable package, so the default is
generated, with the statistics that make real scenes (AVIRIS Indian Pines: 145 x 145 pixels, 200
bands, 16 classes of 20 to 2,455 labelled pixels) hard for classifiers:

* a label map of field-like regions (a Voronoi tessellation warped by a smooth random field, with
  unlabelled "roads" between fields and unlabelled background fields, ``background_fields``); **long-tailed class sizes**: the class of each field is drawn
  with probability proportional to ``(rank + 1) ** -size_skew``, every class owns at least one field,
  and the ``tiny_classes`` rarest classes are shrunk to small blobs of tens of pixels inside an
  unlabelled background;
* a library of smooth endmember spectra mixed linearly with a class-specific Dirichlet abundance;
  **spectrally similar classes**: ``similar_pairs`` pairs share their dominant material and differ only
  by a 15 % share of the soil endmember (crop types at different tillage), and every class has its own
  crop-row pattern (``row_texture``: the soil share oscillates with a class-specific period, direction and
  amplitude), which only a classifier that sees a pixel's neighbourhood can use;
* **intra-class variability**: each field gets its own log-normal perturbation of the class abundances
  (``field_variability``) and its own brightness, abundances vary smoothly inside fields (``texture``),
  a smooth illumination gain covers the scene, and abundances are blurred across field edges
  (``edge_mixing`` pixels: mixed pixels at boundaries);
* **noise**: band-correlated noise of std ``noise``, five times stronger in the water-absorption
  bands near 1,400 and 1,900 nm and past 2,450 nm (where the signal is also attenuated to 15 %),
  and four times stronger in ``noisy_bands`` random bands (bad detector elements).

``domain_shift`` builds a second scene of the same classes as seen by another sensor / season
(shifted and re-weighted spectra, another layout), used to test fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowrank_vision.core.validate import require

from .cube import HSICube

__all__ = ["SyntheticSceneConfig", "make_synthetic_scene", "make_endmembers"]


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Size and difficulty of a synthetic scene (the defaults: an Indian-Pines-sized, Indian-Pines-hard scene)."""

    height: int = 145
    width: int = 145
    bands: int = 200
    num_classes: int = 16
    cells: int = 110
    """Number of Voronoi fields (each gets one class)."""
    noise: float = 0.035
    """Standard deviation of the (band-correlated) noise, in reflectance units (x5 in absorption bands)."""
    texture: float = 0.5
    """Strength of the spatial variation of abundances inside a field (0 = every pixel of a field identical)."""
    road_width: float = 0.6
    """Width in pixels of the unlabelled gaps between fields."""
    size_skew: float = 0.8
    """Long tail of class sizes: a field's class is drawn with probability ~ (rank + 1) ** -size_skew (0: uniform)."""
    background_fields: float = 0.35
    """Share of the fields beyond one per class left unlabelled (background of another material mix)."""
    tiny_classes: int = 3
    """The rarest classes shrunk to blobs of 20-60 pixels (capped at num_classes // 5)."""
    purity: float = 6.0
    """Dirichlet concentration of a class's dominant material (0.3 for each other one): higher = purer classes."""
    similar_pairs: int = 4
    """Pairs of classes with the same dominant material, differing by a soil share (capped at num_classes // 4)."""
    field_variability: float = 0.5
    """Std of the per-field log-normal perturbation of abundances (and 1/6 of it for the per-field brightness)."""
    row_texture: float = 1.0
    """Strength of the crop-row pattern: the soil share oscillates with a class-specific period (2.5-7 px),
    direction and amplitude (0: none); spatial-spectral models can see it, per-pixel classifiers cannot."""
    edge_mixing: float = 1.0
    """Std in pixels of the Gaussian blur of abundances across field edges (0: sharp edges)."""
    noisy_bands: int = 10
    """Random bands with four times the noise (bad detector elements)."""
    domain_shift: float = 0.0
    """0 = the reference sensor; >0 shifts band centres (in bands) and tilts/gains each spectrum."""
    seed: int = 0

    def __post_init__(self) -> None:
        require(self, "height", self.height >= 8, ">= 8 pixels")
        require(self, "width", self.width >= 8, ">= 8 pixels")
        require(self, "bands", self.bands >= 3, ">= 3")
        require(self, "num_classes", 2 <= self.num_classes <= 64, "in 2..64")
        require(self, "cells", self.cells >= self.num_classes, f">= num_classes ({self.num_classes})")
        for name in ("noise", "texture", "road_width", "domain_shift", "size_skew", "field_variability", "edge_mixing",
                     "row_texture"):
            require(self, name, getattr(self, name) >= 0, ">= 0")
        require(self, "background_fields", 0 <= self.background_fields < 1, "in [0, 1)")
        require(self, "purity", self.purity > 0, "> 0")
        for name in ("tiny_classes", "similar_pairs", "noisy_bands"):
            require(self, name, isinstance(getattr(self, name), int) and getattr(self, name) >= 0, "an int >= 0")


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


def _label_map(cfg: SyntheticSceneConfig, rng: np.random.Generator, class_rank: np.ndarray) -> tuple:
    """Labels ``[H, W]`` (0 = road / background), the field id of every pixel ``[H, W]`` and each field's class
    (zero-based; -1 for an unlabelled background field)."""
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = max(h, w) / 12.0
    yy = yy + warp * _smooth_field(rng, (h, w), max(h, w) / 6.0)
    xx = xx + warp * _smooth_field(rng, (h, w), max(h, w) / 6.0)
    centres = rng.uniform([0, 0], [h, w], size=(cfg.cells, 2))
    # every class owns one field, the rest follow a long tail over the classes' size ranks
    p = (class_rank + 1.0) ** -cfg.size_skew
    extra = rng.choice(cfg.num_classes, cfg.cells - cfg.num_classes, p=p / p.sum())
    extra[rng.random(extra.size) < cfg.background_fields] = -1
    cell_class = np.concatenate([np.arange(cfg.num_classes), extra])
    rng.shuffle(cell_class)
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    nearest = order[..., 0]
    d_sorted = np.take_along_axis(d, order[..., :2], axis=-1)
    labels = cell_class[nearest] + 1
    # unlabelled roads where the two nearest centres are almost equidistant
    gap = np.sqrt(d_sorted[..., 1]) - np.sqrt(d_sorted[..., 0])
    labels[(gap < cfg.road_width) | (labels == 0)] = 0
    tiny = np.flatnonzero(class_rank >= cfg.num_classes - min(cfg.tiny_classes, cfg.num_classes // 5))
    for c in tiny:  # the rarest classes: one small blob in one of their fields, the rest unlabelled background
        fields = np.flatnonzero(cell_class == c)
        keep = fields[np.argmax([(nearest == f).sum() for f in fields])]
        for f in fields:
            inside = (nearest == f) & (labels == c + 1)
            if f != keep or not inside.any():
                labels[inside] = 0
                continue
            size = int(rng.integers(20, 61))
            dist = np.where(inside, d[..., f], np.inf)
            ranked = np.argsort(dist, axis=None)[:size]
            blob = np.zeros(labels.size, bool)
            blob[ranked] = inside.reshape(-1)[ranked]
            labels[inside & ~blob.reshape(h, w)] = 0
    return labels.astype(np.int64), nearest, cell_class


def _absorption(wavelengths: np.ndarray) -> np.ndarray:
    """True for the water-absorption / low-SNR bands (near 1,400 and 1,900 nm, and past 2,450 nm)."""
    wl = np.asarray(wavelengths)
    return (np.abs(wl - 1400) < 60) | (np.abs(wl - 1900) < 80) | (wl > 2450)


def make_synthetic_scene(cfg: SyntheticSceneConfig | None = None, **overrides) -> HSICube:
    """Generate a scene; the same config always gives the same cube (bit-identical).

    The endmember library, the class abundances and the class-size ranks depend only on
    ``num_classes``/``bands`` (seed 1234), so two scenes with different ``seed`` share classes but not
    layout; ``domain_shift > 0`` changes the spectra the way another sensor or season would.
    """
    from scipy import ndimage

    cfg = cfg or SyntheticSceneConfig()
    if overrides:
        cfg = SyntheticSceneConfig(**{**cfg.__dict__, **overrides})
    rng = np.random.default_rng(cfg.seed)
    lib_rng = np.random.default_rng(1234 + cfg.num_classes)
    wavelengths = np.linspace(400.0, 2500.0, cfg.bands)
    k = cfg.num_classes
    n_end = k + 3  # endmember k = soil, k + 1, k + 2: other background materials
    endmembers = make_endmembers(lib_rng, n_end, wavelengths)
    # class c is dominated by endmember c; shares of the 3 "background" endmembers make classes overlap
    concentration = np.full((k, n_end), 0.3)
    concentration[np.arange(k), np.arange(k)] = cfg.purity
    pairs = min(cfg.similar_pairs, k // 4)
    for i in range(pairs):  # class 2i + 1 = class 2i's material with more soil (another tillage)
        concentration[2 * i + 1] = concentration[2 * i]
        concentration[2 * i + 1, k] += 2.0
    class_mean = np.stack([lib_rng.dirichlet(c) for c in concentration])  # [K, n_end]
    for i in range(pairs):
        class_mean[2 * i + 1] = 0.85 * class_mean[2 * i] + 0.15 * np.eye(n_end)[k]
    class_rank = lib_rng.permutation(k)  # size rank of each class (0 = most fields)
    if cfg.domain_shift > 0:
        shift_rng = np.random.default_rng(4321)
        grid = np.arange(cfg.bands, dtype=np.float64)
        shifted = np.stack([np.interp(grid - cfg.domain_shift * 2.0, grid, e) for e in endmembers])
        tilt = 1.0 + cfg.domain_shift * 0.15 * np.linspace(-1, 1, cfg.bands)
        endmembers = np.clip(shifted * tilt * shift_rng.uniform(0.8, 1.2, (n_end, 1)), 0.02, 0.95)
        class_mean = 0.7 * class_mean + 0.3 * np.stack([shift_rng.dirichlet(c) for c in concentration])

    labels, field, cell_class = _label_map(cfg, rng, class_rank)
    h, w = labels.shape
    field_abund = class_mean[np.maximum(cell_class, 0)] * np.exp(cfg.field_variability * rng.standard_normal((cfg.cells, n_end)))
    field_gain = 1.0 + cfg.field_variability / 6.0 * rng.standard_normal(cfg.cells)
    texture = np.stack([_smooth_field(rng, (h, w), 3.0) for _ in range(n_end)], axis=-1)
    abund = field_abund[field] * np.exp(cfg.texture * texture)
    if cfg.row_texture > 0:  # crop rows: the soil share oscillates with a class-specific period and direction
        period, angle, amp = lib_rng.uniform(2.5, 7.0, k), lib_rng.uniform(0, np.pi, k), lib_rng.uniform(0.2, 1.0, k)
        fc = np.maximum(cell_class, 0)[field]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        phase = rng.uniform(0, 2 * np.pi, cfg.cells)[field]
        wave = np.sin(2 * np.pi * (xx * np.cos(angle[fc]) + yy * np.sin(angle[fc])) / period[fc] + phase)
        abund[..., k] *= np.exp(cfg.row_texture * amp[fc] * wave)
    unlabelled = labels == 0  # roads, background fields, the surroundings of the tiny classes' blobs
    abund[unlabelled] = rng.dirichlet(np.ones(n_end), size=int(unlabelled.sum()))  # roads, background
    abund /= abund.sum(-1, keepdims=True)
    if cfg.edge_mixing > 0:
        abund = ndimage.gaussian_filter(abund, sigma=(cfg.edge_mixing, cfg.edge_mixing, 0), mode="nearest")
    gain = (1.0 + 0.1 * _smooth_field(rng, (h, w), 8.0)) * field_gain[field]
    absorbing = _absorption(wavelengths)
    transmission = np.where(absorbing, 0.15, 1.0)
    cube = (abund @ endmembers) * gain[..., None] * transmission
    # band-correlated noise: white noise smoothed along the spectral axis, rescaled to `noise` (x5 / x4 in bad bands)
    white = rng.standard_normal((h, w, cfg.bands))
    kern = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    kern /= np.sqrt((kern**2).sum())
    padded = np.pad(white, ((0, 0), (0, 0), (4, 4)), mode="reflect") if cfg.bands > 4 else None
    correlated = white if padded is None else sum(kern[j] * padded[..., j : j + cfg.bands] for j in range(9))
    band_noise = np.where(absorbing, 5.0, 1.0)
    sensor_rng = np.random.default_rng(999 + cfg.bands)  # bad detector elements belong to the sensor, not the layout
    band_noise[sensor_rng.choice(cfg.bands, min(cfg.noisy_bands, cfg.bands), replace=False)] *= 4.0
    cube = cube + cfg.noise * band_noise * correlated
    return HSICube(
        data=cube.astype(np.float32),
        labels=labels,
        wavelengths=wavelengths,
        class_names=[f"class_{i + 1}" for i in range(k)],
        source=f"synthetic(seed={cfg.seed}, shift={cfg.domain_shift}, {h}x{w}x{cfg.bands}, K={k})",
    )
