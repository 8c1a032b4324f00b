"""Readers for head-CT segmentation data: NIfTI image/mask pairs and DICOM series, HU windowing.

Layouts found automatically under a root folder (image and mask files matched by file name):

* nnU-Net / MSD and this package's synthetic data: ``imagesTr/`` + ``labelsTr/``
* INSTANCE 2022: ``data/`` + ``label/``
* PhysioNet CT-ICH: ``ct_scans/`` + ``masks/``
* BHSD: ``images/`` + ``ground truths/`` (also ``ground_truths/``, ``labels/``, ``masks/``)

Loading for training (:class:`CTSegmentationDataset`) and prediction reads with nibabel (NIfTI) or MONAI's
``PydicomReader`` (DICOM series, :func:`load_ct`) and brings volumes to the model's canonical grid with
:mod:`.geometry`; an output mask is mapped back and written with its input's affine and header, so it
lies exactly on its input. :func:`monai_load_transforms` is the same loading as MONAI transforms. Multi-class masks (BHSD, INSTANCE) are binarised (any hemorrhage class > 0).

HU windows (centre, width): brain 40/80, subdural 80/200, bone 600/2800. Each window maps
``[centre - width/2, centre + width/2]`` to ``[0, 1]`` with clipping and becomes one input channel
(:func:`window_hu`; :class:`HUWindowd` is the dictionary transform used by the training loader and by
the plugin's MONAI bundle). Files are written atomically (:mod:`lowrank_vision.core.files`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = [
    "HU_WINDOWS", "window_hu", "HUWindowd", "blood_volume_ml", "find_image_mask_pairs", "check_nifti", "load_nifti",
    "check_pair", "CTSegmentationDataset", "monai_load_transforms", "load_dicom_series", "load_ct", "save_nifti", "save_mask_like",
]

HU_WINDOWS: dict[str, tuple[float, float]] = {"brain": (40.0, 80.0), "subdural": (80.0, 200.0), "bone": (600.0, 2800.0)}

_IMAGE_DIRS = ("imagesTr", "images", "image", "data", "ct_scans", "ct")
_MASK_DIRS = ("labelsTr", "labels", "label", "masks", "mask", "ground truths", "ground_truths")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def window_hu(hu: torch.Tensor | np.ndarray, windows: Sequence[str] = ("brain", "subdural")) -> torch.Tensor:
    """Stack one [0, 1] channel per named window: ``(*spatial) -> (len(windows), *spatial)`` float32."""
    unknown = [w for w in windows if w not in HU_WINDOWS]
    if not windows or unknown:
        raise ValueError(f"windows must be a non-empty list of {sorted(HU_WINDOWS)}, got {list(windows)!r}")
    x = torch.as_tensor(np.asarray(hu) if not isinstance(hu, torch.Tensor) else hu, dtype=torch.float32)
    chans = []
    for name in windows:
        centre, width = HU_WINDOWS[name]
        chans.append(((x - (centre - width / 2)) / width).clamp(0.0, 1.0))
    return torch.stack(chans)


def blood_volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Blood volume in mL of a binary mask with voxel size ``spacing`` (mm)."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def _is_nifti_name(path: Path) -> bool:
    return path.name.endswith(_NIFTI_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".nii"):
        if name.endswith(suf):
            name = name[: -len(suf)]
    # nnU-Net channel suffix (case_0000) and common mask suffixes
    for tail in ("_0000", "_seg", "_mask", "_label"):
        if name.endswith(tail):
            name = name[: -len(tail)]
    return name


def check_nifti(path: str | os.PathLike):
    """Open the header of a NIfTI file; a clear ``ValueError`` for anything else."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    if not _is_nifti_name(p):
        raise ValueError(f"expected a NIfTI file (.nii or .nii.gz), got {p.name!r}")
    try:
        img = nib.load(str(p))
        _ = img.shape
    except Exception as exc:
        raise ValueError(f"{p} is not a readable NIfTI file: {exc}") from exc
    if len(img.shape) < 3:
        raise ValueError(f"{p} must be a 3-D volume, got shape {img.shape}")
    return img


