"""The point-track input format and readers of tracker outputs.

A track file is an ``.npz`` with

* ``tracks``  float [T, N, 2]: pixel coordinates (x right, y down) of N points in T frames;
* ``visible`` bool  [T, N]: whether point n is seen in frame t (coordinates of hidden points are ignored);
* ``K`` [3, 3] camera intrinsics, **or** ``image_size`` [H, W]: the focal length is then guessed as
  ``0.5 * (H + W)`` pixels with the principal point at the image centre (and refined by the model's
  per-frame focal correction).

Optional ground truth (written by the generator, read by ``eval``): ``gt_R`` [T, 3, 3], ``gt_t`` [T, 3]
(world -> camera, ``x_cam = R x_world + t``), ``gt_points`` [T, N, 3], ``gt_depth`` [T, N], ``gt_dynamic`` [N].

Readers: :func:`read_cotracker` (``pred_tracks`` [1?, T, N, 2], ``pred_visibility`` [1?, T, N], optional
``Ks_all`` [T, 3, 3]: the layout CoTracker's demo and the TracksTo4D preprocessing save) and
:func:`read_tapir` (``tracks`` [N, T, 2] point-major and ``occluded`` [N, T], TAPIR/TAPNext style).
:func:`load_tracks` picks the reader from the keys it finds. Every check names the key and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from lowrank_vision.core.files import PathLike, atomic_path

__all__ = ["TrackSet", "TracksFormatError", "load_tracks", "save_tracks", "read_cotracker", "read_tapir",
           "validate_tracks", "guess_intrinsics", "MIN_VISIBLE"]

MIN_VISIBLE = 2
"""A track must be visible in at least this many frames to constrain anything."""

GT_KEYS = ("gt_R", "gt_t", "gt_points", "gt_depth", "gt_dynamic")


class TracksFormatError(ValueError):
    """A track file or array that does not follow the documented format."""


@dataclass(frozen=True)
class TrackSet:
    """Validated tracks of one video (build with :func:`validate_tracks` or a reader)."""

    tracks: np.ndarray
    """float32 [T, N, 2] pixel coordinates."""
    visible: np.ndarray
    """bool [T, N]."""
    K: np.ndarray
    """float64 [3, 3] intrinsics (given, or guessed from ``image_size``)."""
    image_size: tuple[int, int]
    """(H, W) in pixels (from the file, or the extent of the tracks when only ``K`` is given)."""
    focal_known: bool = True
    """False when ``K`` was guessed from the image size."""
    gt: dict = field(default_factory=dict)
    """Optional ground truth arrays (keys of :data:`GT_KEYS`)."""

    @property
    def num_frames(self) -> int:
        return int(self.tracks.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.tracks.shape[1])

    def subset(self, frames: Optional[slice] = None, points: Optional[np.ndarray] = None) -> "TrackSet":
        """A window of frames and/or a selection of points (ground truth follows)."""
        fr = frames if frames is not None else slice(None)
        pt = points if points is not None else slice(None)
        gt = {}
        for k, v in self.gt.items():
            if k in ("gt_R", "gt_t"):
                gt[k] = v[fr]
            elif k == "gt_dynamic":
                gt[k] = v[pt]
            else:
                gt[k] = v[fr][:, pt]
        return replace(self, tracks=self.tracks[fr][:, pt], visible=self.visible[fr][:, pt], gt=gt)


def guess_intrinsics(image_size: tuple[int, int]) -> np.ndarray:
    """Pinhole K with focal ``0.5 * (H + W)`` and the principal point at the image centre."""
    h, w = image_size
    f = 0.5 * (h + w)
    return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])


def _fail(source: str, msg: str) -> None:
    raise TracksFormatError(f"{source}: {msg}")


def validate_tracks(tracks, visible, K=None, image_size=None, gt: Optional[dict] = None, source: str = "tracks") -> TrackSet:
    """Check shapes, dtypes and values; return a :class:`TrackSet` or raise :class:`TracksFormatError`."""
    tracks = np.asarray(tracks)
    visible = np.asarray(visible)
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        _fail(source, f"'tracks' must have shape [T, N, 2] (pixels), got {list(tracks.shape)}")
    if not np.issubdtype(tracks.dtype, np.number):
        _fail(source, f"'tracks' must be numeric, got dtype {tracks.dtype}")
    T, N = tracks.shape[:2]
    if T < 2 or N < 1:
        _fail(source, f"'tracks' needs at least 2 frames and 1 point, got T={T}, N={N}")
    if visible.shape != (T, N):
        _fail(source, f"'visible' must have shape [T, N] = {[T, N]}, got {list(visible.shape)}")
    if visible.dtype != bool:
        if not np.issubdtype(visible.dtype, np.number) or not np.isin(visible, (0, 1)).all():
            _fail(source, f"'visible' must be bool (or 0/1), got dtype {visible.dtype}")
        visible = visible.astype(bool)
    if not np.isfinite(tracks[visible]).all():
        _fail(source, "'tracks' has NaN or inf at visible entries")
    tracks = np.where(visible[..., None], tracks, 0.0).astype(np.float32)
    tracks = np.nan_to_num(tracks)
    if (visible.sum(0) < MIN_VISIBLE).all():
        _fail(source, f"no track is visible in at least {MIN_VISIBLE} frames")
    focal_known = K is not None
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            _fail(source, f"'K' must have shape [3, 3], got {list(K.shape)}")
        if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or abs(K[2, 2] - 1) > 1e-6 or K[2, :2].any():
            _fail(source, f"'K' must be a finite pinhole matrix [[fx,s,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0, got {K.tolist()}")
    if image_size is not None:
        size = np.asarray(image_size).reshape(-1)
        if size.shape != (2,) or not np.isfinite(size).all() or (size <= 0).any():
            _fail(source, f"'image_size' must be [H, W] with positive entries, got {np.asarray(image_size).tolist()}")
        image_size = (int(size[0]), int(size[1]))
    if K is None and image_size is None:
        _fail(source, "needs 'K' [3, 3] or 'image_size' [H, W] (neither was given)")
    if K is None:
        K = guess_intrinsics(image_size)
    if image_size is None:
        seen = tracks[visible]
        image_size = (int(max(2 * K[1, 2], seen[:, 1].max() + 1)), int(max(2 * K[0, 2], seen[:, 0].max() + 1)))
    gt = dict(gt or {})
    expected = {"gt_R": (T, 3, 3), "gt_t": (T, 3), "gt_points": (T, N, 3), "gt_depth": (T, N), "gt_dynamic": (N,)}
    for k, v in gt.items():
        if k not in expected:
            _fail(source, f"unknown ground-truth key {k!r}; expected one of {sorted(expected)}")
        if np.shape(v) != expected[k]:
            _fail(source, f"'{k}' must have shape {list(expected[k])}, got {list(np.shape(v))}")
    return TrackSet(tracks=tracks, visible=visible, K=K, image_size=image_size, focal_known=focal_known, gt=gt)


def _open_npz(path: PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"track file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zip/pickle errors from a corrupt or foreign file
        raise TracksFormatError(f"{path}: not a readable .npz file ({exc})") from exc


def read_cotracker(data: dict, image_size=None, source: str = "tracks") -> TrackSet:
    """``pred_tracks`` [1?, T, N, 2] + ``pred_visibility`` [1?, T, N] (+ optional ``Ks_all`` [T, 3, 3])."""
    tracks = np.asarray(data["pred_tracks"])
    if "pred_visibility" not in data:
        _fail(source, "CoTracker-style file has 'pred_tracks' but no 'pred_visibility'")
    vis = np.asarray(data["pred_visibility"])
    if tracks.ndim == 4 and tracks.shape[0] == 1:
        tracks = tracks[0]
    if vis.ndim == 3 and vis.shape[0] == 1:
        vis = vis[0]
    if vis.dtype != bool and np.issubdtype(vis.dtype, np.floating):
        vis = vis > 0.5
    K = np.asarray(data["Ks_all"])[0] if "Ks_all" in data else data.get("K")
    size = data.get("image_size", image_size)
    return validate_tracks(tracks, vis, K=K, image_size=size, source=source)


def read_tapir(data: dict, image_size=None, source: str = "tracks") -> TrackSet:
    """``tracks`` [N, T, 2] (point-major) + ``occluded`` [N, T] (or ``visibles`` [N, T]), TAPIR style."""
    tracks = np.asarray(data["tracks"])
    if tracks.ndim == 4 and tracks.shape[0] == 1:
        tracks = tracks[0]
    hidden = data.get("occluded")
    vis = ~np.asarray(hidden, dtype=bool) if hidden is not None else np.asarray(data["visibles"], dtype=bool)
    if vis.ndim == 3 and vis.shape[0] == 1:
        vis = vis[0]
    if tracks.ndim != 3:
        _fail(source, f"TAPIR-style 'tracks' must have shape [N, T, 2], got {list(tracks.shape)}")
    size = data.get("image_size", image_size)
    return validate_tracks(np.swapaxes(tracks, 0, 1), vis.T, K=data.get("K"), image_size=size, source=source)


def load_tracks(path: PathLike, image_size=None) -> TrackSet:
    """Read a track file in the documented format, or a CoTracker/TAPIR-style one (chosen by its keys)."""
    data = _open_npz(path)
    src = str(path)
    if "pred_tracks" in data:
        return read_cotracker(data, image_size=image_size, source=src)
    if "tracks" in data and ("occluded" in data or "visibles" in data):
        return read_tapir(data, image_size=image_size, source=src)
    missing = [k for k in ("tracks", "visible") if k not in data]
    if missing:
        _fail(src, f"missing key(s) {missing}; expected 'tracks' [T, N, 2], 'visible' [T, N] and 'K' [3, 3] or "
                   f"'image_size' [H, W] (or CoTracker 'pred_tracks'/'pred_visibility', TAPIR 'tracks'/'occluded'); found {sorted(data)}")
    gt = {k: data[k] for k in GT_KEYS if k in data}
    return validate_tracks(data["tracks"], data["visible"], K=data.get("K"), image_size=data.get("image_size", image_size),
                           gt=gt, source=src)


def save_tracks(path: PathLike, ts: TrackSet) -> Path:
    """Write a :class:`TrackSet` in the documented format (atomically)."""
    arrays = {"tracks": ts.tracks, "visible": ts.visible, "image_size": np.asarray(ts.image_size)}
    if ts.focal_known:
        arrays["K"] = ts.K
    arrays.update(ts.gt)
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path
