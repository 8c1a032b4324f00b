"""Readers and writers for the formats hyperspectral users have.

* MATLAB ``.mat`` cubes and ground-truth maps in the Indian Pines / Salinas / PaviaU
  layout (cube ``[H, W, B]`` in one variable, labels ``[H, W]`` in the same or a second
  file), through ``scipy.io`` (v7.3/HDF5 files through ``h5py`` when it is installed).
* ENVI ``.hdr`` + binary image (bsq / bil / bip, any ENVI data type, either byte order),
  with wavelengths and ``map info`` georeferencing; a small own reader/writer (no
  ``spectral`` dependency).
* Multi-band GeoTIFF (and anything GDAL opens) through ``rasterio``, with band
  wavelengths when the file states them (band tags or ``Band 1 (450 nm)`` descriptions)
  and the file's CRS/transform; class maps are written back as georeferenced GeoTIFFs.

scipy and rasterio are imported inside the functions that need them. Every writer goes
through ``lowrank_vision.core.files`` (temporary file next to the target, renamed on success).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

from lowrank_vision.core.files import atomic_path, write_text

from .cube import HSICube

__all__ = [
    "HSIFormatError",
    "read_cube",
    "read_mat",
    "read_envi",
    "write_envi",
    "read_geotiff",
    "write_geotiff",
    "read_label_map",
]

PathLike = Union[str, os.PathLike]


class HSIFormatError(ValueError):
    """A file that cannot be read as a hyperspectral cube (the message names the file and the problem)."""


# ----------------------------------------------------------------------------- dispatch


def read_cube(path: PathLike, gt: Optional[PathLike] = None, **kwargs) -> HSICube:
    """Read a cube by file suffix: ``.mat``, ``.hdr``/ENVI, anything else through rasterio.

    ``gt`` optionally names a separate ground-truth file (``.mat``, ENVI or GeoTIFF, one band).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cube: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        cube = read_mat(path, **kwargs)
    elif suffix == ".hdr" or path.with_suffix(".hdr").exists() and suffix in (".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ""):
        cube = read_envi(path if suffix == ".hdr" else path.with_suffix(".hdr"))
    else:
        cube = read_geotiff(path, **kwargs)
    if gt is not None:
        cube.labels = _read_label_map(Path(gt), cube.data.shape[:2])
    return cube


def read_label_map(path: PathLike, shape: Optional[tuple] = None) -> np.ndarray:
    """A one-band label / mask map (``.mat``, ENVI or GeoTIFF) as int64 ``[H, W]`` (checked against ``shape`` when given)."""
    return _read_label_map(Path(path), shape)


def _read_label_map(path: Path, shape: Optional[tuple]) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"gt: no such file {str(path)!r}")
    if path.suffix.lower() == ".mat":
        labels = _mat_pick(_load_mat(path), None, ndim=2, what="ground truth", path=path)
        if labels is None:
            raise HSIFormatError(f"gt: {str(path)!r} holds no 2-D label map")
    else:
        c = read_envi(path) if path.suffix.lower() == ".hdr" else read_geotiff(path)
        if c.bands != 1:
            raise HSIFormatError(f"gt: {str(path)!r} has {c.bands} bands, expected a single-band label map")
        labels = c.data[..., 0]
    labels = np.asarray(labels)
    if shape is not None and labels.shape != tuple(shape):
        raise HSIFormatError(f"gt: {str(path)!r} is {labels.shape}, expected the cube's {tuple(shape)}")
    if not np.all(np.equal(np.mod(labels, 1), 0)):
        raise HSIFormatError(f"gt: {str(path)!r} holds non-integer values, expected class ids")
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------- MATLAB