def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, object]:
    """``(array float32 (x, y, z), affine 4x4, header)``; a trailing singleton 4th axis is dropped."""
    img = check_nifti(path)
    arr = np.asarray(img.dataobj, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{path} must be a 3-D volume, got shape {arr.shape}")
    return arr, img.affine, img.header


def check_pair(image: str | os.PathLike, label: str | os.PathLike) -> None:
    """Both files are NIfTI and their shapes agree, else ``ValueError`` naming both."""
    ish, lsh = check_nifti(image).shape[:3], check_nifti(label).shape[:3]
    if ish != lsh:
        raise ValueError(f"mask {label} has shape {lsh} but its image {image} has shape {ish}")


def find_image_mask_pairs(root: str | os.PathLike, image_dir: Optional[str] = None, mask_dir: Optional[str] = None,
                          check: bool = True) -> list[dict]:
    """``[{"image": path, "label": path, "name": stem}, ...]`` sorted by name, from a known layout."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data folder {base} does not exist")
    idir = base / image_dir if image_dir else next((base / d for d in _IMAGE_DIRS if (base / d).is_dir()), None)
    mdir = base / mask_dir if mask_dir else next((base / d for d in _MASK_DIRS if (base / d).is_dir()), None)
    if idir is None or mdir is None or not idir.is_dir() or not mdir.is_dir():
        raise FileNotFoundError(
            f"data folder {base} must contain an image folder (one of {list(_IMAGE_DIRS)}) and a mask folder "
            f"(one of {list(_MASK_DIRS)}); found {sorted(p.name for p in base.iterdir())}"
        )
    files = sorted(p for p in idir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"image folder {idir} is empty")
    bad = [p.name for p in files if not _is_nifti_name(p)]
    if bad:
        raise ValueError(f"image folder {idir} holds files that are not NIfTI (.nii/.nii.gz): {bad[:5]}")
    masks = {_stem(p): p for p in mdir.iterdir() if p.is_file() and _is_nifti_name(p)}
    pairs, missing = [], []
    for p in files:
        m = masks.get(_stem(p))
        if m is None:
            missing.append(p.name)
            continue
        if check:
            check_pair(p, m)
        pairs.append({"image": str(p), "label": str(m), "name": _stem(p)})
    if missing:
        raise ValueError(f"no mask in {mdir} for images {missing[:5]} (masks are matched by file name)")
    return pairs


class HUWindowd:
    """MONAI-style dictionary transform: each ``keys`` entry, a (1, x, y, z) HU image, becomes
    (len(windows), x, y, z) in [0, 1]; a MetaTensor keeps its meta data and applied operations (so
    ``Invertd`` can undo later transforms). ``label_key`` names a mask to binarise (> 0) to float32."""

    def __init__(self, keys: Sequence[str] = ("image",), windows: Sequence[str] = ("brain", "subdural"),
                 label_key: Optional[str] = None):
        self.keys, self.windows, self.label_key = (keys,) if isinstance(keys, str) else tuple(keys), tuple(windows), label_key

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        for k in self.keys:
            img = data[k]
            win = window_hu(torch.as_tensor(np.asarray(img))[0], self.windows)
            if hasattr(img, "copy_meta_from"):
                from monai.data import MetaTensor

                win = MetaTensor(win, meta=img.meta, applied_operations=img.applied_operations)
            out[k] = win
        if self.label_key is not None:
            out[self.label_key] = (torch.as_tensor(np.asarray(data[self.label_key])) > 0).to(torch.float32)
        return out


def monai_load_transforms(windows: Sequence[str] = ("brain", "subdural"), orientation: Optional[str] = None,
                          spacing: Optional[Sequence[float]] = None):
    """MONAI ``Compose`` from ``{"image": path, "label": path}`` to windowed tensors."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    ts = [LoadImaged(keys=["image", "label"], image_only=True), EnsureChannelFirstd(keys=["image", "label"])]
    if orientation:
        ts.append(Orientationd(keys=["image", "label"], axcodes=orientation))
    if spacing:
        ts.append(Spacingd(keys=["image", "label"], pixdim=tuple(spacing), mode=("bilinear", "nearest")))
    ts.append(HUWindowd(["image"], windows, label_key="label"))
    return Compose(ts)


class CTSegmentationDataset(torch.utils.data.Dataset):
    """Image/mask pairs loaded once, brought to ``grid`` and kept in memory (a cached dataset).

    With a ``grid`` (:class:`lowrank_vision.datasets.ct.geometry.CanonicalGrid`, the model's canonical
    orientation and spacing) each image is reoriented and resampled there (:func:`..geometry.to_canonical`)
    and its mask with it (resampled as a fraction, > 0.5); without one the file's own grid is kept.
    Items are ``{"image": (C, x, y, z), "label": (1, x, y, z), "spacing": (3,)}`` (``spacing`` of the grid
    the item is on); ``grid_maps[i]`` maps item ``i`` back to its file's grid and ``pairs[i]`` names the files,
    so metrics can be taken on the original grid. An item depends only on its index (no random
    augmentation), so the shared trainer resumes it exactly.
    """

    def __init__(self, pairs: Sequence[dict], windows: Sequence[str] = ("brain", "subdural"), grid=None, progress: bool = False):
        from tqdm.auto import tqdm

        from .geometry import to_canonical, voxel_spacing

        if not pairs:
            raise ValueError("pairs is empty: no image/mask pairs to load")
        self.items, self.names, self.grid_maps, self.pairs = [], [], [], list(pairs)
        for pair in tqdm(pairs, desc="load CT", disable=not progress):
            check_pair(pair["image"], pair["label"])
            hu, affine, _ = load_nifti(pair["image"])
            lab = load_nifti(pair["label"])[0] > 0
            if grid is None:
                img, mask, gm, sp = torch.from_numpy(hu), torch.from_numpy(lab).float(), None, voxel_spacing(affine)
            else:
                img, gm = to_canonical(hu, affine, grid)
                mask = (to_canonical(lab.astype(np.float32), affine, grid)[0] > 0.5).float()
                sp = gm.canonical_spacing
            self.items.append({"image": window_hu(img, windows), "label": mask[None].contiguous(),
                               "spacing": torch.tensor(sp, dtype=torch.float32)})
            self.grid_maps.append(gm)
            self.names.append(pair.get("name", Path(pair["image"]).name))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def on_file_grid(self, i: int) -> bool:
        """Whether item ``i`` lies exactly on its file's grid (no reorientation, no resampling)."""
        gm = self.grid_maps[i]
        return gm is None or (gm.canonical_shape == gm.input_shape and np.array_equal(gm.to_ras, [[0, 1], [1, 1], [2, 1]]))

    def file_label(self, i: int) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The mask of item ``i`` on its file's own grid (bool) and that grid's spacing."""
        from .geometry import voxel_spacing

        lab, affine, _ = load_nifti(self.pairs[i]["label"])
        return lab > 0, voxel_spacing(affine)


def load_ct(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, object]:
    """A CT volume in HU from a NIfTI file or a DICOM series folder: ``(array float32 (x, y, z), affine, header or None)``."""
    p = Path(path)
    if p.is_dir():
        hu, affine = load_dicom_series(p)
        return hu, affine, None
    return load_nifti(p)


def load_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One DICOM series (a folder of slices) -> ``(HU array float32 (x, y, z), RAS affine)`` via MONAI's PydicomReader."""
    from monai.transforms import LoadImage

    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"DICOM folder {p} does not exist")
    if not any(f.is_file() for f in p.iterdir()):
        raise ValueError(f"DICOM folder {p} is empty")
    try:
        img = LoadImage(reader="PydicomReader", image_only=True)(str(p))
    except Exception as exc:
        raise ValueError(f"cannot read a DICOM series from {p}: {exc}") from exc
    return np.asarray(img, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``array`` (its own dtype) as NIfTI with ``affine``, spatial units mm, atomically."""
    import nibabel as nib

    from lowrank_vision.core.files import atomic_path

    out = Path(path)
    if not _is_nifti_name(out):
        raise ValueError(f"output path must be a NIfTI file name (.nii or .nii.gz), got {out.name!r}")
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.header.set_xyzt_units("mm")
    with atomic_path(out) as tmp:
        nib.save(img, str(tmp))
    return out


def save_mask_like(mask: np.ndarray, reference_header, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 mask as NIfTI with the reference's affine and header geometry, atomically."""
    import nibabel as nib

    out = Path(path)
    if not _is_nifti_name(out):
        raise ValueError(f"output path must be a NIfTI file name (.nii or .nii.gz), got {out.name!r}")
    header = reference_header.copy() if reference_header is not None else None
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    from lowrank_vision.core.files import atomic_path

    with atomic_path(out) as tmp:
        nib.save(img, str(tmp))
    return out
