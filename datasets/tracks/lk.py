"""Video -> point tracks with OpenCV's pyramidal Lucas-Kanade (no learned weights, runs offline).

Choices (none from the TracksTo4D paper, which uses CoTracker):

* corners from ``cv2.goodFeaturesToTrack`` (Shi-Tomasi) seed the tracks; every ``reseed_every`` frames
  new corners are added away from the live tracks (``min_distance`` mask) until ``max_tracks`` are alive;
* each step tracks forward t -> t+1 and back t+1 -> t; a track survives while both LK statuses are good,
  the forward-backward distance is below ``fb_threshold`` px and the point stays inside the image.
  A lost track is not revived (a new seed may take its place), so ``visible`` is one span per track;
* at the end the ``max_points`` longest tracks seen in at least ``min_track_length`` frames are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .formats import TrackSet, validate_tracks

__all__ = ["LKConfig", "read_video", "track_frames", "extract_tracks", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mpg", ".mpeg", ".mov", ".mkv", ".webm", ".m4v")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class LKConfig:
    """Settings of the Lucas-Kanade tracker."""

    max_tracks: int = 600
    """Most tracks alive at once."""
    max_points: int = 256
    """Tracks kept in the output (the longest ones)."""
    min_track_length: int = 8
    """Frames a kept track must be visible in."""
    min_distance: int = 8
    """Minimum pixel distance between corners (and from live tracks when re-seeding)."""
    quality_level: float = 0.01
    """Shi-Tomasi corner quality relative to the best corner."""
    window: int = 21
    """LK window side (pixels)."""
    pyramid_levels: int = 3
    """LK pyramid levels above the full resolution."""
    fb_threshold: float = 1.0
    """Largest forward-backward distance (pixels) of a surviving track."""
    reseed_every: int = 5
    """Add corners every N frames (0: only in the first frame)."""

    def __post_init__(self) -> None:
        for name in ("max_tracks", "max_points", "min_track_length", "min_distance", "window"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"LKConfig.{name} must be an int >= 1, got {v!r}")
        if not (isinstance(self.pyramid_levels, int) and self.pyramid_levels >= 0):
            raise ValueError(f"LKConfig.pyramid_levels must be an int >= 0, got {self.pyramid_levels!r}")
        if not (isinstance(self.reseed_every, int) and self.reseed_every >= 0):
            raise ValueError(f"LKConfig.reseed_every must be an int >= 0, got {self.reseed_every!r}")
        if not 0 < self.quality_level < 1:
            raise ValueError(f"LKConfig.quality_level must be in (0, 1), got {self.quality_level!r}")
        if not self.fb_threshold > 0:
            raise ValueError(f"LKConfig.fb_threshold must be > 0, got {self.fb_threshold!r}")


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the Lucas-Kanade tracker needs OpenCV: pip install 'lowrank-vision[tracks]'") from exc
    return cv2


def read_video(path, start: int = 0, frames: Optional[int] = None, stride: int = 1, max_side: Optional[int] = None) -> list[np.ndarray]:
    """Grey uint8 frames of a video file or of a folder of images (sorted by name)."""
    cv2 = _cv2()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if start < 0 or stride < 1 or (frames is not None and frames < 2):
        raise ValueError(f"need start >= 0, stride >= 1 and frames >= 2, got start={start}, stride={stride}, frames={frames}")
    out: list[np.ndarray] = []

    def keep(img: np.ndarray, index: int) -> bool:
        if index < start or (index - start) % stride:
            return True
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        if max_side and max(img.shape) > max_side:
            s = max_side / max(img.shape)
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        out.append(img)
        return frames is None or len(out) < frames

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        for i, f in enumerate(files):
            img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise ValueError(f"cannot read image {f}")
            if img.dtype != np.uint8:
                img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
            if not keep(img, i):
                break
    else:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path}: expected a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of images")
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise ValueError(f"{path}: OpenCV cannot open this video")
            i = 0
            while True:
                ok, img = cap.read()
                if not ok or not keep(img, i):
                    break
                i += 1
        finally:
            cap.release()
    if len(out) < 2:
        raise ValueError(f"{path}: fewer than 2 frames read (start={start}, stride={stride})")
    return out


def track_frames(frames: list[np.ndarray], config: LKConfig = LKConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Tracks [T, N, 2] and visibility [T, N] of grey frames (see the module docstring)."""
    cv2 = _cv2()
    T = len(frames)
    H, W = frames[0].shape[:2]
    lk = dict(winSize=(config.window, config.window), maxLevel=config.pyramid_levels,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    paths: list[list] = []  # per track: [start frame, list of (x, y)]
    alive: list[int] = []

    def seed(t: int) -> None:
        room = config.max_tracks - len(alive)
        if room <= 0:
            return
        mask = np.full((H, W), 255, np.uint8)
        for k in alive:
            x, y = paths[k][1][-1]
            cv2.circle(mask, (int(round(x)), int(round(y))), config.min_distance, 0, -1)
        corners = cv2.goodFeaturesToTrack(frames[t], maxCorners=room, qualityLevel=config.quality_level,
                                          minDistance=config.min_distance, mask=mask)
        for c in ([] if corners is None else corners.reshape(-1, 2)):
            paths.append([t, [(float(c[0]), float(c[1]))]])
            alive.append(len(paths) - 1)

    seed(0)
    for t in range(1, T):
        if alive:
            p0 = np.array([paths[k][1][-1] for k in alive], np.float32).reshape(-1, 1, 2)
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(frames[t - 1], frames[t], p0, None, **lk)
            p0b, st0, _ = cv2.calcOpticalFlowPyrLK(frames[t], frames[t - 1], p1, None, **lk)
            fb = np.linalg.norm((p0 - p0b).reshape(-1, 2), axis=1)
            p1 = p1.reshape(-1, 2)
            ok = (st1.ravel() == 1) & (st0.ravel() == 1) & (fb < config.fb_threshold)
            ok &= (p1[:, 0] >= 0) & (p1[:, 0] <= W - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= H - 1)
            still = []
            for k, good, p in zip(alive, ok, p1):
                if good:
                    paths[k][1].append((float(p[0]), float(p[1])))
                    still.append(k)
            alive[:] = still
        if config.reseed_every and t % config.reseed_every == 0 and t < T - 1:
            seed(t)
    lengths = np.array([len(p[1]) for p in paths])
    order = [k for k in np.argsort(-lengths, kind="stable") if lengths[k] >= config.min_track_length][: config.max_points]
    order = sorted(order)
    tracks = np.zeros((T, len(order), 2), np.float32)
    visible = np.zeros((T, len(order)), bool)
    for j, k in enumerate(order):
        start, pts = paths[k]
        tracks[start:start + len(pts), j] = pts
        visible[start:start + len(pts), j] = True
    return tracks, visible


def extract_tracks(video, config: LKConfig = LKConfig(), start: int = 0, frames: Optional[int] = None, stride: int = 1,
                   max_side: Optional[int] = None, K: Optional[np.ndarray] = None) -> TrackSet:
    """Read ``video`` (file or image folder) and track it; K is guessed from the frame size when not given."""
    imgs = read_video(video, start=start, frames=frames, stride=stride, max_side=max_side)
    tracks, visible = track_frames(imgs, config)
    if tracks.shape[1] == 0:
        raise ValueError(f"{video}: no track lasted {config.min_track_length} frames (too little texture or too fast motion)")
    size = imgs[0].shape[:2]
    return validate_tracks(tracks, visible, K=K, image_size=size, source=str(video))