def _load_mat(path: Path) -> dict:
    import scipy.io

    try:
        return {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        try:
            import h5py
        except ImportError as exc:
            raise HSIFormatError(f"cube: {str(path)!r} is a MATLAB v7.3 (HDF5) file; install h5py to read it") from exc
        with h5py.File(path, "r") as f:  # HDF5 stores MATLAB arrays transposed
            return {k: np.asarray(f[k]).T for k in f.keys() if hasattr(f[k], "shape")}
    except Exception as exc:
        raise HSIFormatError(f"cube: cannot read {str(path)!r} as a MATLAB .mat file ({exc})") from exc


def _mat_pick(variables: dict, key: Optional[str], ndim: int, what: str, path: Path) -> Optional[np.ndarray]:
    if key is not None:
        if key not in variables:
            raise HSIFormatError(f"{what}: key {key!r} not in {str(path)!r}; variables are {sorted(variables)}")
        return np.asarray(variables[key])
    candidates = [
        (np.asarray(v).size, k) for k, v in variables.items()
        if isinstance(v, np.ndarray) and v.ndim == ndim and v.dtype.kind in "iufb"
    ]
    if ndim == 2:  # prefer names like *_gt, then integer maps
        named = [c for c in candidates if re.search(r"gt|label|truth", c[1], re.I)]
        candidates = named or [c for c in candidates if variables[c[1]].dtype.kind in "iub"] or candidates
    if not candidates:
        return None
    return np.asarray(variables[max(candidates)[1]])


def read_mat(
    path: PathLike,
    gt_path: Optional[PathLike] = None,
    cube_key: Optional[str] = None,
    gt_key: Optional[str] = None,
) -> HSICube:
    """Read a ``.mat`` cube (largest 3-D array unless ``cube_key``) and labels (same file or ``gt_path``)."""
    path = Path(path)
    variables = _load_mat(path)
    cube = _mat_pick(variables, cube_key, ndim=3, what="cube", path=path)
    if cube is None:
        raise HSIFormatError(f"cube: {str(path)!r} holds no 3-D numeric array; variables are {sorted(variables)}")
    labels = None
    if gt_path is not None:
        labels = _mat_pick(_load_mat(Path(gt_path)), gt_key, ndim=2, what="ground truth", path=Path(gt_path))
        if labels is None:
            raise HSIFormatError(f"gt: {str(gt_path)!r} holds no 2-D label map")
    elif gt_key is not None or any(re.search(r"gt|label|truth", k, re.I) for k in variables):
        labels = _mat_pick(variables, gt_key, ndim=2, what="ground truth", path=path)
    if labels is not None and labels.shape != cube.shape[:2]:
        raise HSIFormatError(f"gt: label map {labels.shape} does not match the cube's {cube.shape[:2]}")
    return HSICube(data=cube.astype(np.float32), labels=None if labels is None else labels.astype(np.int64), source=str(path))


# ----------------------------------------------------------------------------- ENVI

_ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}


def _parse_envi_header(path: Path) -> dict:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise HSIFormatError(f"header: cannot read {str(path)!r} ({exc})") from exc
    if not text.lstrip().startswith("ENVI"):
        raise HSIFormatError(f"header: {str(path)!r} does not start with 'ENVI'; not an ENVI header")
    fields: dict = {}
    for m in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.M):
        key, value = m.group(1).strip().lower(), m.group(2).strip()
        if value.startswith("{"):
            value = value[1:-1].strip()
        fields[key] = value
    missing = [k for k in ("samples", "lines", "bands", "data type") if k not in fields]
    if missing:
        raise HSIFormatError(f"header: {str(path)!r} lacks required field(s) {missing}")
    try:
        for k in ("samples", "lines", "bands", "data type", "header offset", "byte order"):
            if k in fields:
                fields[k] = int(fields[k])
    except ValueError as exc:
        raise HSIFormatError(f"header: {str(path)!r} has a non-integer size field ({exc})") from exc
    return fields


