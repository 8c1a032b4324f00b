"""YOLO label files and multispectral data YAMLs, checked with errors that name the file and line.

A YOLO detection label file has one object per line: ``class cx cy w h`` with the class an
integer in ``[0, nc)`` and the box normalised to the image (centre in ``[0, 1]``, size in
``(0, 1]``). ultralytics drops bad lines with a warning; this reader refuses them instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from lowrank_vision.core.files import PathLike

__all__ = ["LabelError", "read_yolo_labels", "read_data_yaml", "validate_dataset", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".tif", ".tiff")


class LabelError(ValueError):
    """A label file, image or data YAML that does not follow the layout."""


def read_yolo_labels(path: PathLike, nc: Optional[int] = None) -> np.ndarray:
    """``float32 [n, 5]`` rows ``(cls, cx, cy, w, h)``; a missing file is an error, an empty one has no objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        parts = line.split()
        if len(parts) != 5:
            raise LabelError(f"{where}: expected 5 values 'class cx cy w h', got {len(parts)}: {line.strip()!r}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise LabelError(f"{where}: expected numbers, got {line.strip()!r}") from None
        cls, cx, cy, w, h = values
        if cls != int(cls) or cls < 0 or (nc is not None and cls >= nc):
            raise LabelError(f"{where}: class must be an integer in [0, {nc if nc is not None else 'nc'}), got {parts[0]!r}")
        if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
            raise LabelError(f"{where}: box centre must be normalised to [0, 1], got cx={cx:g} cy={cy:g}")
        if not (0.0 < w <= 1.0 and 0.0 < h <= 1.0):
            raise LabelError(f"{where}: box width/height must be in (0, 1], got w={w:g} h={h:g}")
        rows.append(values)
    return np.asarray(rows, np.float32).reshape(-1, 5)


def read_data_yaml(path: PathLike) -> dict:
    """A data YAML with ``path``, ``train``, ``val``, ``names`` and ``channels`` checked."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data YAML {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LabelError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise LabelError(f"{path}: expected a mapping with train/val/names/channels, got {type(data).__name__}")
    missing = [k for k in ("train", "val", "names") if k not in data]
    if missing:
        raise LabelError(f"{path}: missing key(s) {missing}")
    channels = data.get("channels", 3)
    if not isinstance(channels, int) or channels < 1:
        raise LabelError(f"{path}: channels must be a positive int, got {channels!r}")
    names = data["names"]
    data["names"] = dict(enumerate(names)) if isinstance(names, list) else dict(names)
    data["nc"] = len(data["names"])
    root = Path(data.get("path") or path.parent)
    data["root"] = root if root.is_absolute() else (path.parent / root)
    return data


def labels_dir_for(image_dir: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder in the path becomes ``labels``."""
    parts = list(Path(image_dir).parts)
    if "images" not in parts:
        raise LabelError(f"{image_dir}: image folder must sit under an 'images' folder (labels go under 'labels')")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts)


def validate_dataset(data_yaml: PathLike, splits: tuple[str, ...] = ("train", "val"), check_images: int = 3) -> dict:
    """Check every label file of ``splits`` and the channel count of the first ``check_images`` images per split.

    Returns ``{"splits": {split: {"images": n, "objects": n}}, "channels": c, "nc": nc}``.
    """
    from .readers import read_multichannel

    data = read_data_yaml(data_yaml)
    report = {"channels": data["channels"], "nc": data["nc"], "splits": {}}
    for split in splits:
        if split not in data:
            raise LabelError(f"{data_yaml}: no {split!r} entry")
        image_dir = data["root"] / data[split]
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{data_yaml}: {split} images folder {image_dir} does not exist")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise LabelError(f"{image_dir}: no .tif images (multi-channel data must be TIFF for ultralytics)")
        label_dir = labels_dir_for(image_dir)
        objects = 0
        for i, img in enumerate(images):
            objects += len(read_yolo_labels(label_dir / f"{img.stem}.txt", data["nc"]))
            if i < check_images:
                arr = read_multichannel(img)
                if arr.shape[-1] != data["channels"]:
                    raise LabelError(f"{img}: has {arr.shape[-1]} channels, data YAML says channels: {data['channels']}")
        report["splits"][split] = {"images": len(images), "objects": objects}
    return report
