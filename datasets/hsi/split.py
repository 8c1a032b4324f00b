"""Leak-free HSI sample preparation: spatially disjoint block splits, train-only PCA, patches.

Common HSI code (the HybridSN / SSFTT / LoLA-SpecViT lineage) fits PCA on the whole
image and draws train/test pixels at random, so overlapping patches put test pixels in
the training inputs. Here:

* the image is tiled into ``block x block`` squares, each square goes whole to train,
  val or test (seeded; redrawn until every class has training pixels);
* a pixel is kept as a sample only if its whole ``patch x patch`` window lies inside
  squares of its own split (windows reaching past the image border are padded with zeros), so
  no training input ever contains a val/test pixel;
* PCA is fitted on the pixels of the training squares only, then applied to the whole cube.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BlockSplit", "block_split", "PCA", "fit_pca", "extract_patches", "pad_cube", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass
class BlockSplit:
    """Per-pixel split assignment and the sample coordinates of each split."""

    assignment: np.ndarray
    """``[H, W]`` int8: 0 train, 1 val, 2 test (block-wise)."""
    coords: dict
    """split name -> ``[N, 2]`` int64 (row, col) of labelled pixels whose patch stays inside the split."""
    block: int
    patch: int
    seed: int

    def labels(self, gt: np.ndarray, split: str) -> np.ndarray:
        """Zero-based class ids of a split's samples."""
        rc = self.coords[split]
        return gt[rc[:, 0], rc[:, 1]] - 1

    def summary(self, gt: np.ndarray) -> dict:
        k = int(gt.max())
        return {s: np.bincount(self.labels(gt, s), minlength=k).tolist() for s in SPLITS}


def _window_pure(assignment: np.ndarray, value: int, patch: int) -> np.ndarray:
    """True where every pixel of the ``patch``-window (inside the image) has ``assignment == value``."""
    other = torch.from_numpy((assignment != value).astype(np.float32))[None, None]
    r = patch // 2
    touched = F.max_pool2d(F.pad(other, (r, r, r, r), value=0.0), kernel_size=patch, stride=1)
    return touched[0, 0].numpy() == 0


def block_split(
    gt: np.ndarray,
    fractions: tuple = (0.3, 0.1, 0.6),
    block: int = 16,
    patch: int = 11,
    seed: int = 0,
    min_train_per_class: int = 5,
    max_tries: int = 64,
) -> BlockSplit:
    """Spatially disjoint train/val/test split of a ground-truth map ``gt[H, W]`` (0 = unlabelled).

    ``fractions`` are fractions of blocks (not pixels). Of ``max_tries`` seeded draws of
    the block assignment the most class-balanced one is kept (the class worst covered by
    train or test, relative to the split's share). Raises ``ValueError`` when no draw gives every class ``min_train_per_class`` training pixels (use
    smaller blocks or a larger train fraction).
    """
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"gt: expected an [H, W] label map, got shape {gt.shape}")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions: expected 3 non-negative numbers summing to 1, got {fractions}")
    if block < 2:
        raise ValueError(f"block: expected >= 2 pixels, got {block}")
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch: expected an odd size >= 1, got {patch}")
    if patch >= block:
        raise ValueError(f"patch: expected < block ({block}) so that blocks keep samples, got {patch}")
    h, w = gt.shape
    nby, nbx = -(-h // block), -(-w // block)
    n_blocks = nby * nbx
    classes = np.unique(gt[gt > 0])
    if classes.size == 0:
        raise ValueError("gt: the label map has no labelled pixel (all zeros)")
    counts = np.round(np.array(fractions) * n_blocks).astype(int)
    counts[2] = n_blocks - counts[0] - counts[1]
    rng = np.random.default_rng(seed)
    totals = np.bincount(gt.reshape(-1), minlength=int(gt.max()) + 1)[classes].astype(np.float64)
    targets = np.maximum(np.array(fractions, dtype=np.float64), 1e-9)
    best = None
    for _ in range(max_tries):
        order = rng.permutation(n_blocks)
        block_split_id = np.empty(n_blocks, dtype=np.int8)
        block_split_id[order[: counts[0]]] = 0
        block_split_id[order[counts[0] : counts[0] + counts[1]]] = 1
        block_split_id[order[counts[0] + counts[1] :]] = 2
        assignment = np.kron(block_split_id.reshape(nby, nbx), np.ones((block, block), np.int8))[:h, :w]
        coords, per_split = {}, []
        for i, name in enumerate(SPLITS):
            keep = _window_pure(assignment, i, patch) & (gt > 0)
            coords[name] = np.argwhere(keep).astype(np.int64)
            per_split.append(np.bincount(gt[keep], minlength=int(gt.max()) + 1)[classes])
        worst = int(per_split[0].min())
        # balance: the class worst served by train or test, relative to the split's share of blocks
        score = (worst >= min_train_per_class, min((per_split[0] / totals).min() / targets[0],
                                                   (per_split[2] / totals).min() / targets[2]))
        if best is None or score > best[0]:
            best = (score, worst, assignment, coords)
    _, worst, assignment, coords = best
    if worst < min_train_per_class:
        raise ValueError(
            f"block_split: after {max_tries} draws some class keeps only {worst} training pixels "
            f"(< min_train_per_class={min_train_per_class}); use a smaller block or patch, or more train"
        )
    return BlockSplit(assignment=assignment, coords=coords, block=block, patch=patch, seed=seed)


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
            seed: int = 0) -> PCA:
    """Fit PCA on the pixels of ``data[H, W, B]`` where ``mask[H, W]`` is true (the training region only).

    The sign of each component is fixed (largest loading positive) so fits are reproducible.
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
    if x.shape[0] > max_pixels:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_pixels, replace=False)]
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:n_components]
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
