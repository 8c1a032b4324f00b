"""Reader of posed image sets in the ``transforms.json`` format (Blender NeRF-Synthetic and nerfstudio).

Accepted layouts:

* a folder with ``transforms_<split>.json`` (Blender): ``camera_angle_x`` (horizontal field of view,
  radians; ``fx = fy = W / (2 tan(angle / 2))``, principal point at the centre) and ``frames`` whose
  ``file_path`` usually has no extension (``./train/r_0`` -> ``train/r_0.png``);
* a folder with ``transforms.json``, or that file itself (nerfstudio): ``fl_x``/``fl_y``/``cx``/``cy``
  (``w``/``h`` optional, read from the images) at the top level or per frame, or ``camera_angle_x``;
  splits from ``<split>_filenames`` lists when present, else every 8th frame is ``test`` and ``val``
  and the rest is ``train`` (the convention of the LLFF evaluations).

``transform_matrix`` is camera-to-world in the OpenGL convention (camera looks along -z). RGBA
images are composited on ``background``. Every problem raises a ``ValueError`` or
``FileNotFoundError`` that names the file and what was expected.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PosedImages", "read_transforms"]

SPLITS = ("train", "val", "test")


@dataclass
class PosedImages:
    """One split of a posed image set."""

    images: np.ndarray
    """``[N, H, W, 3]`` float32 in [0, 1] (RGBA composited on the background)."""
    c2w: np.ndarray
    """``[N, 4, 4]`` float32 camera-to-world matrices (OpenGL convention)."""
    intrinsics: tuple
    """``(fx, fy, cx, cy)`` in pixels, shared by every frame."""
    names: list
    """Image paths relative to the dataset folder."""
    alpha: np.ndarray | None = None
    """``[N, H, W]`` alpha channel when the images had one."""

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])


def _load_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise ValueError(f"{path}: expected an object with a non-empty 'frames' list")
    return meta


def _image_path(root: Path, file_path: str) -> Path:
    p = root / file_path
    if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file():
        return p
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    raise FileNotFoundError(f"{root}: image {file_path!r} of a frame not found (tried the path and .png/.jpg)")


def _intrinsics(meta: dict, frame: dict, width: int, height: int, src: Path) -> tuple:
    def get(key):
        return frame.get(key, meta.get(key))

    if get("fl_x") is not None:
        fx = float(get("fl_x"))
        fy = float(get("fl_y") if get("fl_y") is not None else fx)
        cx = float(get("cx") if get("cx") is not None else width / 2)
        cy = float(get("cy") if get("cy") is not None else height / 2)
    elif get("camera_angle_x") is not None:
        fx = 0.5 * width / math.tan(0.5 * float(get("camera_angle_x")))
        fy = 0.5 * height / math.tan(0.5 * float(get("camera_angle_y"))) if get("camera_angle_y") is not None else fx
        cx, cy = width / 2, height / 2
    else:
        raise ValueError(f"{src}: no camera intrinsics: expected 'camera_angle_x' or 'fl_x' (with fl_y/cx/cy)")
    if not (fx > 0 and fy > 0):
        raise ValueError(f"{src}: focal lengths must be > 0, got fl_x={fx}, fl_y={fy}")
    for key, dim in (("w", width), ("h", height)):
        if get(key) is not None and int(get(key)) != dim:
            raise ValueError(f"{src}: '{key}' is {get(key)} but the image is {dim} pixels")
    return fx, fy, cx, cy


def _select(meta: dict, split: str, src: Path) -> list[dict]:
    frames = meta["frames"]
    key = f"{split}_filenames"
    if any(f"{s}_filenames" in meta for s in SPLITS):
        if key not in meta:
            raise ValueError(f"{src}: has split lists but no '{key}'")
        wanted = {Path(n).as_posix().removeprefix("./") for n in meta[key]}
        chosen = [f for f in frames if Path(str(f.get("file_path", ""))).as_posix().removeprefix("./") in wanted]
        if not chosen:
            raise ValueError(f"{src}: no frame's file_path matches '{key}'")
        return chosen
    held_out = [f for i, f in enumerate(frames) if i % 8 == 0]
    return held_out if split in ("val", "test") else [f for i, f in enumerate(frames) if i % 8 != 0]


def read_transforms(path: str | Path, split: str = "train", background: float = 1.0) -> PosedImages:
    """Read one split of a ``transforms.json`` dataset (see the module docstring for the layouts)."""
    from PIL import Image

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.is_dir():
        blender = path / f"transforms_{split}.json"
        src = blender if blender.is_file() else path / "transforms.json"
        if not src.is_file():
            raise FileNotFoundError(f"{path}: expected transforms_{split}.json (Blender) or transforms.json (nerfstudio)")
    else:
        src = path
    root = src.parent
    meta = _load_json(src)
    frames = meta["frames"] if src.name.startswith("transforms_") else _select(meta, split, src)
    if not frames:
        raise ValueError(f"{src}: split {split!r} has no frames ({len(meta['frames'])} frames, no '{split}_filenames' list; "
                         "without lists every 8th frame is val/test)")

    images, poses, names, intr = [], [], [], None
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise ValueError(f"{src}: frame {k} needs 'file_path' and 'transform_matrix'")
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if m.shape == (3, 4):
            m = np.vstack([m, [0, 0, 0, 1]])
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"{src}: frame {k} transform_matrix must be a finite 4x4 (or 3x4) matrix, got shape {m.shape}")
        img_path = _image_path(root, str(frame["file_path"]))
        try:
            arr = np.asarray(Image.open(img_path).convert("RGBA"), dtype=np.float32) / 255.0
        except OSError as exc:
            raise ValueError(f"{img_path}: cannot decode image ({exc})") from exc
        if images and arr.shape != images[0].shape:
            raise ValueError(f"{img_path}: size {arr.shape[1]}x{arr.shape[0]} differs from the first frame's "
                             f"{images[0].shape[1]}x{images[0].shape[0]}")
        this = _intrinsics(meta, frame, arr.shape[1], arr.shape[0], src)
        if intr is not None and not np.allclose(this, intr):
            raise ValueError(f"{src}: frame {k} has intrinsics {this}, others {intr}; one camera per split is supported")
        intr = this
        images.append(arr)
        poses.append(m)
        names.append(img_path.relative_to(root).as_posix())
    rgba = np.stack(images)
    has_alpha = bool((rgba[..., 3] < 1).any())
    rgb = rgba[..., :3] * rgba[..., 3:] + background * (1 - rgba[..., 3:]) if has_alpha else rgba[..., :3]
    return PosedImages(rgb.astype(np.float32), np.stack(poses).astype(np.float32), intr, names,
                       rgba[..., 3] if has_alpha else None)
