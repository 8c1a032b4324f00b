"""Deterministic synthetic RGB+thermal detection scenes, written in ultralytics' multispectral layout.

No package on the registries ships real RGB+thermal images with boxes (checked: flirpy 0.6.2 (only
exiftool's metadata test JPEGs), flirimageextractor 1.5.11 and flirextractor 1.0.2 (code only),
multispectral-pedestrian-detection 4.0.0 (an empty wheel), rgbt (tracking boxes only, no images);
see the project's reference notes), so the embedded default is generated. Each image is 4 channels -- R, G, B,
thermal -- with boxes of three classes that are warm in the thermal channel and variably visible
in RGB. What makes it hard, after what real RGB-T drone/surveillance sets (LLVIP, DroneVehicle,
KAIST) show:

* long tail: ``vehicle`` (most frequent), ``person``, ``vessel`` (rare, on water only);
* small objects: object size log-uniform over ``scale_range`` (smallest people ~4 x 10 px at 256),
  many per image (``objects``), crowded but never more than 30 % hidden by another object;
* conditions per image: night (RGB dark with sensor noise and headlights), fog (RGB washed to grey,
  thermal contrast reduced), glare (saturated RGB blob), thermal crossover (sun-warmed ground:
  targets barely warmer than the background);
* thermal sensor: half resolution (IR cameras are coarser than RGB), Gaussian noise of std
  ``ir_noise`` plus column fixed-pattern noise, and an RGB/IR misregistration of up to ``ir_shift``
  pixels (labels follow the RGB geometry, so the IR blobs are slightly off the boxes, as in KAIST);
* hard negatives: hot unlabelled things (``hot_distractors``: animals shaped like lying people, roof
  vents, fires, sun glint on water) and cold RGB look-alikes (``clutter``: painted containers of
  vehicle colours, buoys, coloured blobs, warm rocks);
* hard positives: targets with a cold engine / wet clothing (``p_cold_target``: thermal only a little
  above the background) and canopy occlusion (``p_occlusion``: strong in RGB, weaker in thermal).

Labels mark every target, also those hidden in RGB (as in DLRMamba's data, labelled on IR).
Everything depends on ``(seed, split, index)`` only, so any image can be regenerated alone, and
:func:`write_dataset` gives the same files with any number of worker processes.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
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
    objects: tuple[int, int] = (3, 12)
    """Min and max objects per image (inclusive; a vessel with no room on the water is dropped)."""
    class_probs: tuple[float, float, float] = (0.70, 0.23, 0.07)
    """Probability of vehicle, person, vessel (long tail)."""
    scale_range: tuple[float, float] = (0.35, 1.5)
    """Object size factor, drawn log-uniformly (1.0: a 20 x 40 px vehicle at 256)."""
    p_night: float = 0.35
    """Probability of a night image."""
    p_fog: float = 0.3
    """Probability of fog."""
    p_glare: float = 0.25
    """Probability of a glare blob."""
    p_crossover: float = 0.2
    """Probability of thermal crossover (warm ground, low target contrast)."""
    p_occlusion: float = 0.35
    """Probability that an object is partly covered by canopy."""
    p_cold_target: float = 0.15
    """Probability that a target is only slightly warmer than its background."""
    clutter: int = 6
    """Max number of unlabelled cold look-alikes and warm rocks."""
    hot_distractors: int = 3
    """Max number of unlabelled hot things (animals, roof vents, fires, glint on water)."""
    ir_noise: float = 0.035
    """Std of the thermal sensor noise (image range 0..1)."""
    ir_shift: int = 2
    """Max RGB/IR misregistration in pixels (at 256 px; scaled with ``size``)."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            require(self, name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1, "an int >= 1")
        require(self, "size", isinstance(self.size, int) and self.size >= 32 and self.size % 32 == 0, "a multiple of 32 >= 32")
        require(self, "objects", 1 <= self.objects[0] <= self.objects[1], "(min, max) with 1 <= min <= max")
        require(self, "class_probs", len(self.class_probs) == 3 and min(self.class_probs) > 0 and abs(sum(self.class_probs) - 1) < 1e-6, "three positive probabilities summing to 1")
        require(self, "scale_range", 0 < self.scale_range[0] <= self.scale_range[1], "(lo, hi) with 0 < lo <= hi")
        for name in ("p_night", "p_fog", "p_glare", "p_crossover", "p_occlusion", "p_cold_target"):
            require(self, name, 0.0 <= getattr(self, name) <= 1.0, "in [0, 1]")
        for name in ("clutter", "hot_distractors", "ir_shift"):
            require(self, name, isinstance(getattr(self, name), int) and getattr(self, name) >= 0, "an int >= 0")
        require(self, "ir_noise", 0.0 <= self.ir_noise <= 0.5, "in [0, 0.5]")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1], ``size x size``."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _window(S: int, cy: float, cx: float, ry: float, rx: float):
    """Slices of the pixels around centre ``(cy, cx)`` with half-extents ``(ry, rx)``, and their coordinates."""
    y0, y1 = max(0, int(cy - ry) - 1), min(S, int(cy + ry) + 2)
    x0, x1 = max(0, int(cx - rx) - 1), min(S, int(cx + rx) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _ellipse(S: int, cy: float, cx: float, ry: float, rx: float):
    """``(window, mask)`` of a filled axis-aligned ellipse (a local window, so cost scales with the object)."""
    win, yy, xx = _window(S, cy, cx, ry, rx)
    return win, ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _rect(S: int, cy: float, cx: float, h: float, w: float):
    """``(window, mask)`` of a filled axis-aligned rectangle of size ``h x w``."""
    win, yy, xx = _window(S, cy, cx, h / 2, w / 2)
    return win, (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)


def _paint(img: np.ndarray, shape, value) -> None:
    win, mask = shape
    img[win][mask] = value


def _overlap(box: tuple, boxes: list) -> float:
    """Largest fraction of ``box`` or of any of ``boxes`` covered by their intersection."""
    y0, x0, y1, x1 = box
    area = max((y1 - y0) * (x1 - x0), 1e-6)
    worst = 0.0
    for b0, a0, b1, a1 in boxes:
        inter = max(0.0, min(y1, b1) - max(y0, b0)) * max(0.0, min(x1, a1) - max(x0, a0))
        worst = max(worst, inter / area, inter / max((b1 - b0) * (a1 - a0), 1e-6))
    return worst


def _place(rng, S, h, w, y_lo, y_hi, boxes, tries=6):
    """A centre for an ``h x w`` object inside rows ``[y_lo, y_hi]`` overlapping earlier objects by < 30 %, or None."""
    for _ in range(tries):
        lo, hi = y_lo + h / 2 + 1, y_hi - h / 2 - 1
        if hi <= lo or w + 2 >= S:
            return None
        cy, cx = rng.uniform(lo, hi), rng.uniform(w / 2 + 1, S - w / 2 - 1)
        box = (cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2)
        if _overlap(box, boxes) < 0.3:
            return cy, cx
    return None


def _hot_distractor(rng, S, k, rgb, thermal, water_top, night):
    """One unlabelled hot thing: a lying animal, a roof with a hot vent, a fire, or sun glint on water."""
    kind = rng.integers(4)
    if kind == 0:  # animal: horizontal ellipse, as warm as a person
        h, w = rng.uniform(5, 9) * k, rng.uniform(10, 16) * k
        cy, cx = rng.uniform(h, max(h + 1, water_top - h)), rng.uniform(w, S - w)
        s = _ellipse(S, cy, cx, h / 2, w / 2)
        _paint(rgb, s, np.array([0.45, 0.33, 0.2]) * rng.uniform(0.6, 1.3))
        _paint(thermal, s, rng.uniform(0.75, 0.92))
    elif kind == 1:  # roof (vehicle-sized in RGB, mildly warm) with a hot vent
        h, w = rng.uniform(14, 30) * k, rng.uniform(14, 30) * k
        cy, cx = rng.uniform(h, max(h + 1, water_top - h)), rng.uniform(w, S - w)
        _paint(rgb, _rect(S, cy, cx, h, w), rng.random(3) * 0.5 + 0.3)
        _paint(thermal, _rect(S, cy, cx, h, w), rng.uniform(0.45, 0.6))
        _paint(thermal, _rect(S, cy + rng.uniform(-h, h) / 4, cx + rng.uniform(-w, w) / 4, 4 * k, 4 * k), rng.uniform(0.85, 1.0))
    elif kind == 2:  # fire / hot exhaust: small disc, bright orange (brighter at night)
        r = rng.uniform(2, 5) * k
        cy, cx = rng.uniform(r, max(r + 1, water_top - r)), rng.uniform(r, S - r)
        s = _ellipse(S, cy, cx, r, r)
        _paint(rgb, s, np.array([1.0, 0.55, 0.1]) * (3.0 if night else 1.0))
        _paint(thermal, s, rng.uniform(0.9, 1.0))
    elif water_top < S - 4:  # sun glint on water: thin bright streak in thermal and RGB
        h, w = rng.uniform(1.5, 3) * k, rng.uniform(12, 30) * k
        cy, cx = rng.uniform(water_top + 2, S - 2), rng.uniform(w / 2, S - w / 2)
        s = _ellipse(S, cy, cx, h / 2, w / 2)
        _paint(rgb, s, rng.uniform(0.8, 1.0))
        _paint(thermal, s, rng.uniform(0.6, 0.8))


def _clutter(rng, S, k, rgb, thermal, water_top):
    """One unlabelled cold look-alike or warm rock."""
    kind = rng.integers(4)
    if kind == 0:  # painted container: vehicle-shaped and -coloured in RGB, ambient in thermal
        h, w = (10 * k, 22 * k) if rng.random() < 0.5 else (22 * k, 10 * k)
        cy, cx = rng.uniform(h, max(h + 1, water_top - h)), rng.uniform(w, S - w)
        _paint(rgb, _rect(S, cy, cx, h, w), rng.random(3) * 0.8 + 0.1)
    elif kind == 1 and water_top < S - 6:  # buoy: small light ellipse on water, cold
        cy, cx = rng.uniform(water_top + 3, S - 3), rng.uniform(4, S - 4)
        _paint(rgb, _ellipse(S, cy, cx, 2.5 * k, 4 * k), rng.uniform(0.75, 0.95))
    elif kind == 2:  # warm rock: thermal just below most targets
        r = rng.uniform(0.02, 0.06) * S
        s = _ellipse(S, rng.uniform(0, water_top), rng.uniform(0, S), r, r * rng.uniform(0.6, 1.4))
        _paint(thermal, s, rng.uniform(0.42, 0.6))
        _paint(rgb, s, np.array([0.45, 0.43, 0.4]) * rng.uniform(0.7, 1.2))
    else:  # coloured blob in RGB only
        r = rng.uniform(0.02, 0.05) * S
        _paint(rgb, _ellipse(S, rng.uniform(0, S), rng.uniform(0, S), r, r * rng.uniform(0.5, 2.0)), rng.random(3))


def render_scene(config: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image: ``uint8 [H, W, 4]`` (R, G, B, thermal), labels ``float32 [n, 5]`` (cls, cx, cy, w, h), conditions."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"render_scene: split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    rng = np.random.default_rng([config.seed, SPLIT_OFFSETS[split] + index])
    S = config.size
    k = S / 128.0  # object sizes below are in pixels at 128 px
    cond = {"night": bool(rng.random() < config.p_night), "fog": bool(rng.random() < config.p_fog),
            "glare": bool(rng.random() < config.p_glare), "crossover": bool(rng.random() < config.p_crossover)}

    # background: land texture, a water band (where vessels go), smooth thermal (warm ground at crossover)
    land = _smooth_noise(rng, S, 8)
    rgb = np.stack([0.30 + 0.25 * land, 0.38 + 0.25 * land, 0.22 + 0.15 * land], -1)
    rgb += 0.06 * (_smooth_noise(rng, S, 32)[..., None] - 0.5)
    ground = rng.uniform(0.45, 0.58) if cond["crossover"] else 0.25
    thermal = ground + 0.12 * _smooth_noise(rng, S, 4) + 0.05 * (_smooth_noise(rng, S, 16) - 0.5)
    water_top = int(S * rng.uniform(0.55, 0.85))
    rgb[water_top:] = np.array([0.12, 0.25, 0.45]) + 0.05 * rng.random((S - water_top, 1, 1))
    thermal[water_top:] = ground - 0.07

    for _ in range(int(rng.integers(0, config.clutter + 1))):
        _clutter(rng, S, k, rgb, thermal, water_top)
    for _ in range(int(rng.integers(0, config.hot_distractors + 1))):
        _hot_distractor(rng, S, k, rgb, thermal, water_top, cond["night"])

    labels, boxes, hidden, cold = [], [], 0, 0
    for _ in range(int(rng.integers(config.objects[0], config.objects[1] + 1))):
        cls = int(rng.choice(3, p=config.class_probs))
        scale = float(np.exp(rng.uniform(*np.log(config.scale_range)))) * k
        if cls == 0:
            h, w = (10 * scale, 20 * scale) if rng.random() < 0.5 else (20 * scale, 10 * scale)
        elif cls == 1:
            h, w = 16 * scale, 6.5 * scale
        else:
            h, w = 8 * scale, 26 * scale
        where = _place(rng, S, h, w, *((0, water_top) if cls < 2 else (water_top, S)), boxes)
        if where is None:
            continue
        cy, cx = where
        local = float(thermal[int(cy), int(cx)])
        is_cold = bool(rng.random() < config.p_cold_target)
        heat = (lambda lo, hi: min(1.0, local + rng.uniform(0.06, 0.15))) if is_cold else (lambda lo, hi: rng.uniform(lo, hi))
        cold += is_cold
        if cls == 0:  # vehicle: rectangle, random colour, hot engine end, headlights at night
            body = _rect(S, cy, cx, h, w)
            _paint(rgb, body, rng.random(3) * 0.8 + 0.1)
            _paint(thermal, body, heat(0.6, 0.75))
            sy, sx = (1, 0) if h > w else (0, 1)
            end = rng.choice([-1, 1])
            engine = _rect(S, cy + end * sy * h / 4, cx + end * sx * w / 4, h / (1 + sy), w / (1 + sx))
            _paint(thermal, engine, heat(0.85, 1.0))
            if cond["night"] and rng.random() < 0.6:
                _paint(rgb, _ellipse(S, cy + end * sy * h / 2, cx + end * sx * w / 2, 1.2 * scale, 1.2 * scale), 4.0)
        elif cls == 1:  # person: upright ellipse, dark clothing, warm head
            body = _ellipse(S, cy, cx, h / 2, w / 2)
            _paint(rgb, body, np.array([0.35, 0.25, 0.2]) * rng.uniform(0.5, 1.5))
            _paint(thermal, body, heat(0.78, 0.92))
            _paint(thermal, _ellipse(S, cy - h * 0.36, cx, h * 0.12, w * 0.4), heat(0.9, 1.0))
        else:  # vessel: long ellipse on water, light hull, warm, with a cooler wake
            wake = _ellipse(S, cy, cx + w * 0.7, h / 3, w / 2)
            rgb[wake[0]][wake[1]] = 0.8 * rgb[wake[0]][wake[1]] + 0.2
            thermal[wake[0]][wake[1]] = np.maximum(thermal[wake[0]][wake[1]], ground + 0.05)
            body = _ellipse(S, cy, cx, h / 2, w / 2)
            _paint(rgb, body, rng.uniform(0.7, 0.95))
            _paint(thermal, body, heat(0.7, 0.9))
        y0, y1, x0, x1 = max(cy - h / 2, 0), min(cy + h / 2, S), max(cx - w / 2, 0), min(cx + w / 2, S)
        boxes.append((y0, x0, y1, x1))
        if rng.random() < config.p_occlusion:  # canopy patch over part of the object
            oc = _ellipse(S, rng.uniform(y0, y1), rng.uniform(x0, x1), 0.5 * h, 0.5 * w)
            _paint(rgb, oc, np.array([0.1, 0.3, 0.1]) + 0.05 * rng.random(3))
            thermal[oc[0]][oc[1]] = 0.6 * thermal[oc[0]][oc[1]] + 0.4 * ground
            hidden += 1
        labels.append([cls, (x0 + x1) / 2 / S, (y0 + y1) / 2 / S, (x1 - x0) / S, (y1 - y0) / S])

    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    if cond["glare"]:
        g = np.exp(-(((yy - rng.uniform(0, S)) ** 2 + (xx - rng.uniform(0, S)) ** 2) / (2 * (rng.uniform(0.08, 0.2) * S) ** 2)))
        rgb = rgb + 1.5 * g[..., None]
    if cond["fog"]:
        f = rng.uniform(0.45, 0.8)
        rgb = (1 - f) * rgb + f * 0.7
        thermal = 0.8 * thermal + 0.2 * thermal.mean()
    if cond["night"]:
        rgb = rgb * rng.uniform(0.06, 0.2) + rng.normal(0, 0.04, rgb.shape)
    # thermal sensor: half resolution, misregistration, noise (temporal + column fixed pattern)
    half = S // 2
    thermal = thermal.reshape(half, 2, half, 2).mean((1, 3)).repeat(2, 0).repeat(2, 1)
    shift = max(0, round(config.ir_shift * S / 256))
    if shift:
        dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2))
        thermal = np.pad(thermal, shift, mode="edge")[shift + dy:shift + dy + S, shift + dx:shift + dx + S]
    sigma = config.ir_noise * rng.uniform(0.6, 1.4)
    thermal = thermal + rng.normal(0, sigma, thermal.shape) + rng.normal(0, sigma / 2, (1, S))
    rgb = rgb + rng.normal(0, 0.015, rgb.shape)
    image = np.concatenate([rgb, thermal[..., None]], -1)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    cond.update(occluded_objects=hidden, cold_objects=cold)
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


