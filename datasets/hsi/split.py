"""Leak-free HSI sample preparation: split protocols that work on real class distributions, train-only PCA, patches.

Common HSI code (the HybridSN / SSFTT / LoLA-SpecViT lineage) fits PCA on the whole image and draws
train/test pixels at random, so overlapping patches put test pixels in the training inputs. Here every
pixel of the image (labelled or not) belongs to exactly one of train / val / test, and:

* **every labelled pixel of a split is a sample** (no patch guard that throws labels away); the
  neighbours in its ``patch x patch`` window that belong to *another* split are zeroed
  (:func:`masked_patches`), so no training input contains a val/test pixel, and no test input a
  training pixel;
* unlabelled pixels take the split of their nearest labelled pixel (so a field's surroundings go with it);
* PCA is fitted on the pixels of the training split only, then applied to the whole cube.

Protocols (:func:`make_split`):

* ``regions`` (default): class-stratified, spatially disjoint. Each class's connected fields are cut
  by a ``block x block`` grid into units; the units of a class go whole to train / val / test, greedily
  to the split furthest below its share of that class's pixels (seeded order). A class with too few
  units (e.g. one 20-pixel field) has a unit cut along its principal axis into contiguous pieces, so
  every class with at least one pixel per split gets a share of each split.
* ``checkerboard``: ``block x block`` cells alternate train / test; val is carved out of the train
  cells with the ``regions`` rule.
* ``masks``: user-given train and test maps (the fixed train/test ground truths many public scenes
  ship); val is carved out of the train map with the ``regions`` rule.

A class that cannot be covered (fewer pixels than splits, or no training pixel under a fixed protocol)
is left out of the samples (so out of every metric) and named in ``Split.excluded`` with a warning;
only a ground truth that admits no split at all (no labelled pixel, no class with training pixels,
overlapping masks) raises ``ValueError``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Split", "make_split", "region_split", "checkerboard_split", "mask_split", "PROTOCOLS", "PCA", "fit_pca",
           "extract_patches", "masked_patches", "pad_cube", "pad_assignment", "SPLITS"]

SPLITS = ("train", "val", "test")
PROTOCOLS = ("regions", "checkerboard", "masks")


@dataclass
class Split:
    """Per-pixel split assignment, the sample coordinates of each split and the classes left out."""

    assignment: np.ndarray
    """``[H, W]`` int8: 0 train, 1 val, 2 test, for every pixel (unlabelled ones take their nearest labelled pixel's)."""
    coords: dict
    """split name -> ``[N, 2]`` int64 (row, col) of its labelled pixels (classes in ``excluded`` left out)."""
    protocol: str
    excluded: dict = field(default_factory=dict)
    """class id (1-based) -> why it is left out of every split's samples (and so of the metrics)."""
    notes: list = field(default_factory=list)
    """Other facts a user should know (a class with no val or test pixel, ...)."""

    def labels(self, gt: np.ndarray, split: str) -> np.ndarray:
        """Zero-based class ids of a split's samples."""
        rc = self.coords[split]
        return gt[rc[:, 0], rc[:, 1]] - 1

    def summary(self, gt: np.ndarray) -> dict:
        """Per-split class counts, the classes left out, and the fraction of labelled pixels used as samples."""
        k = int(gt.max())
        used = sum(len(self.coords[s]) for s in SPLITS)
        return {"protocol": self.protocol, **{s: np.bincount(self.labels(gt, s), minlength=k).tolist() for s in SPLITS},
                "excluded": {str(c): why for c, why in self.excluded.items()}, "notes": list(self.notes),
                "labelled_used": used, "labelled_total": int((gt > 0).sum()),
                "labelled_used_fraction": round(used / max(int((gt > 0).sum()), 1), 4)}


def _check_gt(gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"gt: expected an [H, W] label map, got shape {gt.shape}")
    if gt.size and gt.min() < 0:
        raise ValueError(f"gt: class ids must be >= 0 (0 = unlabelled), found {gt.min()}")
    if not (gt > 0).any():
        raise ValueError("gt: the label map has no labelled pixel (all zeros); no split is possible")
    return gt.astype(np.int64, copy=False)


def _check_fractions(fractions) -> np.ndarray:
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or fr.min() < 0 or not np.isclose(fr.sum(), 1.0) or fr[0] <= 0:
        raise ValueError(f"fractions: expected 3 non-negative numbers (train > 0) summing to 1, got {tuple(fractions)}")
    return fr


def _cut_along_axis(rc: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` pixels of ``rc[N, 2]`` at one end of its principal axis (a contiguous piece)."""
    centred = rc - rc.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0] if len(rc) > 1 else np.array([1.0, 0.0])
    order = np.lexsort((rc[:, 1], rc[:, 0], centred @ axis))  # ties broken by position: deterministic
    keep = np.zeros(len(rc), bool)
    keep[order[:k]] = True
    return keep


def _assign_class(rc: np.ndarray, unit: np.ndarray, fr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split id per pixel of one class: whole units to the split furthest below its share; cut units to cover every split."""
    active = np.flatnonzero(fr > 0)
    sizes = np.bincount(unit).astype(np.float64)
    target = fr * len(rc)
    unit_split = np.empty(len(sizes), np.int64)
    got = np.zeros(3)
    for u in rng.permutation(len(sizes)):
        s = active[np.argmax((target - got)[active])]
        unit_split[u], got[s] = s, got[s] + sizes[u]
    for s in active:  # repair: a split without pixels of this class takes a small unit, or a cut piece of one
        while got[s] == 0:
            donor = int(np.argmax(got))
            owned = np.flatnonzero((unit_split == donor) & (sizes > 0))
            if len(owned) >= 2:
                u = owned[np.argmin(np.abs(sizes[owned] - target[s]))]  # the unit closest to the split's share
            else:
                members = np.flatnonzero(unit == owned[0])
                k = int(np.clip(round(target[s]), 1, len(members) - 1))
                piece = members[_cut_along_axis(rc[members], k)]
                u = len(sizes)
                unit[piece] = u
                sizes = np.append(sizes, 0.0)
                sizes[owned[0]] -= len(piece)
                sizes[u] = len(piece)
                unit_split = np.append(unit_split, donor)
            unit_split[u] = s
            got[donor] -= sizes[u]
            got[s] += sizes[u]
    return unit_split[unit]


def _fill_unlabelled(assignment: np.ndarray) -> np.ndarray:
    """Every pixel with assignment -1 takes the assignment of its nearest assigned pixel."""
    from scipy import ndimage

    free = assignment < 0
    if not free.any():
        return assignment
    _, (iy, ix) = ndimage.distance_transform_edt(free, return_indices=True)
    return assignment[iy, ix].astype(np.int8)


def _finish(gt: np.ndarray, assignment: np.ndarray, protocol: str, excluded: dict, notes: list) -> Split:
    """Fill unlabelled pixels, drop uncoverable classes, collect sample coordinates, warn about what was left out."""
    classes = np.unique(gt[gt > 0])
    for c in classes:
        on = gt == c
        if int(c) not in excluded and not ((assignment == 0) & on).any():
            excluded[int(c)] = "no training pixel under this protocol"
    if len(excluded) == len(classes):
        raise ValueError(f"gt: no class can be covered by the {protocol!r} split ({excluded}); no split is possible")
    for c in classes:
        if int(c) in excluded:
            continue
        for i, name in ((1, "val"), (2, "test")):
            if not ((assignment == i) & (gt == c)).any():
                notes.append(f"class {int(c)} has no {name} pixel")
    if (assignment >= 0).any():
        assignment = _fill_unlabelled(assignment)
    sample = (gt > 0) & ~np.isin(gt, list(excluded))
    coords = {name: np.argwhere(sample & (assignment == i)).astype(np.int64) for i, name in enumerate(SPLITS)}
    if excluded:
        warnings.warn(f"{protocol} split: class(es) {sorted(excluded)} left out of training and metrics: "
                      + "; ".join(f"{c}: {why}" for c, why in sorted(excluded.items())), stacklevel=3)
    return Split(assignment=assignment.astype(np.int8), coords=coords, protocol=protocol, excluded=excluded, notes=notes)


def _region_assignment(gt: np.ndarray, fr: np.ndarray, block: int, rng: np.random.Generator,
                       excluded: dict) -> np.ndarray:
    from scipy import ndimage

    h, w = gt.shape
    nbx = -(-w // block)
    rows, cols = np.mgrid[0:h, 0:w]
    grid_id = (rows // block) * nbx + cols // block
    n_grid = int(grid_id.max()) + 1
    need = int((fr > 0).sum())
    assignment = np.full(gt.shape, -1, np.int8)
    for c in np.unique(gt[gt > 0]):
        on = gt == c
        if on.sum() < need:
            excluded[int(c)] = f"{int(on.sum())} pixel(s), fewer than the {need} splits it must cover"
            continue
        comp, _ = ndimage.label(on, structure=np.ones((3, 3), int))
        rc = np.argwhere(on)
        _, unit = np.unique(comp[on].astype(np.int64) * n_grid + grid_id[on], return_inverse=True)
        assignment[rc[:, 0], rc[:, 1]] = _assign_class(rc, unit.reshape(-1), fr, rng)
    return assignment


def region_split(gt: np.ndarray, fractions: tuple = (0.3, 0.1, 0.6), block: int = 16, seed: int = 0) -> Split:
    """Class-stratified, spatially disjoint split (see the module docstring); ``fractions`` are of each class's pixels."""
    gt = _check_gt(gt)
    fr = _check_fractions(fractions)
    if block < 2:
        raise ValueError(f"block: expected >= 2 pixels, got {block}")
    excluded: dict = {}
    assignment = _region_assignment(gt, fr, block, np.random.default_rng(seed), excluded)
    return _finish(gt, assignment, "regions", excluded, [])


def _carve_val(gt: np.ndarray, assignment: np.ndarray, val_fraction: float, block: int, seed: int,
               excluded: dict) -> np.ndarray:
    """Move ``val_fraction`` of each class's training pixels (whole regions) to val."""
    if val_fraction <= 0:
        return assignment
    train_gt = np.where(assignment == 0, gt, 0)
    if not (train_gt > 0).any():
        return assignment
    sub: dict = {}
    carved = _region_assignment(train_gt, np.array([1 - val_fraction, val_fraction, 0.0]), block,
                                np.random.default_rng(seed), sub)
    out = assignment.copy()
    out[carved == 1] = 1
    return out


def checkerboard_split(gt: np.ndarray, block: int = 29, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """``block x block`` cells alternate train / test (``seed`` odd swaps the colours); val carved from train."""
    gt = _check_gt(gt)
    h, w = gt.shape
    if block < 2 or (block >= h and block >= w):
        raise ValueError(f"block: expected 2 <= block < the image side ({h}x{w}) so that both colours exist, got {block}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected in [0, 1), got {val_fraction}")
    rows, cols = np.mgrid[0:h, 0:w]
    colour = ((rows // block + cols // block + seed) % 2).astype(np.int8)  # 0 train, 1 test
    assignment = np.where(gt > 0, np.where(colour == 0, 0, 2), -1).astype(np.int8)
    excluded: dict = {}
    assignment = _carve_val(gt, assignment, val_fraction, max(block // 2, 2), seed, excluded)
    return _finish(gt, assignment, "checkerboard", excluded, [])


def mask_split(gt: Optional[np.ndarray], train_mask: np.ndarray, test_mask: np.ndarray, val_fraction: float = 0.2,
               block: int = 16, seed: int = 0) -> Split:
    """User-given train / test maps (nonzero = member; label maps or booleans); val carved out of train.

    ``gt=None`` takes the labels from the maps themselves (the usual TrainImage / TestImage pair).
    """
    train_mask, test_mask = np.asarray(train_mask), np.asarray(test_mask)
    if train_mask.shape != test_mask.shape or train_mask.ndim != 2:
        raise ValueError(f"test_mask: expected the train mask's [H, W] shape {train_mask.shape}, got {test_mask.shape}")
    if gt is None:
        gt = np.where(train_mask > 0, train_mask, test_mask).astype(np.int64)
    gt = _check_gt(gt)
    if train_mask.shape != gt.shape:
        raise ValueError(f"train_mask: expected the ground truth's shape {gt.shape}, got {train_mask.shape}")
    tr, te = (train_mask > 0) & (gt > 0), (test_mask > 0) & (gt > 0)
    if (tr & te).any():
        raise ValueError(f"test_mask: {int((tr & te).sum())} labelled pixel(s) are in the train mask too; masks must be disjoint")
    if not tr.any():
        raise ValueError("train_mask: no labelled pixel is in the train mask; no split is possible")
    assignment = np.full(gt.shape, -1, np.int8)
    assignment[tr], assignment[te] = 0, 2
    excluded: dict = {}
    notes = [f"{int(((gt > 0) & ~tr & ~te).sum())} labelled pixel(s) in neither mask are not used"] if ((gt > 0) & ~tr & ~te).any() else []
    gt_used = np.where(tr | te, gt, 0)
    assignment = _carve_val(gt_used, assignment, val_fraction, block, seed, excluded)
    return _finish(gt_used, assignment, "masks", excluded, notes)


def make_split(gt: np.ndarray, protocol: str = "regions", fractions: tuple = (0.3, 0.1, 0.6), block: int = 16,
               seed: int = 0, val_fraction: float = 0.2, train_mask: Optional[np.ndarray] = None,
               test_mask: Optional[np.ndarray] = None) -> Split:
    """One entry point for every protocol (``fractions`` for ``regions``, ``val_fraction`` for the others)."""
    if protocol == "regions":
        return region_split(gt, fractions, block, seed)
    if protocol == "checkerboard":
        return checkerboard_split(gt, block, val_fraction, seed)
    if protocol == "masks":
        if train_mask is None or test_mask is None:
            raise ValueError("split: 'masks' needs a train mask and a test mask (--train-mask F --test-mask F)")
        return mask_split(gt, train_mask, test_mask, val_fraction, block, seed)
    raise ValueError(f"split: expected one of {PROTOCOLS}, got {protocol!r}")


@dataclass
class PCA:
    """Linear band reduction ``z = (x - mean) @ components.T / scale`` (whitened if ``scale`` = singular values)."""

    mean: np.ndarray  # [B]
    components: np.ndarray  # [k, B]
    scale: np.ndarray  # [k]
    explained_variance_ratio: np.ndarray  # [k]

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def in_bands(self) -> int:
        return int(self.components.shape[1])

    def transform(self, data: np.ndarray) -> np.ndarray:
        """``[..., B] -> [..., k]`` float32."""
        if data.shape[-1] != self.in_bands:
            raise ValueError(f"cube: expected {self.in_bands} bands (the PCA was fitted on {self.in_bands}), got {data.shape[-1]}")
        return (((data - self.mean) @ self.components.T) / self.scale).astype(np.float32)

    def state_dict(self) -> dict:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k), dtype=np.float32))
                for k in ("mean", "components", "scale", "explained_variance_ratio")}

    @classmethod
    def from_state_dict(cls, sd: dict) -> "PCA":
        return cls(**{k: np.asarray(sd[k], dtype=np.float64) for k in ("mean", "components", "scale", "explained_variance_ratio")})


def fit_pca(data: np.ndarray, mask: np.ndarray, n_components: int = 15, whiten: bool = True, max_pixels: int = 200_000,
            seed: int = 0, noise_adjusted: bool = False) -> PCA:
    """Fit PCA on the pixels of ``data[H, W, B]`` where ``mask[H, W]`` is true (the training region only).

    ``noise_adjusted``: the minimum-noise-fraction transform (Green et al. 1988, "A transformation for ordering
    multispectral data in terms of image quality"): the bands are first whitened with respect to the noise
    covariance, estimated as half the covariance of differences between horizontally adjacent training pixels,
    then PCA orders components by signal-to-noise ratio instead of variance, so noisy bands (water absorption,
    bad detectors) do not take the first components. The sign of each component is fixed (largest loading
    positive) so fits are reproducible.
    """
    if data.ndim != 3:
        raise ValueError(f"data: expected [H, W, B], got shape {data.shape}")
    if mask.shape != data.shape[:2]:
        raise ValueError(f"mask: expected shape {data.shape[:2]}, got {mask.shape}")
    if not 1 <= n_components <= data.shape[2]:
        raise ValueError(f"n_components: expected 1..{data.shape[2]} (the band count), got {n_components}")
    x = data[mask].astype(np.float64)
    if x.shape[0] <= n_components:
        raise ValueError(f"mask: only {x.shape[0]} pixels to fit {n_components} components")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_pixels:
        x = x[rng.choice(x.shape[0], max_pixels, replace=False)]
    mean = x.mean(0)
    bands = data.shape[2]
    pre = np.eye(bands)  # x @ pre: identity for PCA, noise whitening for MNF
    if noise_adjusted:
        pair = mask[:, 1:] & mask[:, :-1]
        diff = (data[:, 1:][pair] - data[:, :-1][pair]).astype(np.float64)
        if diff.shape[0] <= bands:
            raise ValueError(f"mask: only {diff.shape[0]} adjacent training pixel pairs to estimate the {bands}-band noise")
        if diff.shape[0] > max_pixels:
            diff = diff[rng.choice(diff.shape[0], max_pixels, replace=False)]
        evals, evecs = np.linalg.eigh(np.cov(diff, rowvar=False) / 2.0)
        pre = evecs / np.sqrt(np.maximum(evals, evals.max() * 1e-10))
    _, s, vt = np.linalg.svd((x - mean) @ pre, full_matrices=False)
    comps = vt[:n_components] @ pre.T  # components in band space: z = (x - mean) @ comps.T
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    std = s[:n_components] / np.sqrt(x.shape[0] - 1)
    scale = np.maximum(std, 1e-8) if whiten else np.ones(n_components)
    evr = s[:n_components] ** 2 / max((s**2).sum(), 1e-12)
    return PCA(mean=mean, components=comps, scale=scale, explained_variance_ratio=evr)


def pad_cube(reduced: np.ndarray, patch: int) -> torch.Tensor:
    """``[H, W, k]`` -> zero-padded channel-first ``[k, H + 2r, W + 2r]`` tensor (r = patch // 2)."""
    r = patch // 2
    t = torch.from_numpy(np.ascontiguousarray(reduced.transpose(2, 0, 1)))
    return F.pad(t, (r, r, r, r))


def extract_patches(padded: torch.Tensor, coords: np.ndarray | torch.Tensor, patch: int) -> torch.Tensor:
    """Gather ``[N, k, patch, patch]`` windows centred on ``coords[N, 2]`` (row, col) of the unpadded image."""
    rc = torch.as_tensor(coords, dtype=torch.long)
    off = torch.arange(patch)
    rows = (rc[:, 0:1] + off)[:, :, None]  # padded index of window row i is row + i
    cols = (rc[:, 1:2] + off)[:, None, :]
    return padded[:, rows, cols].permute(1, 0, 2, 3).contiguous()


def pad_assignment(assignment: np.ndarray, patch: int) -> torch.Tensor:
    """``[H, W]`` split ids -> ``[1, H + 2r, W + 2r]`` float tensor padded with -1 (outside the image)."""
    r = patch // 2
    return F.pad(torch.from_numpy(assignment.astype(np.float32))[None], (r, r, r, r), value=-1.0)


def masked_patches(padded: torch.Tensor, padded_assignment: torch.Tensor, coords: np.ndarray | torch.Tensor,
                   patch: int, split_id: int) -> torch.Tensor:
    """Patches ``[N, k, patch, patch]`` of one split's pixels with every neighbour of another split zeroed."""
    x = extract_patches(padded, coords, patch)
    own = extract_patches(padded_assignment, coords, patch) == float(split_id)
    return x * own.to(x.dtype)