def _envi_data_file(hdr: Path) -> Path:
    for suffix in (".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".IMG", ""):
        p = hdr.with_suffix(suffix)
        if p != hdr and p.exists():
            return p
    raise HSIFormatError(f"header: no image file next to {str(hdr)!r} (looked for .img/.dat/.raw/.bsq/.bil/.bip)")


def read_envi(hdr_path: PathLike) -> HSICube:
    """Read an ENVI header + binary file into ``[H, W, B]``; wavelengths and map info when present."""
    hdr = Path(hdr_path)
    f = _parse_envi_header(hdr)
    code = f["data type"]
    if code not in _ENVI_DTYPES:
        raise HSIFormatError(f"header: {str(hdr)!r} has unsupported data type {code}; supported {sorted(_ENVI_DTYPES)}")
    dtype = np.dtype(_ENVI_DTYPES[code]).newbyteorder(">" if f.get("byte order", 0) == 1 else "<")
    h, w, b = f["lines"], f["samples"], f["bands"]
    interleave = str(f.get("interleave", "bsq")).lower()
    if interleave not in ("bsq", "bil", "bip"):
        raise HSIFormatError(f"header: {str(hdr)!r} has interleave {interleave!r}, expected bsq, bil or bip")
    data_file = _envi_data_file(hdr)
    raw = np.fromfile(data_file, dtype=dtype, offset=f.get("header offset", 0))
    if raw.size < h * w * b:
        raise HSIFormatError(f"image: {str(data_file)!r} holds {raw.size} values, the header promises {h}x{w}x{b}")
    raw = raw[: h * w * b]
    cube = {"bsq": lambda r: r.reshape(b, h, w).transpose(1, 2, 0),
            "bil": lambda r: r.reshape(h, b, w).transpose(0, 2, 1),
            "bip": lambda r: r.reshape(h, w, b)}[interleave](raw)
    wl = None
    if "wavelength" in f:
        wl = np.array([float(v) for v in f["wavelength"].split(",") if v.strip()])
        if str(f.get("wavelength units", "nm")).lower().startswith("micro"):
            wl = wl * 1000.0
        if wl.size != b:
            raise HSIFormatError(f"header: {str(hdr)!r} lists {wl.size} wavelengths for {b} bands")
    crs, transform = None, None
    if "map info" in f:
        parts = [p.strip() for p in f["map info"].split(",")]
        try:  # name, ref px x, ref px y, easting, northing, px size x, px size y, ...
            rx, ry, e, n, sx, sy = (float(v) for v in parts[1:7])
            transform = (sx, 0.0, e - (rx - 1) * sx, 0.0, -sy, n + (ry - 1) * sy)
        except (ValueError, IndexError) as exc:
            raise HSIFormatError(f"header: {str(hdr)!r} has an unreadable 'map info' ({exc})") from exc
        crs = f.get("coordinate system string") or None
    labels = None
    if str(f.get("file type", "")).lower().startswith("envi classification") and b == 1:
        labels = cube[..., 0].astype(np.int64)
    names = [s.strip() for s in f.get("class names", "").split(",") if s.strip()][1:]
    return HSICube(data=cube.astype(np.float32), labels=labels, wavelengths=wl, crs=crs, transform=transform,
                   class_names=names, source=str(hdr))


def write_envi(cube: HSICube, hdr_path: PathLike, interleave: str = "bsq") -> Path:
    """Write ``cube.data`` as float32 little-endian ENVI (``.hdr`` + ``.img``); returns the header path."""
    if interleave not in ("bsq", "bil", "bip"):
        raise ValueError(f"interleave: expected 'bsq', 'bil' or 'bip', got {interleave!r}")
    hdr = Path(hdr_path)
    if hdr.suffix.lower() != ".hdr":
        raise ValueError(f"hdr_path: expected a path ending in .hdr, got {str(hdr)!r}")
    h, w, b = cube.data.shape
    arr = {"bsq": cube.data.transpose(2, 0, 1), "bil": cube.data.transpose(0, 2, 1), "bip": cube.data}[interleave]
    lines = ["ENVI", "description = {written by lowrank_vision}", f"samples = {w}", f"lines = {h}", f"bands = {b}",
             "header offset = 0", "file type = ENVI Standard", "data type = 4", f"interleave = {interleave}", "byte order = 0"]
    if cube.wavelengths is not None:
        lines += ["wavelength units = Nanometers", "wavelength = {" + ", ".join(f"{v:.3f}" for v in cube.wavelengths) + "}"]
    if cube.transform is not None:
        a, _, c, _, e, f = cube.transform
        lines.append(f"map info = {{Arbitrary, 1, 1, {c!r}, {f!r}, {a!r}, {-e!r}}}")
        if cube.crs:
            lines.append("coordinate system string = {" + cube.crs + "}")
    with atomic_path(hdr.with_suffix(".img")) as tmp:
        np.ascontiguousarray(arr, dtype="<f4").tofile(tmp)
    write_text(hdr, "\n".join(lines) + "\n")  # after the image, so a header never points at a partial file
    return hdr


# ----------------------------------------------------------------------------- GeoTIFF / rasterio

_NM = re.compile(r"([-+]?\d+(?:\.\d+)?)\s*(nm|um|µm|micrometers?|nanometers?)?", re.I)


def _band_wavelengths(ds) -> Optional[np.ndarray]:
    """Band centres from band tags (``wavelength``) or descriptions like ``'Band 3 (665 nm)'``."""
    values = []
    for i in range(1, ds.count + 1):
        tags = {k.lower(): v for k, v in ds.tags(i).items()}
        text = tags.get("wavelength") or tags.get("center_wavelength") or ds.descriptions[i - 1] or ""
        m = _NM.search(text) if ("nm" in text.lower() or "wavelength" in tags or "center_wavelength" in tags
                                  or "um" in text.lower() or "µm" in text) else None
        if m is None:
            return None
        v = float(m.group(1))
        unit = (m.group(2) or tags.get("wavelength_units", "nm")).lower()
        values.append(v * 1000.0 if unit.startswith(("u", "µ", "micro")) else v)
    return np.array(values)


def read_geotiff(path: PathLike, gt_band: Optional[int] = None) -> HSICube:
    """Read every band of a raster through rasterio into ``[H, W, B]`` with CRS/transform/wavelengths.

    ``gt_band`` (1-based) names a band that holds the ground truth instead of data.
    """
    try:
        import rasterio
    except ImportError as exc:
        raise ImportError("reading GeoTIFF needs rasterio: pip install 'lowrank-vision[hsi]'") from exc
    path = Path(path)
    try:
        with rasterio.open(path) as ds:
            data = ds.read().astype(np.float32)  # [B, H, W]
            wl = _band_wavelengths(ds)
            crs = ds.crs.to_string() if ds.crs else None
            transform = tuple(ds.transform)[:6] if ds.crs or not ds.transform.is_identity else None
    except rasterio.errors.RasterioIOError as exc:
        raise HSIFormatError(f"cube: cannot open {str(path)!r} as a raster ({exc})") from exc
    labels = None
    if gt_band is not None:
        if not 1 <= gt_band <= data.shape[0]:
            raise ValueError(f"gt_band: expected 1..{data.shape[0]}, got {gt_band}")
        labels = data[gt_band - 1].astype(np.int64)
        data = np.delete(data, gt_band - 1, axis=0)
        wl = None if wl is None else np.delete(wl, gt_band - 1)
    return HSICube(data=data.transpose(1, 2, 0), labels=labels, wavelengths=wl, crs=crs, transform=transform,
                   source=str(path))


def write_geotiff(path: PathLike, array: np.ndarray, crs: Optional[str] = None, transform: Optional[tuple] = None,
                  wavelengths: Optional[np.ndarray] = None, nodata: Optional[float] = None) -> Path:
    """Write ``[H, W]`` (class map) or ``[H, W, B]`` as a GeoTIFF, georeferenced when ``crs``/``transform`` given."""
    import rasterio
    from rasterio.transform import Affine

    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"array: expected [H, W] or [H, W, B], got shape {arr.shape}")
    if wavelengths is not None and len(wavelengths) != arr.shape[2]:
        raise ValueError(f"wavelengths: expected {arr.shape[2]} values, got {len(wavelengths)}")
    profile = dict(driver="GTiff", height=arr.shape[0], width=arr.shape[1], count=arr.shape[2], dtype=arr.dtype.name,
                   compress="deflate")
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = Affine(*transform[:6])
    if nodata is not None:
        profile["nodata"] = nodata
    path = Path(path)
    import warnings

    with atomic_path(path, suffix=".tif") as tmp, warnings.catch_warnings():
        if crs is None and transform is None:  # a plain (non-georeferenced) raster is what was asked for
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(arr.transpose(2, 0, 1))
            if wavelengths is not None:
                for i, v in enumerate(wavelengths, start=1):
                    ds.update_tags(i, wavelength=f"{float(v):.3f}", wavelength_units="nm")
                    ds.set_band_description(i, f"Band {i} ({float(v):.1f} nm)")
    return path
