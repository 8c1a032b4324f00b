"""HSI classification metrics (pure numpy) and the PNGs a person opens.

OA = trace(C) / sum(C); AA = mean over classes of the per-class recall (classes absent
from the reference are left out of AA and reported as NaN); Cohen's kappa =
(p_o - p_e) / (1 - p_e) with p_e = sum_k row_k * col_k / N^2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lowrank_vision.core.files import save_figure

__all__ = ["confusion_matrix", "classification_metrics", "save_confusion_png", "save_class_map_png", "class_colors"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class i predicted as j (0-based ids)."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_pred: expected {y_true.shape[0]} predictions, got {y_pred.shape[0]}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name}: class ids must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """OA, AA, kappa (in percent, kappa x100 as in HSI papers), per-class accuracy and the confusion matrix."""
    c = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    n = c.sum()
    if n == 0:
        raise ValueError("y_true: no samples to score")
    support = c.sum(1)
    per_class = np.where(support > 0, np.diag(c) / np.maximum(support, 1), np.nan)
    po = np.trace(c) / n
    pe = float((c.sum(0) * c.sum(1)).sum() / n**2)
    kappa = (po - pe) / (1 - pe) if pe < 1 else 1.0
    return {
        "OA": float(100.0 * po),
        "AA": 100.0 * float(np.nanmean(per_class)),
        "kappa": float(100.0 * kappa),
        "per_class": [None if math.isnan(v) else 100.0 * float(v) for v in per_class],
        "support": support.astype(int).tolist(),
        "confusion": c.astype(int).tolist(),
        "n": int(n),
    }


def class_colors(num_classes: int) -> np.ndarray:
    """``[K + 1, 3]`` uint8; index 0 (unlabelled / background) is black."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if num_classes > 10 else "tab10"]
    cols = [(0, 0, 0)] + [tuple(int(255 * v) for v in cmap(i % cmap.N)[:3]) for i in range(num_classes)]
    return np.array(cols, dtype=np.uint8)


def save_confusion_png(confusion: Sequence, path: Path, class_names: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(confusion, dtype=np.float64)
    k = c.shape[0]
    names = list(class_names or [str(i + 1) for i in range(k)])
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if c[i, j]:
                ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def save_class_map_png(class_map: np.ndarray, path: Path, num_classes: int, ground_truth: Optional[np.ndarray] = None,
                       title: str = "") -> Path:
    """Colour class map ``[H, W]`` (0 = background, 1..K), next to the ground truth when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = class_colors(num_classes)
    panels = [("prediction", class_map)] + ([("ground truth", ground_truth)] if ground_truth is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], panels):
        ax.imshow(cols[np.clip(np.asarray(m), 0, num_classes)], interpolation="nearest")
        ax.set_title(f"{title} {name}".strip(), fontsize=9)
        ax.axis("off")
    return save_figure(fig, path)
