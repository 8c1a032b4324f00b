"""Realistic synthetic head CT at real scanner geometry, with hemorrhage ground truth (and a chest CT for OOD tests).

The low-resolution generator of :mod:`.synthetic` stays for quick CPU runs; this one draws a head as
continuous functions of world position (mm, RAS, head centre at the origin), so one case is the
same head at any grid: 512 x 512 x 32 of 0.45 x 0.45 x 5 mm (preset ``"thick"``, a routine axial head
CT), 1 mm isotropic (``"iso"``), or a small grid for tests (``"small"``). Everything is drawn from
``numpy.random.default_rng([seed, domain, index, 7])``; random textures are coarse lattices of fixed
world size interpolated at the sample points, so they do not depend on the grid either.

Each head is shifted (a few mm in-plane, up to 12 mm along the table) and tilted (yaw 8, pitch 12, roll 5
degrees at most) in the scanner, so coverage and slice positions vary between cases.

Anatomy (HU): scalp 35 with a fat layer (-90); skull with outer/inner tables (~1700) and diploe
(~700), thicker at the skull base, petrous ridges, air in the frontal/sphenoid sinuses and mastoids;
a subarachnoid CSF layer (~8) under the inner table; cortical grey matter (38) over white matter
(28) with texture; sulci (CSF clefts, wider with "atrophy"), the interhemispheric fissure with a
dense falx, Sylvian fissures, basal (suprasellar, ambient, prepontine) cisterns; lateral ventricles
(frontal horns, bodies, atria, occipital and temporal horns), third and fourth ventricles; deep grey
nuclei; a cerebellum below the tentorium.

Hemorrhages (HU 50-90, the mask is where blood fills more than half of the voxel):
epidural (biconvex lens under the inner table, 20-35 degrees wide, up to 8-25 mm thick, mostly
temporo-parietal), subdural (crescent along the convexity, 40-75 degrees, 3-15 mm), intraparenchymal
(irregular blob in the basal ganglia/thalamus or a lobe, with a hypodense oedema rim),
intraventricular (dependent blood in the occipital horns, with a fluid level), subarachnoid (blood in
the basal cisterns, Sylvian and interhemispheric fissures and nearby sulci around a bleeding point
near the circle of Willis, patchy). Domain ``"tbi"`` draws 1-3 of epidural, subdural,
intraparenchymal (and intraventricular); ``"sah"`` draws subarachnoid (sometimes with
intraventricular) blood.

Image formation: each voxel averages sub-samples spread over its footprint (partial volume, e.g.
3 sub-slices per 5 mm slice); an in-plane Gaussian reconstruction kernel; beam hardening as cupping
(a few HU darker in the centre of the brain) and a dark band between the petrous ridges; Gaussian
noise, slightly correlated in-plane, whose level grows as slices get thinner (``noise_hu`` at 5 mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import torch

__all__ = ["HeadCTConfig", "HEAD_PRESETS", "HEMORRHAGE_TYPES", "synthesize_head", "synthesize_chest", "write_head_dataset"]

PHANTOM_VERSION = 2
"""Bumped whenever the same (domain, index, seed, config) draws a different head (stale dataset folders are rewritten)."""
HEMORRHAGE_TYPES = ("epidural", "subdural", "intraparenchymal", "intraventricular", "subarachnoid")
_DOMAIN_ID = {"tbi": 1, "sah": 2}


@dataclass(frozen=True)
class HeadCTConfig:
    """Grid and image formation of the realistic generator."""

    shape: tuple[int, int, int] = (512, 512, 32)
    """Voxels along (x, y, z) = (right, anterior, superior) before ``flip``."""
    spacing: tuple[float, float, float] = (0.45, 0.45, 5.0)
    """Voxel size in mm."""
    centre_mm: tuple[float, float, float] = (0.0, 0.0, 8.0)
    """World position of the grid's centre (the head is centred at the origin)."""
    flip: tuple[bool, bool, bool] = (False, False, False)
    """Store these axes reversed (the affine says so): a grid that is not RAS."""
    noise_hu: float = 5.0
    """Noise standard deviation at 5 mm slices (scaled by sqrt(5 / slice mm))."""
    kernel_mm: float = 0.6
    """In-plane Gaussian sigma of the reconstruction kernel, mm."""
    beam_hardening_hu: float = 4.0
    """Cupping depth in the brain's centre, HU (the petrous band is 1.5 times this)."""
    subsample_mm: tuple[float, float, float] = (1.0, 1.0, 1.7)
    """Largest distance between the sub-samples that a voxel averages (partial volume)."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) < 4 for s in self.shape):
            raise ValueError(f"HeadCTConfig.shape must be 3 sizes >= 4, got {self.shape!r}")
        if len(self.spacing) != 3 or any(float(s) <= 0 for s in self.spacing):
            raise ValueError(f"HeadCTConfig.spacing must be 3 positive mm values, got {self.spacing!r}")
        if self.noise_hu < 0 or self.kernel_mm < 0 or self.beam_hardening_hu < 0:
            raise ValueError("HeadCTConfig.noise_hu, kernel_mm and beam_hardening_hu must be >= 0, got "
                             f"{(self.noise_hu, self.kernel_mm, self.beam_hardening_hu)!r}")
        if len(self.subsample_mm) != 3 or any(float(s) <= 0 for s in self.subsample_mm):
            raise ValueError(f"HeadCTConfig.subsample_mm must be 3 positive mm values, got {self.subsample_mm!r}")

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world (RAS, mm) affine, flipped axes included."""
        aff = np.eye(4)
        for k, (n, s, c, f) in enumerate(zip(self.shape, self.spacing, self.centre_mm, self.flip)):
            aff[k, k] = -s if f else s
            aff[k, 3] = c + (n - 1) * s / 2 if f else c - (n - 1) * s / 2
        return aff