def _write_images(job: tuple) -> list[tuple[str, dict, list[int]]]:
    """Render and write images ``indices`` of ``split`` into ``root``; ``(key, conditions, classes)`` of each."""
    config, root, split, indices = job
    out = []
    for i in indices:
        image, labels, cond = render_scene(config, split, i)
        stem = f"{split}_{i:05d}"
        write_tiff(root / "images" / split / f"{stem}.tif", image)
        rows = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
        (root / "labels" / split / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
        out.append((f"{split}/{stem}", cond, labels[:, 0].astype(int).tolist()))
    return out


def write_dataset(out_dir: PathLike, config: Optional[SyntheticConfig] = None, workers: int = 0) -> dict:
    """Generate the data set into ``out_dir`` (replaced as a whole, atomically); returns a summary dict.

    Layout: ``images/<split>/<i>.tif`` (4-channel), ``labels/<split>/<i>.txt`` (YOLO),
    ``data.yaml`` (``channels: 4``), ``conditions.json`` (per-image conditions, for sliced metrics).
    ``workers`` > 0 renders in that many processes (same files as ``workers=0``).
    """
    config = config or SyntheticConfig()
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"write_dataset: workers must be an int >= 0, got {workers!r}")
    out_dir = Path(out_dir).resolve()
    counts = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    class_counts = {s: [0, 0, 0] for s in counts}
    conditions = {}
    with atomic_dir(out_dir) as tmp:
        jobs = []
        for split, n in counts.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            step = max(1, n // (4 * max(1, workers)))
            jobs += [(config, tmp, split, range(i, min(n, i + step))) for i in range(0, n, step)]
        if workers:
            with ProcessPoolExecutor(workers) as pool:
                results = list(pool.map(_write_images, jobs))
        else:
            results = [_write_images(job) for job in jobs]
        for key, cond, classes in (r for chunk in results for r in chunk):
            conditions[key] = cond
            for c in classes:
                class_counts[key.split("/")[0]][c] += 1
        write_data_yaml(tmp / "data.yaml", out_dir, CLASS_NAMES, channels=4)
        summary = {"config": asdict(config), "class_counts": class_counts, "names": list(CLASS_NAMES),
                   "data_yaml": str(out_dir / "data.yaml")}
        (tmp / "conditions.json").write_text(json.dumps({"summary": summary, "images": conditions}, indent=1))
    return summary
