"""The open3d host file: with the `tracks` extra installed, open3d writes the PLY files and reads them back."""

from __future__ import annotations

import numpy as np

from lowrank_vision.plugins._open3d import import_open3d
from lowrank_vision.plugins.tracks4d.open3d_export import ply_writer, write_points_ply


def test_open3d_writes_points_it_reads_back(tmp_path):
    o3d = import_open3d()  # the test extra installs open3d (and libusb-package for machines without libusb)
    assert ply_writer() == "open3d"
    rng = np.random.default_rng(0)
    xyz, rgb = rng.normal(size=(123, 3)), rng.uniform(size=(123, 3))
    path = write_points_ply(tmp_path / "frame.ply", xyz, rgb)
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == 123
    np.testing.assert_allclose(np.asarray(cloud.points), xyz, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
