"""Files a person can open: JSON metrics, loss curves and side-by-side crops (PNG), written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from torch import Tensor

__all__ = ["write_json", "plot_history", "plot_comparison"]


def write_json(obj: dict, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)
    return path


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def plot_history(history: Sequence[dict], path: Union[str, Path], keys: Sequence[str] = ("loss",), title: str = "") -> Path:
    """Training curves (one line per key present in the logged metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in keys:
        if any(key in h for h in history):
            ax.plot(steps, [h.get(key, float("nan")) for h in history], label=key)
    ax.set_xlabel("optimizer step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save_figure(fig, Path(path))


def plot_comparison(panels: Sequence[tuple[str, Tensor]], path: Union[str, Path], crop: Optional[tuple[int, int, int]] = None) -> Path:
    """Side-by-side images ``[(title, img [3, H, W])]``; ``crop=(y, x, size)`` zooms into a region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (title, img) in zip(axes, panels):
        if crop is not None:
            y, x, size = crop
            img = img[:, y : y + size, x : x + size]
        ax.imshow(img.clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return _save_figure(fig, Path(path))
