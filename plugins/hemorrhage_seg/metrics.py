"""Segmentation metrics of the SAH paper's evaluation: Dice overall and by blood-volume tertile,
predicted vs. annotated blood volume (mL): Pearson correlation and mean absolute error.

Choices: Dice of two empty masks is 1.0; tertile edges are the 1/3 and 2/3 quantiles of the *true*
volumes of the evaluated cases (the paper stratifies by annotated volume; exact edges not public).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["dice", "volume_ml", "summarize_cases"]


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from true shape {t.shape}")
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume in mL of a binary mask with voxel size ``spacing`` in mm."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def summarize_cases(cases: Sequence[dict]) -> dict:
    """Aggregate per-case ``{"dice", "true_ml", "pred_ml"}`` into the paper's summary metrics."""
    if not cases:
        raise ValueError("cases is empty: nothing to summarize")
    d = np.array([c["dice"] for c in cases], float)
    t = np.array([c["true_ml"] for c in cases], float)
    p = np.array([c["pred_ml"] for c in cases], float)
    lo, hi = np.quantile(t, [1 / 3, 2 / 3])
    tert = np.where(t <= lo, 0, np.where(t <= hi, 1, 2))
    out = {"n_cases": int(len(d)), "dice_mean": float(d.mean()), "dice_std": float(d.std()),
           "tertile_edges_ml": [float(lo), float(hi)]}
    for k, name in enumerate(("small", "medium", "large")):
        sel = d[tert == k]
        out[f"dice_{name}"] = float(sel.mean()) if sel.size else float("nan")
    out["volume_mae_ml"] = float(np.abs(p - t).mean())
    out["volume_pearson_r"] = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else float("nan")
    return out
