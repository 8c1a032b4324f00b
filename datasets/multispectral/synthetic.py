"""Deterministic synthetic RGB+thermal detection scenes, written in ultralytics' multispectral layout.

No package on the registries ships real RGB+thermal images with boxes (checked: flirpy,
flirimageextractor, multispectral-pedestrian-detection, rgbt (boxes only); see the project's
reference notes), so the embedded default is generated. Each image is 4 channels -- R, G, B,
thermal -- with known boxes of three classes that are hot in the thermal channel and variably
visible in RGB:

* ``vehicle`` (most frequent), ``person``, ``vessel`` (rarest, on water): long-tailed counts
  (class probabilities ``class_probs``);
* conditions drawn per image: night (RGB darkened and noisier, thermal unchanged), fog (RGB
  blended to grey, thermal slightly blurred), glare (a saturated RGB blob), occlusion (canopy
  patches over parts of objects, strong in RGB, weak in thermal), scale variation (object size
  log-uniform over ``scale_range``) and clutter (warm rocks with no label, coloured blobs in RGB);
* labels follow the thermal ground truth, as in DLRMamba (objects hidden in RGB stay labelled).

Everything depends on ``(seed, split, index)`` only, so any image can be regenerated alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lowrank_vision.core.files import PathLike, atomic_dir
from lowrank_vision.core.validate import require

__all__ = ["SyntheticConfig", "CLASS_NAMES", "render_scene", "write_dataset", "write_tiff", "write_data_yaml"]

CLASS_NAMES = ("vehicle", "person", "vessel")
SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_029}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and content of the generated data set."""

    n_train: int = 240
    """Training images."""
    n_val: int = 60
    """Validation images (model selection)."""
    n_test: int = 60
    """Held-out test images (reported numbers)."""
    size: int = 256
    """Image side in pixels (square)."""
    seed: int = 0
    """Seed of the whole data set."""
    objects: tuple[int, int] = (2, 6)
    """Min and max objects per image (inclusive)."""
    class_probs: tuple[float, float, float] = (0.62, 0.28, 0.10)
    """Probability of vehicle, person, vessel (long tail)."""
    scale_range: tuple[float, float] = (0.6, 1.6)
    """Object size factor, drawn log-uniformly."""
    p_night: float = 0.35
    """Probability of a night image."""
    p_fog: float = 0.25
    """Probability of fog."""
    p_glare: float = 0.2
    """Probability of a glare blob."""
    p_occlusion: float = 0.3
    """Probability that an object is partly covered by canopy."""
    clutter: int = 4
    """Max number of unlabelled distractors (warm rocks, coloured blobs)."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            require(self, name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1, "an int >= 1")
        require(self, "size", isinstance(self.size, int) and self.size >= 32 and self.size % 32 == 0, "a multiple of 32 >= 32")
        require(self, "objects", 1 <= self.objects[0] <= self.objects[1], "(min, max) with 1 <= min <= max")
        require(self, "class_probs", len(self.class_probs) == 3 and min(self.class_probs) > 0 and abs(sum(self.class_probs) - 1) < 1e-6, "three positive probabilities summing to 1")
        require(self, "scale_range", 0 < self.scale_range[0] <= self.scale_range[1], "(lo, hi) with 0 < lo <= hi")
        for name in ("p_night", "p_fog", "p_glare", "p_occlusion"):
            require(self, name, 0.0 <= getattr(self, name) <= 1.0, "in [0, 1]")
        require(self, "clutter", isinstance(self.clutter, int) and self.clutter >= 0, "an int >= 0")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1], ``size x size``."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, h: float, w: float) -> np.ndarray:
    return (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)


def render_scene(config: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image: ``uint8 [H, W, 4]`` (R, G, B, thermal), labels ``float32 [n, 5]`` (cls, cx, cy, w, h), conditions."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"render_scene: split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    rng = np.random.default_rng([config.seed, SPLIT_OFFSETS[split] + index])
    S = config.size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    cond = {"night": bool(rng.random() < config.p_night), "fog": bool(rng.random() < config.p_fog),
            "glare": bool(rng.random() < config.p_glare)}

    # background: land texture, an optional water band (where vessels go), cool smooth thermal
    land = _smooth_noise(rng, S, 8)
    rgb = np.stack([0.30 + 0.25 * land, 0.38 + 0.25 * land, 0.22 + 0.15 * land], -1)
    rgb += 0.05 * (_smooth_noise(rng, S, 32)[..., None] - 0.5)
    thermal = 0.25 + 0.12 * _smooth_noise(rng, S, 4)
    water_top = int(S * rng.uniform(0.55, 0.8))
    water = yy >= water_top
    rgb[water] = np.array([0.12, 0.25, 0.45]) + 0.05 * rng.random((int(water.sum()), 1))
    thermal[water] = 0.18

    # unlabelled clutter: warm rocks (thermal only slightly below targets) and coloured RGB blobs
    for _ in range(int(rng.integers(0, config.clutter + 1))):
        cy, cx, r = rng.uniform(0, water_top), rng.uniform(0, S), rng.uniform(0.02, 0.06) * S
        m = _ellipse(yy, xx, cy, cx, r, r * rng.uniform(0.6, 1.4))
        if rng.random() < 0.5:
            thermal[m] = np.maximum(thermal[m], rng.uniform(0.45, 0.6))
            rgb[m] = rgb[m] * 0.7 + 0.3 * 0.45
        else:
            rgb[m] = rng.random(3)

    labels, hidden = [], 0
    n_obj = int(rng.integers(config.objects[0], config.objects[1] + 1))
    base = 2.0 * S / 256.0  # object sides ~5-40 % of the image: a 64-px drone view at 640
    for _ in range(n_obj):
        cls = int(rng.choice(3, p=config.class_probs))
        scale = float(np.exp(rng.uniform(*np.log(config.scale_range)))) * base
        if cls == 0:  # vehicle: rectangle, random colour, hot engine end
            h, w = (10 * scale, 20 * scale) if rng.random() < 0.5 else (20 * scale, 10 * scale)
            cy, cx = rng.uniform(h / 2 + 1, water_top - h / 2 - 1), rng.uniform(w / 2 + 1, S - w / 2 - 1)
            m = _box(yy, xx, cy, cx, h, w)
            rgb[m] = rng.random(3) * 0.8 + 0.1
            thermal[m] = rng.uniform(0.62, 0.75)
            hot = _box(yy, xx, cy - h / 4, cx - w / 4, h / 2, w / 2) if rng.random() < 0.5 else _box(yy, xx, cy + h / 4, cx + w / 4, h / 2, w / 2)
            thermal[m & hot] = rng.uniform(0.85, 1.0)
        elif cls == 1:  # person: upright ellipse, dark clothing, warm
            h, w = 16 * scale, 6.5 * scale
            cy, cx = rng.uniform(h / 2 + 1, water_top - h / 2 - 1), rng.uniform(w / 2 + 1, S - w / 2 - 1)
            m = _ellipse(yy, xx, cy, cx, h / 2, w / 2)
            rgb[m] = np.array([0.35, 0.25, 0.2]) * rng.uniform(0.5, 1.5)
            thermal[m] = rng.uniform(0.8, 0.95)
        else:  # vessel: long ellipse on water, light hull, warm with a cooler wake
            h, w = 8 * scale, 26 * scale
            lo = water_top + h / 2 + 1
            cy, cx = rng.uniform(lo, max(lo + 1, S - h / 2 - 1)), rng.uniform(w / 2 + 1, S - w / 2 - 1)
            if cy + h / 2 >= S:
                continue
            m = _ellipse(yy, xx, cy, cx, h / 2, w / 2)
            wake = _ellipse(yy, xx, cy, cx + w * 0.7, h / 3, w / 2) & ~m
            rgb[wake] = 0.8 * rgb[wake] + 0.2
            rgb[m] = rng.uniform(0.7, 0.95)
            thermal[wake] = np.maximum(thermal[wake], 0.3)
            thermal[m] = rng.uniform(0.7, 0.9)
        y0, y1 = max(cy - h / 2, 0), min(cy + h / 2, S)
        x0, x1 = max(cx - w / 2, 0), min(cx + w / 2, S)
        if rng.random() < config.p_occlusion:  # canopy patch over part of the object
            oc = _ellipse(yy, xx, rng.uniform(y0, y1), rng.uniform(x0, x1), 0.6 * h, 0.6 * w)
            rgb[oc] = np.array([0.1, 0.3, 0.1]) + 0.05 * rng.random(3)
            thermal[oc] = 0.6 * thermal[oc] + 0.4 * 0.3
            hidden += 1
        labels.append([cls, (x0 + x1) / 2 / S, (y0 + y1) / 2 / S, (x1 - x0) / S, (y1 - y0) / S])

    if cond["glare"]:
        g = np.exp(-(((yy - rng.uniform(0, S)) ** 2 + (xx - rng.uniform(0, S)) ** 2) / (2 * (rng.uniform(0.08, 0.2) * S) ** 2)))
        rgb = rgb + 1.5 * g[..., None]
    if cond["fog"]:
        k = rng.uniform(0.45, 0.75)
        rgb = (1 - k) * rgb + k * 0.7
        thermal = 0.85 * thermal + 0.15 * thermal.mean()
    if cond["night"]:
        rgb = rgb * rng.uniform(0.08, 0.25) + rng.normal(0, 0.03, rgb.shape)
    thermal = thermal + rng.normal(0, 0.02, thermal.shape)
    rgb = rgb + rng.normal(0, 0.015, rgb.shape)
    image = np.concatenate([rgb, thermal[..., None]], -1)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    cond["occluded_objects"] = hidden
    return image, np.asarray(labels, np.float32).reshape(-1, 5), cond


def write_tiff(path: PathLike, image: np.ndarray) -> None:
    """``[H, W, C]`` uint8 as a C-page TIFF: ultralytics (``cv2.imdecodemulti``) reads it back as ``[H, W, C]`` in order."""
    import tifffile

    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"write_tiff: image must be uint8 [H, W, C], got {image.dtype} {image.shape}")
    tifffile.imwrite(path, np.ascontiguousarray(np.moveaxis(image, -1, 0)), photometric="minisblack")


def write_data_yaml(path: PathLike, root: Path, names: tuple[str, ...], channels: int, test: bool = True) -> None:
    """An ultralytics data YAML (absolute ``path``, so ultralytics' ``datasets_dir`` setting is never used)."""
    lines = [f"path: {Path(root).resolve()}", "train: images/train", "val: images/val"]
    if test:
        lines.append("test: images/test")
    lines += [f"channels: {channels}", f"nc: {len(names)}", "names:"] + [f"  {i}: {n}" for i, n in enumerate(names)]
    Path(path).write_text("\n".join(lines) + "\n")


def write_dataset(out_dir: PathLike, config: Optional[SyntheticConfig] = None) -> dict:
    """Generate the data set into ``out_dir`` (replaced as a whole, atomically); returns a summary dict.

    Layout: ``images/<split>/<i>.tif`` (4-channel), ``labels/<split>/<i>.txt`` (YOLO),
    ``data.yaml`` (``channels: 4``), ``conditions.json`` (per-image conditions, for sliced metrics).
    """
    config = config or SyntheticConfig()
    out_dir = Path(out_dir).resolve()
    counts = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    class_counts = {s: [0, 0, 0] for s in counts}
    conditions = {}
    with atomic_dir(out_dir) as tmp:
        for split, n in counts.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(n):
                image, labels, cond = render_scene(config, split, i)
                stem = f"{split}_{i:05d}"
                write_tiff(tmp / "images" / split / f"{stem}.tif", image)
                rows = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
                (tmp / "labels" / split / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
                for c in labels[:, 0].astype(int):
                    class_counts[split][c] += 1
                conditions[f"{split}/{stem}"] = cond
        write_data_yaml(tmp / "data.yaml", out_dir, CLASS_NAMES, channels=4)
        summary = {"config": asdict(config), "class_counts": class_counts, "names": list(CLASS_NAMES),
                   "data_yaml": str(out_dir / "data.yaml")}
        (tmp / "conditions.json").write_text(json.dumps({"summary": summary, "images": conditions}, indent=1))
    return summary

