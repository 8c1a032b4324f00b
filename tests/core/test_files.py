"""core/files.py: a file or folder is either fully written or not touched."""

from __future__ import annotations

import json
import os

import pytest

from lowrank_vision.core.files import atomic_dir, atomic_path, write_bytes, write_json, write_text


def test_write_helpers_write_and_replace(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1, "p": tmp_path})
    assert json.loads(target.read_text()) == {"a": 1, "p": str(tmp_path)}
    write_text(target, "new")
    assert target.read_text() == "new"
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.json"]


def test_atomic_path_error_keeps_old_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".txt"
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_json_of_unserialisable_value_keeps_old_file(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_dir_swaps_whole_folder(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_dir_failure_keeps_old_content(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old weights")
    (target / "config").write_text("old config")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("new weights")
            raise RuntimeError("config failed")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"weights": "old weights", "config": "old config"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_write_ply_points_faces_and_edges_read_back_by_open3d(tmp_path):
    """One binary PLY writer for every plugin: points with colours, a mesh's faces, a line set's edges."""
    import numpy as np

    from lowrank_vision.core.files import write_ply
    from lowrank_vision.plugins._open3d import import_open3d

    o3d = import_open3d()
    rng = np.random.default_rng(0)
    xyz, rgb = rng.normal(size=(50, 3)), rng.uniform(size=(50, 3))
    cloud = o3d.io.read_point_cloud(str(write_ply(tmp_path / "points.ply", xyz, rgb)))
    np.testing.assert_allclose(np.asarray(cloud.points), xyz, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cloud.colors), np.round(rgb * 255) / 255, atol=1e-6)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    mesh = o3d.io.read_triangle_mesh(str(write_ply(tmp_path / "mesh.ply", xyz[:5], rgb[:5], faces=faces)))
    np.testing.assert_array_equal(np.asarray(mesh.triangles), faces)
    edges = np.array([[0, 1], [1, 2], [3, 4]])
    lines = o3d.io.read_line_set(str(write_ply(tmp_path / "lines.ply", xyz[:5], edges=edges)))
    np.testing.assert_array_equal(np.asarray(lines.lines), edges)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.ply", "mesh.ply", "points.ply"]  # no temp file left