HEAD_PRESETS: dict[str, HeadCTConfig] = {
    "thick": HeadCTConfig(),  # routine axial head CT: 512 x 512, 0.45 mm pixels, 5 mm slices
    "iso": HeadCTConfig(shape=(192, 224, 176), spacing=(1.0, 1.0, 1.0), centre_mm=(0.0, 0.0, 2.0), flip=(False, True, False),
                        subsample_mm=(1.0, 1.0, 1.0)),  # 1 mm isotropic, stored posterior-to-anterior
    "small": HeadCTConfig(shape=(64, 72, 16), spacing=(3.0, 3.0, 10.0), subsample_mm=(3.0, 3.0, 3.4), kernel_mm=0.0),  # tests
}


# ----------------------------------------------------------------------------- random textures


class _Field:
    """Zero-mean, unit-std smooth random field, periodic over a fixed world-size lattice (at most 48 cells a side,
    at most 288 mm), evaluated at any world points by trilinear interpolation."""

    def __init__(self, rng: np.random.Generator, sigma_mm: float):
        from scipy.ndimage import gaussian_filter

        step = max(1.0, sigma_mm / 2.0)
        n = int(min(48, math.ceil(288.0 / step)))
        lattice = gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), 2.0, mode="wrap")
        lattice = (lattice - lattice.mean()) / (lattice.std() + 1e-8)
        self.lattice = torch.from_numpy(np.pad(lattice, ((0, 1),) * 3, mode="wrap"))[None, None]  # (1, 1, X, Y, Z)
        self.period = n * step
        self.shift = torch.from_numpy(rng.uniform(0, self.period, size=3).astype(np.float32))

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        q = torch.remainder(p + self.shift, self.period) / self.period * 2 - 1
        g = q[:, [2, 1, 0]]  # grid_sample takes (W, H, D) = (Z, Y, X) coordinates for a (X, Y, Z) lattice
        out = torch.nn.functional.grid_sample(self.lattice, g.view(1, -1, 1, 1, 3), mode="bilinear", align_corners=True)
        return out.view(-1)


# ----------------------------------------------------------------------------- the head


def _ellipsoid(p: torch.Tensor, centre, axes) -> torch.Tensor:
    c, a = torch.tensor(centre, dtype=p.dtype), torch.tensor(axes, dtype=p.dtype)
    return (((p - c) / a) ** 2).sum(1)


