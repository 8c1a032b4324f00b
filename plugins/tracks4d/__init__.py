"""tracks4d: 3-D structure, cameras and low-rank motion from 2-D point tracks (TracksTo4D, arXiv 2404.07097).

A clean-room re-implementation from the paper's description (the reference code and weights are
non-commercial and were not used). Importing this package is cheap (no OpenCV, no open3d):
:mod:`.model` holds the encoder, :mod:`.recipes` the losses, training, test-time fine-tuning and the
per-scene optimisation baseline, :mod:`.commands` the app's subcommands (``lowrank-tracks4d``),
:mod:`.open3d_export` the PLY point clouds and camera frustums (the open3d host file).
"""

from __future__ import annotations

from lowrank_vision.plugins import PluginSpec, lazy_demo

__all__ = ["PLUGIN"]


PLUGIN = PluginSpec(
    name="tracks4d",
    app="lowrank-tracks4d",
    description="TracksTo4D: cameras, depth and low-rank 3-D motion from 2-D point tracks; LK tracker, scene generator",
    host="open3d (PLY point clouds and camera frustums)",
    demo=lazy_demo(__name__),
)
