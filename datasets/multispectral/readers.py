"""Readers for paired RGB/IR detection folders, stacked into ultralytics' multi-channel TIFF layout.

ultralytics reads multi-channel images only from TIFF (``channels: N`` in the data YAML); a
pixel-level RGB+IR fusion model therefore trains on ``[R, G, B, IR]`` TIFFs. Supported layouts
(the public releases' own folder names):

* ``llvip``: ``visible/<split>/<id>.jpg``, ``infrared/<split>/<id>.jpg``, ``Annotations/<id>.xml``
  (Pascal-VOC boxes, class ``person``); splits ``train``/``test``.
* ``dronevehicle``: ``<split>/<split>img/<id>.jpg`` (RGB), ``<split>/<split>imgr/<id>.jpg`` (IR),
  ``<split>/<split>labelr/<id>.xml`` (IR labels -- DLRMamba trains on the IR ground truth); objects
  are ``<polygon>`` (x1..y4) or ``<bndbox>`` and become the enclosing axis-aligned box;
  splits ``train``/``val``/``test``.
* ``vedai``: one folder with ``<id>_co.png`` (colour), ``<id>_ir.png`` (IR) and YOLO labels
  ``<id>.txt`` (the YOLO conversion most VEDAI detectors use; the original corner-format
  annotation file is not read).

:func:`read_pairs` returns ``PairedSample`` records; :func:`stack_pairs` writes them as a data set
(``images/<split>/*.tif``, ``labels/<split>/*.txt``, ``data.yaml`` with ``channels: 4``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from lowrank_vision.core.files import PathLike, atomic_dir

from .labels import LabelError, read_yolo_labels
from .synthetic import write_data_yaml, write_tiff

__all__ = ["PairedSample", "read_pairs", "stack_pairs", "stack_rgb_ir", "read_multichannel", "LAYOUTS"]

Layout = Literal["llvip", "dronevehicle", "vedai"]
LAYOUTS = ("llvip", "dronevehicle", "vedai")
DRONEVEHICLE_NAMES = ("car", "truck", "bus", "van", "freight car")
_DRONEVEHICLE_ALIASES = {"feright car": "freight car", "feright_car": "freight car", "freight_car": "freight car", "truvk": "truck"}
VEDAI_NAMES = ("car", "truck", "pickup", "tractor", "camping car", "boat", "van", "other", "plane")


@dataclass(frozen=True)
class PairedSample:
    """One RGB/IR pair and its boxes (pixels, ``xyxy``) with class indices into ``names``."""

    rgb: Path
    ir: Path
    boxes: np.ndarray
    classes: np.ndarray
    names: tuple[str, ...]


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    with Image.open(path) as im:
        return np.asarray(im)


def read_multichannel(path: PathLike) -> np.ndarray:
    """A TIFF as ``[H, W, C]`` the way ultralytics reads it (pages stacked as channels)."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    arr = tifffile.imread(path)
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3 and arr.shape[0] < arr.shape[-1] and arr.shape[0] <= 16:  # pages first
        return np.moveaxis(arr, 0, -1)
    return arr


def stack_rgb_ir(rgb: np.ndarray, ir: np.ndarray, where: str = "") -> np.ndarray:
    """``[H, W, 3]`` + ``[H, W]`` or ``[H, W, k]`` (a grey IR saved as RGB keeps one channel) -> ``[H, W, 4]`` uint8."""
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise LabelError(f"{where}: RGB image must be [H, W, 3], got {rgb.shape}")
    ir = ir if ir.ndim == 2 else ir[..., 0]
    if ir.shape != rgb.shape[:2]:
        raise LabelError(f"{where}: RGB {rgb.shape[:2]} and IR {ir.shape} sizes differ (pairs must be registered)")
    return np.concatenate([rgb[..., :3], ir[..., None]], -1).astype(np.uint8)