class _Head:
    """One head's random parameters; :meth:`render` gives (HU, blood fraction) at world points."""

    def __init__(self, rng: np.random.Generator, domain: str, kinds: Optional[Sequence[str]]):
        u = rng.uniform
        self.a, self.b, self.c = u(64, 72), u(82, 92), u(70, 80)  # inner-table semi-axes (lateral, AP, superior)
        self.skull = u(5.0, 7.5)
        self.scalp = u(4.0, 6.5)
        self.atrophy = u(0.0, 1.0)
        self.csf_layer = 1.2 + 2.0 * self.atrophy
        self.shape_field = _Field(rng, 40.0)
        self.sulci_field = _Field(rng, u(4.0, 6.0))
        self.tex = _Field(rng, 3.0)
        self.bone_tex = _Field(rng, 2.0)
        self.gm, self.wm, self.csf = u(36, 40), u(26, 30), u(4, 10)
        self.vent_scale = 0.85 + 0.5 * self.atrophy
        self.z_base = -0.42 * self.c
        self.lesions = self._draw_lesions(rng, domain, kinds)
        # pose in the scanner: the head is shifted and tilted a little, so coverage and slice phase vary
        yaw, pitch, roll = np.deg2rad([u(-8, 8), u(-12, 12), u(-5, 5)])
        rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
        ry = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
        self.rotation = torch.from_numpy((rz @ rx @ ry).astype(np.float32))
        self.shift = torch.tensor([rng.normal(0, 4), rng.normal(0, 5), u(-12, 12)], dtype=torch.float32)

    # --- geometry helpers
    def inner_depth(self, p: torch.Tensor) -> torch.Tensor:
        """Approximate distance (mm) below the inner table: > 0 inside the skull, < 0 outside it."""
        r = torch.sqrt(((p[:, 0] / self.a) ** 2 + (p[:, 1] / self.b) ** 2 + (p[:, 2] / self.c) ** 2).clamp_min(1e-9))
        length = p.norm(dim=1) / r
        bump = 1.0 + 0.025 * self.shape_field(p / r.unsqueeze(1).clamp_min(0.3) * 0.6)
        return (bump - r) * length

    def _draw_lesions(self, rng, domain, kinds) -> list[dict]:
        if kinds is None:
            if domain == "tbi":
                kinds = list(rng.choice(["epidural", "subdural", "intraparenchymal"], size=rng.integers(1, 4), p=[0.25, 0.4, 0.35]))
                if rng.uniform() < 0.15:
                    kinds.append("intraventricular")
            else:
                kinds = ["subarachnoid"] + (["intraventricular"] if rng.uniform() < 0.3 else [])
        bad = [k for k in kinds if k not in HEMORRHAGE_TYPES]
        if bad:
            raise ValueError(f"kinds must be among {HEMORRHAGE_TYPES}, got {bad}")
        out = []
        for kind in kinds:
            les = {"kind": str(kind), "hu": float(rng.uniform(60, 88) if kind in ("epidural", "intraparenchymal") else rng.uniform(50, 78))}
            if kind in ("epidural", "subdural"):
                phi = rng.uniform(0, 2 * np.pi)
                side = np.array([np.cos(phi) * (1.6 if kind == "epidural" else 1.0), np.sin(phi), rng.uniform(-0.1, 0.7)])
                les["dir"] = side / np.linalg.norm(side)
                if kind == "epidural":
                    les["theta"], les["thick"] = np.deg2rad(rng.uniform(20, 35)), float(np.exp(rng.uniform(np.log(8), np.log(25))))
                else:
                    les["theta"], les["thick"] = np.deg2rad(rng.uniform(40, 75)), float(np.exp(rng.uniform(np.log(3), np.log(15))))
            elif kind == "intraparenchymal":
                if rng.uniform() < 0.6:  # deep (basal ganglia / thalamus)
                    ctr = [rng.choice([-1, 1]) * rng.uniform(12, 26), rng.uniform(-15, 12), rng.uniform(-2, 15)]
                else:  # lobar
                    d = rng.standard_normal(3)
                    d[2] = abs(d[2])
                    d /= np.linalg.norm(d)
                    ctr = d * np.array([self.a, self.b, self.c]) * rng.uniform(0.45, 0.7)
                les["centre"] = np.asarray(ctr, float)
                les["radius"] = float(np.exp(rng.uniform(np.log(5), np.log(24)))) * rng.uniform(0.75, 1.25, size=3)
                les["rough"] = _Field(rng, 5.0)
            elif kind == "intraventricular":
                les["level"] = float(rng.uniform(-40, -12))  # blood below this y (dependent, supine)
            else:
                les["source"] = np.array([rng.normal(0, 8), rng.normal(8, 6), rng.uniform(-26, -12)])
                les["reach"] = float(np.exp(rng.uniform(np.log(20), np.log(95))))
                les["patchy"] = _Field(rng, 7.0)
                les["cut"] = float(rng.uniform(-0.8, 0.4))
            out.append(les)
        return out

    # --- compartments
    def ventricles(self, p: torch.Tensor) -> torch.Tensor:
        s = self.vent_scale
        v = torch.zeros(p.shape[0], dtype=torch.bool)
        for side in (-1.0, 1.0):
            v |= _ellipsoid(p, (side * 9 * s, 8, 14), (5 * s, 26 * s, 8 * s)) <= 1  # frontal horn + body
            v |= _ellipsoid(p, (side * 17, -24, 8), (6 * s, 12 * s, 8 * s)) <= 1  # atrium
            v |= _ellipsoid(p, (side * 16, -42, 6), (3.5 * s, 12 * s, 4 * s)) <= 1  # occipital horn
            v |= _ellipsoid(p, (side * 27, -6, -14), (3 * s, 12 * s, 3.5 * s)) <= 1  # temporal horn
        v |= (p[:, 0].abs() < 1.5 * s) & (p[:, 1].abs() < 10) & (p[:, 2] > -10) & (p[:, 2] < 10)  # third ventricle
        v |= _ellipsoid(p, (0, -34, -36), (6, 4, 7)) <= 1  # fourth ventricle
        return v

    def cisterns(self, p: torch.Tensor) -> torch.Tensor:
        rho_s = torch.sqrt(p[:, 0] ** 2 + (p[:, 1] - 6) ** 2)
        supra = (rho_s > 7) & (rho_s < 14) & ((p[:, 2] + 20).abs() < 4)
        rho_m = torch.sqrt((p[:, 0] / 1.1) ** 2 + (p[:, 1] + 12) ** 2)
        ambient = (rho_m > 11) & (rho_m < 14) & ((p[:, 2] + 16).abs() < 6) & (p[:, 1] < 0)
        prepontine = (p[:, 0].abs() < 12) & (p[:, 1] > -2) & (p[:, 1] < 2) & (p[:, 2] < -24) & (p[:, 2] > -48)
        return supra | ambient | prepontine

    def fissures(self, p: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inter = (p[:, 0].abs() < 1.4 + 0.8 * self.atrophy) & (p[:, 2] > -8) & (depth > 0)
        falx = (p[:, 0].abs() < 0.5) & (p[:, 2] > 0) & (depth > 2)
        x = p[:, 0].abs()
        sylv = (x > 25) & ((p[:, 1] - 12 + 0.45 * (x - 30)).abs() < 1.3 + 0.8 * self.atrophy) & (p[:, 2] > -22) & (p[:, 2] < 6)
        return inter | sylv, falx

    def sulci(self, p: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        band = (depth > self.csf_layer) & (depth < self.csf_layer + 16)
        return band & (self.sulci_field(p).abs() < 0.10 + 0.10 * self.atrophy)

    def blood(self, p: torch.Tensor, depth: torch.Tensor, csf_spaces: torch.Tensor, vent: torch.Tensor, brain: torch.Tensor):
        """(blood bool, HU of that blood) at the points."""
        blood = torch.zeros(p.shape[0], dtype=torch.bool)
        hu = torch.zeros(p.shape[0])
        for les in self.lesions:
            k = les["kind"]
            if k in ("epidural", "subdural"):
                d = torch.tensor(les["dir"], dtype=p.dtype)
                cos = (p @ d) / p.norm(dim=1).clamp_min(1e-6)
                ang = torch.arccos(cos.clamp(-1, 1))
                frac = (1 - ang / les["theta"]).clamp(0, 1)
                thick = les["thick"] * (frac.sqrt() if k == "subdural" else (1 - (ang / les["theta"]) ** 2).clamp(0, 1))
                m = (depth >= 0) & (depth < thick) & (ang < les["theta"])
            elif k == "intraparenchymal":
                q = (p - torch.tensor(les["centre"], dtype=p.dtype)) / torch.tensor(les["radius"], dtype=p.dtype)
                m = (q.norm(dim=1) + 0.18 * les["rough"](p) < 1.0) & brain
            elif k == "intraventricular":
                m = vent & (p[:, 1] < les["level"])
            else:
                dist = (p - torch.tensor(les["source"], dtype=p.dtype)).norm(dim=1)
                near = (dist < les["reach"]) & ((les["patchy"](p) > les["cut"]) | (dist < 0.3 * les["reach"]))
                m = csf_spaces & near
            m = m & ~blood
            blood |= m
            hu = torch.where(m, torch.tensor(les["hu"]), hu)
        return blood, hu

    def oedema(self, p: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(p.shape[0], dtype=torch.bool)
        for les in self.lesions:
            if les["kind"] == "intraparenchymal":
                q = (p - torch.tensor(les["centre"], dtype=p.dtype)) / (torch.tensor(les["radius"], dtype=p.dtype) + 5.0)
                out |= q.norm(dim=1) < 1.0
        return out

    def floor(self, p: torch.Tensor) -> torch.Tensor:
        """Height (mm) of the skull base under each point: deep posterior fossa, middle fossae, sella, anterior fossa."""
        x, y = p[:, 0].abs(), p[:, 1]
        post = y < -12
        middle = (~post) & (y < 28) & (x > 20)
        central = (~post) & (y < 28) & (x <= 20)
        z = torch.full_like(y, self.z_base + 10.0)  # anterior fossa (orbital roofs)
        z = torch.where(middle, torch.tensor(self.z_base - 8.0), z)
        z = torch.where(central, torch.tensor(self.z_base + 2.0), z)
        return torch.where(post, torch.tensor(self.z_base - 26.0), z)

    def tentorium(self, p: torch.Tensor) -> torch.Tensor:
        """Height of the tentorium: the cerebellum lies below it, behind y = -12."""
        return -10.0 + 0.3 * (p[:, 1] + 12.0) - 0.08 * p[:, 0].abs()

    def render(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(HU, blood 0/1) at world points ``p`` (N, 3) mm, before blur and noise."""
        p = (p - self.shift) @ self.rotation  # scanner -> head coordinates (R^T (p - t))
        hu = torch.full((p.shape[0],), -1000.0)
        blood = torch.zeros(p.shape[0])
        reach = self.skull + self.scalp + 6.0
        r0 = (p[:, 0] / (self.a + reach)) ** 2 + (p[:, 1] / (self.b + reach)) ** 2 + (p[:, 2] / (self.c + reach)) ** 2
        idx = torch.nonzero(r0 < 1).squeeze(1)  # everything else is air
        if idx.numel():
            hu[idx], blood[idx] = self._render_head(p[idx])
        return hu, blood

    def _render_head(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        depth = self.inner_depth(p)  # > 0 inside the skull
        hu = torch.full((p.shape[0],), -1000.0)
        outer = depth > -(self.skull + self.scalp)
        hu[outer] = 35.0
        hu[(depth < -(self.skull + 1.5)) & (depth > -(self.skull + 3.0))] = -90.0  # scalp fat
        bone = (depth <= 0) & (depth > -self.skull)
        table = (depth > -1.6) | (depth < -self.skull + 1.6)
        hu[bone & table] = 1750.0
        diploe = bone & ~table
        hu[diploe] = 700.0 + 120.0 * self.bone_tex(p[diploe])
        inside = depth > 0
        floor = self.floor(p)
        base = inside & (p[:, 2] < floor)  # skull base: a bone plate with air cells; below it soft tissue and the spine
        plate = base & (p[:, 2] > floor - 14.0)
        hu[plate] = 450.0 + 300.0 * self.bone_tex(p[plate])
        neck = base & ~plate
        hu[neck] = 42.0
        hu[neck & (p[:, 0].abs() < 9) & (p[:, 1] > -22) & (p[:, 1] < -4)] = 500.0
        zb = self.z_base
        petrous = (_ellipsoid(p, (34, -14, zb - 6), (18, 6, 7)) <= 1) | (_ellipsoid(p, (-34, -14, zb - 6), (18, 6, 7)) <= 1)
        sinus = (_ellipsoid(p, (0, self.b - 6, zb + 2), (14, 8, 12)) <= 1) | (_ellipsoid(p, (0, 18, zb - 16), (10, 10, 9)) <= 1)
        mastoid = (_ellipsoid(p, (44, -22, zb - 12), (7, 8, 8)) <= 1) | (_ellipsoid(p, (-44, -22, zb - 12), (7, 8, 8)) <= 1)
        hu[petrous & outer & ~inside | petrous & base] = 1600.0
        hu[(sinus | mastoid) & (base | bone)] = -900.0
        cranial = inside & ~base
        blood = torch.zeros(p.shape[0])
        ci = torch.nonzero(cranial).squeeze(1)
        if ci.numel():
            hu[ci], blood[ci] = self._render_cranium(p[ci], depth[ci])
        return hu, blood

    def _render_cranium(self, p: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HU and blood inside the skull (above its base)."""
        n = p.shape[0]
        hu = torch.full((n,), float(self.csf))
        brain = depth > self.csf_layer
        tex = self.tex(p)
        hu = torch.where(brain & (depth < self.csf_layer + 3.2), self.gm + 1.5 * tex, hu)
        hu = torch.where(brain & (depth >= self.csf_layer + 3.2), self.wm + 1.5 * tex, hu)
        deep = torch.zeros(n, dtype=torch.bool)
        for side in (-1.0, 1.0):
            deep |= (_ellipsoid(p, (side * 20, 4, 4), (7, 14, 9)) <= 1) | (_ellipsoid(p, (side * 10, -14, 6), (8, 11, 8)) <= 1)
        hu = torch.where(brain & deep, self.gm - 1.0 + 1.5 * tex, hu)
        cereb = brain & (p[:, 1] < -12) & (p[:, 2] < self.tentorium(p))
        hu = torch.where(cereb, 33.0 + 4.0 * self.sulci_field(p * 2.5), hu)
        tent = (p[:, 1] < -12) & ((p[:, 2] - self.tentorium(p)).abs() < 0.6)
        vent = self.ventricles(p) & brain
        fiss, falx = self.fissures(p, depth)
        spaces = brain & (self.cisterns(p) | fiss | self.sulci(p, depth))
        csf = vent | spaces | ~brain
        hu = torch.where(csf, torch.tensor(float(self.csf)), hu)
        hu = torch.where((falx | tent) & brain, torch.tensor(50.0), hu)
        hu = torch.where(self.oedema(p) & brain & ~csf, hu - 9.0, hu)
        blood, bhu = self.blood(p, depth, spaces | ~brain, vent, brain & ~vent)
        hu = torch.where(blood, bhu + 2.0 * tex, hu)
        return hu, blood.float()


# ----------------------------------------------------------------------------- image formation


def _subsample_offsets(spacing, subsample_mm) -> torch.Tensor:
    axes = []
    for s, sub in zip(spacing, subsample_mm):
        k = max(1, int(math.ceil(s / sub - 1e-9)))
        axes.append(((torch.arange(k, dtype=torch.float32) + 0.5) / k - 0.5) * s)
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _render_grid(head: _Head, cfg: HeadCTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Voxel averages of HU and blood fraction on the un-flipped RAS grid of ``cfg``."""
    nx, ny, nz = cfg.shape
    sx, sy, sz = cfg.spacing
    x0 = [c - (n - 1) * s / 2 for n, s, c in zip(cfg.shape, cfg.spacing, cfg.centre_mm)]
    xs = torch.arange(nx, dtype=torch.float32) * sx + x0[0]
    ys = torch.arange(ny, dtype=torch.float32) * sy + x0[1]
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    plane = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    offsets = _subsample_offsets(cfg.spacing, cfg.subsample_mm)
    hu = np.empty(cfg.shape, np.float32)
    blood = np.empty(cfg.shape, np.float32)
    # cheap bounding test: the head lies within |x| < 100, |y| < 120, |z| < 110 mm
    for k in range(nz):
        z = float(k * sz + x0[2])
        acc_h = torch.zeros(nx * ny)
        acc_b = torch.zeros(nx * ny)
        for off in offsets:
            p = torch.cat([plane + off[:2], torch.full((nx * ny, 1), z + float(off[2]))], 1)
            h, b = head.render(p)
            acc_h += h
            acc_b += b
        hu[:, :, k] = (acc_h / len(offsets)).view(nx, ny).numpy()
        blood[:, :, k] = (acc_b / len(offsets)).view(nx, ny).numpy()
    return hu, blood


def _finish(hu: np.ndarray, cfg: HeadCTConfig, rng: np.random.Generator, head: Optional[_Head]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if head is not None and cfg.beam_hardening_hu > 0:
        grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s + c for n, s, c in zip(cfg.shape, cfg.spacing, cfg.centre_mm)],
                           indexing="ij", sparse=True)
        t = head.shift.numpy()
        r2 = ((grid[0] - t[0]) / head.a) ** 2 + ((grid[1] - t[1]) / head.b) ** 2 + ((grid[2] - t[2]) / head.c) ** 2
        soft = (hu > -200) & (hu < 200)
        cup = cfg.beam_hardening_hu * np.clip(1 - r2, 0, 1)
        band = 1.5 * cfg.beam_hardening_hu * np.exp(-((grid[1] - t[1] + 14) ** 2) / 50.0) \
            * np.exp(-((grid[2] - t[2] - head.z_base + 2) ** 2) / 40.0) * (np.abs(grid[0] - t[0]) < 30)
        hu = hu - np.where(soft, cup + band, 0).astype(np.float32)
    if cfg.kernel_mm > 0:
        hu = gaussian_filter(hu, [cfg.kernel_mm / cfg.spacing[0], cfg.kernel_mm / cfg.spacing[1], 0])
    if cfg.noise_hu > 0:
        noise = gaussian_filter(rng.standard_normal(cfg.shape).astype(np.float32), [0.7, 0.7, 0])
        noise *= cfg.noise_hu * math.sqrt(5.0 / cfg.spacing[2]) / (noise.std() + 1e-8)
        hu = hu + noise
    return hu


def _store(arr: np.ndarray, cfg: HeadCTConfig) -> np.ndarray:
    for k, f in enumerate(cfg.flip):
        if f:
            arr = np.flip(arr, k)
    return np.ascontiguousarray(arr)


def synthesize_head(domain: Literal["tbi", "sah"], index: int, seed: int = 0, config: HeadCTConfig | str = "small",
                    kinds: Optional[Sequence[str]] = None):
    """One realistic head CT: ``(image int16 HU, mask uint8, info)``, stored with ``config.affine``.

    Deterministic in (domain, index, seed) and the same head at every grid; ``kinds`` forces the
    hemorrhage types (any of :data:`HEMORRHAGE_TYPES`; an empty list gives a head without blood).
    """
    from .readers import blood_volume_ml

    if domain not in _DOMAIN_ID:
        raise ValueError(f"domain must be one of {tuple(_DOMAIN_ID)}, got {domain!r}")
    if int(index) < 0:
        raise ValueError(f"index must be >= 0, got {index!r}")
    cfg = HEAD_PRESETS[config] if isinstance(config, str) else config
    rng = np.random.default_rng([int(seed), _DOMAIN_ID[domain], int(index), 7])
    head = _Head(rng, domain, kinds)
    hu, blood = _render_grid(head, cfg)
    hu = _finish(hu, cfg, rng, head)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    mask = (blood > 0.5).astype(np.uint8)
    info = {"domain": domain, "index": int(index), "seed": int(seed), "lesions": [les["kind"] for les in head.lesions],
            "blood_ml": blood_volume_ml(mask, cfg.spacing), "shape": list(cfg.shape), "spacing_mm": list(cfg.spacing)}
    return _store(image, cfg), _store(mask, cfg), info


def synthesize_chest(seed: int = 0, config: HeadCTConfig | None = None) -> np.ndarray:
    """A chest CT (int16 HU) on ``config``'s grid, for out-of-distribution checks: a 340 x 240 mm trunk with
    subcutaneous fat, muscle, two lungs, mediastinum and heart, vertebra, ribs and a table-free air background."""
    cfg = config or HeadCTConfig(shape=(512, 512, 40), spacing=(0.7, 0.7, 5.0), centre_mm=(0.0, 0.0, 0.0))
    rng = np.random.default_rng([int(seed), 99])
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s + c for n, s, c in zip(cfg.shape, cfg.spacing, cfg.centre_mm)],
                          indexing="ij", sparse=True)
    a, b = rng.uniform(160, 180), rng.uniform(110, 125)
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2) + 0 * z
    hu = np.full(np.broadcast_shapes(r.shape, z.shape), -1000.0, np.float32)
    hu[r < 1] = -100.0  # subcutaneous fat
    hu[r < 0.9] = 45.0  # muscle wall
    for side in (-1, 1):
        lung = ((x - side * 75) / 62) ** 2 + ((y - 5) / 85) ** 2 + 0 * z < 1
        hu[lung] = -850.0
    heart = ((x + 15) / 55) ** 2 + ((y - 25) / 50) ** 2 + 0 * z < 1
    hu[heart] = 40.0
    hu[(x / 12) ** 2 + ((y - 60) / 12) ** 2 + 0 * z < 1] = 45.0  # aorta
    vert = (x / 20) ** 2 + ((y + 80) / 18) ** 2 + 0 * z < 1
    hu[vert] = 400.0
    ribs = (np.abs(r - 0.86) < 0.03) & (np.cos(np.arctan2(y, x) * 12 + z / 8.0) > 0.6)
    hu[ribs] = 700.0
    hu = hu + rng.normal(0, cfg.noise_hu, size=hu.shape).astype(np.float32)
    return _store(np.clip(np.round(hu), -1024, 3071).astype(np.int16), cfg)


def write_head_dataset(out_dir, domain: Literal["tbi", "sah"], n_cases: int, seed: int = 0,
                       config: HeadCTConfig | str | Sequence[HeadCTConfig | str] = "small", progress: bool = True, workers: int = 1):
    """Write ``imagesTr/<domain>_NNN.nii.gz``, ``labelsTr/...`` and ``dataset.json`` of realistic heads (reused when the
    same request is already there; ``workers`` > 1 draws cases in that many processes); returns ``out_dir``.
    A sequence of configs draws case ``i`` on grid ``i % len(config)`` (a cohort from several scanners)."""
    from dataclasses import asdict

    from .synthetic import write_case_folder

    many = isinstance(config, (list, tuple))
    cfgs = [HEAD_PRESETS[c] if isinstance(c, str) else c for c in (config if many else [config])]
    if not cfgs:
        raise ValueError("config must be a HeadCTConfig, a preset name or a non-empty sequence of them, got an empty sequence")
    cfg = cfgs if many else cfgs[0]
    want = {"generator": "lowrank_vision.datasets.ct.phantom", "version": PHANTOM_VERSION, "domain": domain, "n_cases": int(n_cases), "seed": int(seed),
            "config": [asdict(c) for c in cfgs] if many else asdict(cfgs[0])}
    return write_case_folder(out_dir, want, synthesize_head, domain, n_cases, seed, cfg, progress=progress, workers=workers,
                             desc=f"head CT {domain}")
