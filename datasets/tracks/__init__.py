"""2-D point tracks: the validated ``.npz`` input format, readers of tracker outputs (CoTracker/TAPIR
style), a Lucas-Kanade tracker for videos (OpenCV, no learned weights) and a generator of dynamic
scenes with ground truth (cameras, depth, low-rank object motion).

OpenCV is imported lazily, inside :mod:`.lk`, so importing this package needs numpy only.
"""

from .formats import TrackSet, TracksFormatError, load_tracks, read_cotracker, read_tapir, save_tracks
from .synthetic import Scene, SceneConfig, make_scene, split_seeds

__all__ = [
    "TrackSet", "TracksFormatError", "load_tracks", "save_tracks", "read_cotracker", "read_tapir",
    "Scene", "SceneConfig", "make_scene", "split_seeds",
]