def _voc_objects(path: Path, names: Optional[Sequence[str]], aliases: dict) -> tuple[list, list]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation {path} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LabelError(f"{path}: not valid XML ({exc})") from None
    boxes, classes = [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        name = aliases.get(name, name)
        if names is not None and name not in names:
            raise LabelError(f"{path}: unknown class {name!r}; expected one of {list(names)}")
        poly, box = obj.find("polygon"), obj.find("bndbox")
        try:
            if poly is not None:
                xs = [float(poly.findtext(f"x{i}")) for i in range(1, 5)]
                ys = [float(poly.findtext(f"y{i}")) for i in range(1, 5)]
                xyxy = [min(xs), min(ys), max(xs), max(ys)]
            elif box is not None:
                xyxy = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            else:
                raise LabelError(f"{path}: object {name!r} has neither <bndbox> nor <polygon>")
        except TypeError:
            raise LabelError(f"{path}: object {name!r} has an incomplete box") from None
        boxes.append(xyxy)
        classes.append(name)
    return boxes, classes


def read_pairs(root: PathLike, layout: Layout, split: str = "train") -> list[PairedSample]:
    """Every RGB/IR pair of ``split`` in a ``layout`` folder, with its boxes; missing partners are errors."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"read_pairs: layout must be one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{layout} folder {root} does not exist")
    samples = []
    if layout == "llvip":
        rgb_dir, ir_dir = root / "visible" / split, root / "infrared" / split
        for rgb in sorted(rgb_dir.glob("*.jpg")):
            boxes, names = _voc_objects(root / "Annotations" / f"{rgb.stem}.xml", ("person",), {})
            samples.append(PairedSample(rgb, _partner(ir_dir / rgb.name), _arr(boxes), np.zeros(len(boxes), int), ("person",)))
    elif layout == "dronevehicle":
        base = root / split
        rgb_dir, ir_dir, lab_dir = base / f"{split}img", base / f"{split}imgr", base / f"{split}labelr"
        for rgb in sorted(rgb_dir.glob("*.jpg")):
            boxes, names = _voc_objects(lab_dir / f"{rgb.stem}.xml", DRONEVEHICLE_NAMES, _DRONEVEHICLE_ALIASES)
            cls = np.array([DRONEVEHICLE_NAMES.index(n) for n in names], int)
            samples.append(PairedSample(rgb, _partner(ir_dir / rgb.name), _arr(boxes), cls, DRONEVEHICLE_NAMES))
    else:
        for rgb in sorted(root.glob("*_co.png")):
            stem = rgb.name[: -len("_co.png")]
            ir = _partner(root / f"{stem}_ir.png")
            h, w = _read_image(rgb).shape[:2]
            rows = read_yolo_labels(root / f"{stem}.txt", len(VEDAI_NAMES))
            xyxy = np.stack([(rows[:, 1] - rows[:, 3] / 2) * w, (rows[:, 2] - rows[:, 4] / 2) * h,
                             (rows[:, 1] + rows[:, 3] / 2) * w, (rows[:, 2] + rows[:, 4] / 2) * h], -1)
            samples.append(PairedSample(rgb, ir, xyxy.astype(np.float32), rows[:, 0].astype(int), VEDAI_NAMES))
    if not samples:
        raise FileNotFoundError(f"no RGB images found for layout {layout!r}, split {split!r} under {root}")
    return samples


def _partner(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"IR partner {path} does not exist")
    return path


def _arr(boxes: list) -> np.ndarray:
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def stack_pairs(splits: dict[str, list[PairedSample]], out_dir: PathLike) -> dict:
    """Write ``{split: samples}`` as 4-channel TIFFs + YOLO labels + ``data.yaml`` (``channels: 4``), atomically."""
    out_dir = Path(out_dir).resolve()
    if "train" not in splits or "val" not in splits:
        raise ValueError(f"stack_pairs: splits must contain 'train' and 'val', got {sorted(splits)}")
    names = next(iter(splits.values()))[0].names
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split, samples in splits.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for s in samples:
                image = stack_rgb_ir(_read_image(s.rgb), _read_image(s.ir), where=str(s.rgb))
                h, w = image.shape[:2]
                b = np.clip(s.boxes, 0, [w, h, w, h])
                keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
                b, c = b[keep], s.classes[keep]
                rows = [f"{k} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
                        for k, (x0, y0, x1, y1) in zip(c, b)]
                write_tiff(tmp / "images" / split / f"{s.rgb.stem}.tif", image)
                (tmp / "labels" / split / f"{s.rgb.stem}.txt").write_text("".join(r + "\n" for r in rows))
            counts[split] = len(samples)
        write_data_yaml(tmp / "data.yaml", out_dir, names, channels=4, test="test" in splits)
    return {"data_yaml": str(out_dir / "data.yaml"), "images": counts, "names": list(names)}
