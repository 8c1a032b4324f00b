"""Segmentation metrics of the SAH paper's evaluation: Dice overall and by blood-volume tertile,
predicted vs. annotated blood volume (mL, :func:`lowrank_vision.datasets.ct.readers.blood_volume_ml`):
Pearson correlation and mean absolute error; the results table and the plots.

Choices: Dice of two empty masks is 1.0; tertile edges are the 1/3 and 2/3 quantiles of the *true*
volumes of the evaluated cases (the paper stratifies by annotated volume; exact edges not public).
Few cases: tertiles need at least :data:`MIN_CASES_FOR_TERTILES` cases and three distinct groups, otherwise
the tertile Dice values are ``None`` and ``tertiles`` says why; the Pearson r is ``None`` when either volume
list is constant (or has one case). No summary value is ever NaN.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

__all__ = ["dice", "summarize_cases", "MIN_CASES_FOR_TERTILES", "results_table", "plot_dice_vs_params", "plot_slices_before_after"]


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from true shape {t.shape}")
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


MIN_CASES_FOR_TERTILES = 6
"""Fewest evaluated cases for Dice by volume tertile (two per tertile)."""


def summarize_cases(cases: Sequence[dict]) -> dict:
    """Aggregate per-case ``{"dice", "true_ml", "pred_ml"}`` into the paper's summary metrics (see module doc)."""
    if not cases:
        raise ValueError("cases is empty: nothing to summarize")
    d = np.array([c["dice"] for c in cases], float)
    t = np.array([c["true_ml"] for c in cases], float)
    p = np.array([c["pred_ml"] for c in cases], float)
    out = {"n_cases": int(len(d)), "dice_mean": float(d.mean()), "dice_std": float(d.std())}
    names = ("small", "medium", "large")
    tert = None
    if len(d) < MIN_CASES_FOR_TERTILES:
        why = f"too few cases for volume tertiles ({len(d)} < {MIN_CASES_FOR_TERTILES})"
    else:
        lo, hi = np.quantile(t, [1 / 3, 2 / 3])
        tert = np.where(t <= lo, 0, np.where(t <= hi, 1, 2))
        counts = np.bincount(tert, minlength=3)
        why = None if counts.min() > 0 else f"true volumes too alike for three tertiles (cases per tertile {counts.tolist()})"
        out["tertile_edges_ml"] = [float(lo), float(hi)]
    out["tertiles"] = why or "ok"
    for k, name in enumerate(names):
        out[f"dice_{name}"] = float(d[tert == k].mean()) if why is None else None
    out["volume_mae_ml"] = float(np.abs(p - t).mean())
    out["volume_pearson_r"] = float(np.corrcoef(p, t)[0, 1]) if len(d) > 1 and p.std() > 0 and t.std() > 0 else None
    return out


def _num(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def results_table(rows: Sequence[dict]) -> str:
    """Markdown table of ``compare`` rows (one per strategy and rank)."""
    head = "| strategy | rank | trainable params | % of full | Dice | Dice small | Dice medium | Dice large | vol. r | vol. MAE (mL) |\n"
    head += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    body = "".join(
        f"| {r['strategy']} | {r['rank'] if r['rank'] is not None else '-'} | {r['trainable_params']:,} | {r['trainable_pct_of_full']:.2f} | "
        f"{r['dice_mean']:.3f} ± {r['dice_std']:.3f} | {_num(r['dice_small'], '.3f')} | {_num(r['dice_medium'], '.3f')} | "
        f"{_num(r['dice_large'], '.3f')} | {_num(r['volume_pearson_r'], '.3f')} | {r['volume_mae_ml']:.2f} |\n" for r in rows)
    return head + body


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dice_vs_params(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Dice against trainable parameters (log scale), one line per strategy, ranks annotated."""
    from lowrank_vision.core.files import save_figure

    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    for s in dict.fromkeys(r["strategy"] for r in rows):
        sel = [r for r in rows if r["strategy"] == s]
        xs = [max(r["trainable_params"], 1) for r in sel]
        ax.plot(xs, [r["dice_mean"] for r in sel], "o-" if len(sel) > 1 else "s", label=s)
        for r, x in zip(sel, xs):
            if r["rank"] is not None:
                ax.annotate(str(r["rank"]), (x, r["dice_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; 'none' drawn at 1)")
    ax.set_ylabel("Dice (pooled CV folds)")
    ax.set_title("SAH fine-tuning from a TBI-pretrained UNet")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def plot_slices_before_after(image: np.ndarray, true: np.ndarray, before: np.ndarray, after: np.ndarray,
                             path: str | os.PathLike, slices: Sequence[int], titles: tuple[str, str]) -> None:
    """Axial CT slices (brain window) in two rows, before and after adaptation: true mask contour in green,
    predicted mask contour in red."""
    from lowrank_vision.core.files import save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(2, len(slices), figsize=(2.3 * len(slices), 5.0), squeeze=False)
    for row, (pred, title) in enumerate(((before, titles[0]), (after, titles[1]))):
        for col, z in enumerate(slices):
            ax = axes[row, col]
            ax.imshow(np.clip((image[:, :, z].T - 0.0) / 80.0, 0, 1), cmap="gray", origin="lower")
            for mask, color in ((true, "lime"), (pred, "red")):
                if mask[:, :, z].any():
                    ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors=color, linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"slice z={z}", fontsize=8)
        axes[row, 0].set_ylabel(title, fontsize=8)
    fig.suptitle("green: true blood; red: predicted", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
