"""Deterministic synthetic head CT with hemorrhage ground truth, in two domains.

Stand-in for the private cohorts of the SAH transfer-learning paper (Minoccheri et al., arXiv
2508.01772: UNet pre-trained on TBI CT, fine-tuned on aneurysmal SAH). Everything is drawn from
``numpy.random.default_rng([seed, domain, index])``, so case ``i`` of a domain is the same on every
machine and independent of how many cases are generated.

Anatomy (Hounsfield units, array axes (x, y, z) = (left-right, posterior-anterior, inferior-superior),
affine ``diag(spacing)``, slices thicker than the in-plane pixels): air -1000; scalp ~30; skull
~1000 (random thickness); a thin peripheral CSF layer; parenchyma 30-40 with a smooth grey/white
texture; CSF ~0-10 in lateral ventricles, cortical sulci (level lines of a smooth random field in
the cortical band), the interhemispheric and Sylvian fissures and a basal-cistern ring.

Domains (blood 50-90 HU; the mask is every voxel that holds blood, fixed before blurring):

* ``"tbi"`` (pre-training): 1-3 of intraparenchymal blobs (irregular ellipsoids), subdural
  crescents (long, thin, along the inner skull) and epidural lenses (short, thick, biconvex).
* ``"sah"`` (adaptation): thin blood in the CSF spaces (basal cisterns, fissures, sulci, sometimes
  the dependent ventricles) within a random radius of a bleeding point near the circle of Willis,
  patchy through a random field; no mass lesion.

Lesion sizes are log-uniform so that blood volume spans about two orders of magnitude and Dice
by volume tertile is meaningful. Image formation: anisotropic Gaussian blur (partial volume; wider
across slices), Gaussian noise, rounding to int16.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .readers import blood_volume_ml, save_nifti

__all__ = ["SyntheticCTConfig", "synthesize_case", "write_synthetic_dataset", "DOMAINS"]

DOMAINS = ("tbi", "sah")
_DOMAIN_ID = {"tbi": 1, "sah": 2}


@dataclass(frozen=True)
class SyntheticCTConfig:
    """Grid and imaging settings of the generator."""

    shape: tuple[int, int, int] = (64, 64, 24)
    """Voxels along (x, y, z); z is the slice axis."""
    spacing: tuple[float, float, float] = (2.8, 2.8, 7.0)
    """Voxel size in mm (anisotropic: thick axial slices)."""
    noise_hu: float = 6.0
    """Standard deviation of the additive Gaussian noise, in HU."""
    blur_mm: tuple[float, float, float] = (0.8, 0.8, 2.0)
    """Gaussian point-spread sigma per axis, in mm (partial-volume effect)."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) < 8 for s in self.shape):
            raise ValueError(f"SyntheticCTConfig.shape must be 3 sizes >= 8, got {self.shape!r}")
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise ValueError(f"SyntheticCTConfig.spacing must be 3 positive mm values, got {self.spacing!r}")
        if self.noise_hu < 0:
            raise ValueError(f"SyntheticCTConfig.noise_hu must be >= 0, got {self.noise_hu!r}")
        if len(self.blur_mm) != 3 or any(b < 0 for b in self.blur_mm):
            raise ValueError(f"SyntheticCTConfig.blur_mm must be 3 values >= 0, got {self.blur_mm!r}")

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS affine: scaled identity, head centre at the origin."""
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = [-(n - 1) * s / 2 for n, s in zip(self.shape, self.spacing)]
        return aff


# ----------------------------------------------------------------------------- building blocks


def _smooth_field(rng: np.random.Generator, shape, spacing, sigma_mm: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``sigma_mm``."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), [sigma_mm / s for s in spacing], mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _grid(cfg: SyntheticCTConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(cfg.shape, cfg.spacing)]
    return np.meshgrid(*axes, indexing="ij")


def _sector(px, py, pz, direction, cos_max):
    """Cosine of the angle to ``direction`` and the mask of the cone ``cos > cos_max``."""
    norm = np.sqrt(px**2 + py**2 + pz**2) + 1e-6
    cos = (px * direction[0] + py * direction[1] + pz * direction[2]) / norm
    return cos, cos > cos_max


def _random_direction(rng, z_range=(-0.3, 0.5)) -> np.ndarray:
    phi = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(phi), np.sin(phi), rng.uniform(*z_range)])
    return d / np.linalg.norm(d)


def _anatomy(cfg: SyntheticCTConfig, rng: np.random.Generator) -> dict:
    x, y, z = _grid(cfg)
    half = [n * s / 2 for n, s in zip(cfg.shape, cfg.spacing)]
    a = rng.uniform(0.72, 0.80) * half[0]
    b = rng.uniform(0.84, 0.92) * half[1]
    c = rng.uniform(0.80, 0.88) * half[2]
    x0, y0 = rng.normal(0, 2.0, size=2)
    px, py, pz = x - x0, y - y0, z
    r = np.sqrt((px / a) ** 2 + (py / b) ** 2 + (pz / c) ** 2)
    mm_per_r = np.sqrt(px**2 + py**2 + pz**2) / np.maximum(r, 1e-6)  # mm per unit of r along the ray
    skull_t = rng.uniform(5.0, 8.0)
    r_head = 1.0
    r_skull_in = r_head - skull_t / mm_per_r
    r_brain = r_skull_in - 1.5 / mm_per_r  # thin peripheral CSF layer
    head, inside_skull = r <= r_head, r <= r_skull_in
    brain = r <= r_brain
    depth_mm = (r_skull_in - r) * mm_per_r  # distance below the inner table of the skull

    hu = np.full(cfg.shape, -1000.0)
    hu[r <= r_head + 4.0 / mm_per_r] = 30.0  # scalp
    hu[head] = rng.uniform(900, 1100)
    hu[inside_skull] = 6.0  # CSF layer
    tex = _smooth_field(rng, cfg.shape, cfg.spacing, 6.0)
    hu[brain] = (35.0 + 3.5 * tex)[brain]

    csf = np.zeros(cfg.shape, bool)
    band = brain & (depth_mm < rng.uniform(10.0, 16.0))
    f = _smooth_field(rng, cfg.shape, cfg.spacing, rng.uniform(5.0, 8.0))
    sulci = band & (np.abs(f) < 0.18)
    fissure = brain & (np.abs(px) < 0.6 * cfg.spacing[0]) & (pz > -0.25 * c) & (np.abs(py) < 0.8 * b)
    tilt = rng.uniform(0.2, 0.5)
    sylvian = brain & (np.abs(px) > 18) & (np.abs((py - 0.1 * b) - tilt * (np.abs(px) - 30)) < 0.8 * cfg.spacing[1]) \
        & (pz > -0.45 * c) & (pz < 0.1 * c)
    zc = -rng.uniform(0.35, 0.45) * c
    rho = np.sqrt(px**2 + (py - 0.05 * b) ** 2)
    cistern = brain & (rho > 9) & (rho < 9 + rng.uniform(5, 8)) & (np.abs(pz - zc) < 0.6 * cfg.spacing[2] + 2)
    vent = np.zeros(cfg.shape, bool)
    for side in (-1, 1):
        va, vb, vc = rng.uniform(4, 6), rng.uniform(18, 26), rng.uniform(8, 12)
        vent |= ((px - side * 8) / va) ** 2 + ((py - 0.05 * b) / vb) ** 2 + ((pz - 0.1 * c) / vc) ** 2 <= 1
    csf |= sulci | fissure | sylvian | cistern | vent
    hu[csf] = rng.uniform(0, 10)
    return dict(
        hu=hu, brain=brain, inside_skull=inside_skull, depth_mm=depth_mm, r=r, px=px, py=py, pz=pz,
        abc=(a, b, c), sulci=sulci, fissures=fissure | sylvian, cistern=cistern, vent=vent, cistern_z=zc,
    )


def _tbi_blood(cfg, rng, an) -> tuple[np.ndarray, list[str]]:
    blood = np.zeros(cfg.shape, bool)
    kinds = list(rng.choice(["iph", "sdh", "edh"], size=rng.integers(1, 4), replace=True, p=[0.45, 0.35, 0.2]))
    px, py, pz = an["px"], an["py"], an["pz"]
    for kind in kinds:
        if kind == "iph":
            a, b, c = an["abc"]
            while True:
                ctr = rng.uniform(-0.55, 0.55, size=3) * np.array([a, b, c])
                if (ctr[0] / a) ** 2 + (ctr[1] / b) ** 2 + (ctr[2] / c) ** 2 < 0.35:
                    break
            rad = np.exp(rng.uniform(np.log(4.0), np.log(22.0))) * rng.uniform(0.7, 1.3, size=3)
            d = np.sqrt(((px - ctr[0]) / rad[0]) ** 2 + ((py - ctr[1]) / rad[1]) ** 2 + ((pz - ctr[2]) / rad[2]) ** 2)
            rough = _smooth_field(rng, cfg.shape, cfg.spacing, 4.0)
            blood |= an["brain"] & (d + 0.2 * rough < 1.0)
        else:
            direction = _random_direction(rng)
            if kind == "sdh":
                theta = np.deg2rad(rng.uniform(35, 75))
                t_max = np.exp(rng.uniform(np.log(3.0), np.log(14.0)))
                cos, inside = _sector(px, py, pz, direction, np.cos(theta))
                frac = np.clip((cos - np.cos(theta)) / (1 - np.cos(theta)), 0, 1)
                thick = t_max * np.sqrt(frac)  # crescent: long, flat, tapering at the ends
            else:
                theta = np.deg2rad(rng.uniform(18, 32))
                t_max = np.exp(rng.uniform(np.log(8.0), np.log(22.0)))
                cos, inside = _sector(px, py, pz, direction, np.cos(theta))
                ang = np.arccos(np.clip(cos, -1, 1))
                thick = t_max * np.clip(1 - (ang / theta) ** 2, 0, 1)  # biconvex lens
            blood |= an["inside_skull"] & inside & (an["depth_mm"] >= 0) & (an["depth_mm"] < thick)
    return blood, [str(k) for k in kinds]


def _sah_blood(cfg, rng, an) -> tuple[np.ndarray, list[str]]:
    px, py, pz = an["px"], an["py"], an["pz"]
    a, b, c = an["abc"]
    src = np.array([rng.normal(0, 10), rng.normal(0.1 * b, 8), an["cistern_z"] + rng.uniform(0, 12)])
    reach = np.exp(rng.uniform(np.log(15.0), np.log(110.0)))
    dist = np.sqrt((px - src[0]) ** 2 + (py - src[1]) ** 2 + (pz - src[2]) ** 2)
    patchy = _smooth_field(rng, cfg.shape, cfg.spacing, 8.0) > rng.uniform(-1.0, 0.3)
    near = (dist < reach) & (patchy | (dist < 0.35 * reach))
    spaces = an["cistern"] | an["fissures"] | an["sulci"]
    kinds = ["cisterns", "fissures", "sulci"]
    thin_layer = an["inside_skull"] & ~an["brain"]  # blood along the convexity
    spaces = spaces | (thin_layer & (dist < 0.6 * reach))
    if rng.uniform() < 0.2:
        spaces = spaces | (an["vent"] & (py < np.median(py[an["vent"]])))  # dependent intraventricular blood
        kinds.append("ivh")
    return spaces & near, kinds


def synthesize_case(domain: Literal["tbi", "sah"], index: int, seed: int = 0, config: SyntheticCTConfig | None = None):
    """One case: ``(image_hu int16 (x, y, z), mask uint8, info dict)``; deterministic in (domain, index, seed)."""
    from scipy.ndimage import gaussian_filter

    if domain not in _DOMAIN_ID:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if int(index) < 0:
        raise ValueError(f"index must be >= 0, got {index!r}")
    cfg = config or SyntheticCTConfig()
    rng = np.random.default_rng([int(seed), _DOMAIN_ID[domain], int(index)])
    an = _anatomy(cfg, rng)
    blood, kinds = (_tbi_blood if domain == "tbi" else _sah_blood)(cfg, rng, an)
    hu = an["hu"]
    blood_hu = rng.uniform(55, 85) if domain == "tbi" else rng.uniform(50, 75)
    hu[blood] = blood_hu + 4.0 * _smooth_field(rng, cfg.shape, cfg.spacing, 3.0)[blood]
    hu = gaussian_filter(hu, [bm / s for bm, s in zip(cfg.blur_mm, cfg.spacing)])
    hu = hu + rng.normal(0.0, cfg.noise_hu, size=cfg.shape)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    mask = blood.astype(np.uint8)
    info = {"domain": domain, "index": int(index), "seed": int(seed), "lesions": kinds,
            "blood_ml": blood_volume_ml(mask, cfg.spacing), "blood_hu": float(blood_hu)}
    return image, mask, info


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    domain: Literal["tbi", "sah"],
    n_cases: int,
    seed: int = 0,
    config: SyntheticCTConfig | None = None,
    progress: bool = True,
) -> Path:
    """Write ``imagesTr/<domain>_NNN.nii.gz``, ``labelsTr/...`` and ``dataset.json``; returns ``out_dir``.

    A folder that already holds the same cases (same ``dataset.json``) is reused as is.
    """
    cfg = config or SyntheticCTConfig()
    want = {"generator": "lowrank_vision.datasets.ct.synthetic", "domain": domain, "n_cases": int(n_cases),
            "seed": int(seed), "config": asdict(cfg)}
    return write_case_folder(out_dir, want, synthesize_case, domain, n_cases, seed, cfg, progress=progress,
                             desc=f"synthesize {domain}")


def _write_case(job) -> dict:
    draw, out, domain, i, seed, cfg = job
    image, mask, info = draw(domain, i, seed, cfg)
    name = f"{domain}_{i:03d}.nii.gz"
    save_nifti(image, cfg.affine, out / "imagesTr" / name)
    save_nifti(mask, cfg.affine, out / "labelsTr" / name)
    return {"image": f"imagesTr/{name}", "label": f"labelsTr/{name}", **info}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def write_case_folder(out_dir, want: dict, draw, domain: str, n_cases: int, seed: int, cfg, *, progress: bool = True,
                      workers: int = 1, desc: str = "") -> Path:
    """The folder both CT generators write: ``imagesTr/<domain>_NNN.nii.gz``, ``labelsTr/...`` and ``dataset.json``
    (``want`` plus each case's info); a folder whose ``dataset.json`` records the same ``want`` is reused as is.
    ``draw(domain, i, seed, cfg) -> (image, mask, info)``, written on ``cfg.affine``; a sequence of configs gives case
    ``i`` config ``i % len(cfg)`` (cases from several scanner grids); with ``workers`` > 1 the cases are drawn in that
    many spawned processes (one torch thread each), so ``draw`` must be a module-level function."""
    from tqdm.auto import tqdm

    from lowrank_vision.core.files import write_json

    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases!r}")
    out = Path(out_dir)
    meta_path = out / "dataset.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in want} == json.loads(json.dumps(want)):
            return out
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
    jobs = [(draw, out, domain, i, int(seed), cfgs[i % len(cfgs)]) for i in range(int(n_cases))]
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
            cases = list(tqdm(pool.map(_write_case, jobs), total=len(jobs), desc=desc, disable=not progress))
    else:
        cases = [_write_case(job) for job in tqdm(jobs, desc=desc, disable=not progress)]
    write_json(meta_path, {**want, "cases": cases}, indent=1)
    return out
