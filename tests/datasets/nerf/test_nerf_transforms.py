"""transforms.json reader (Blender and nerfstudio layouts, bad input) and the procedural scene generator."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from lowrank_vision.datasets.nerf import SceneConfig, make_scene, read_transforms


def _write_images(root, names, size=(6, 4), rgba=False):
    for k, n in enumerate(names):
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = np.full((size[1], size[0], 4 if rgba else 3), 40 * k, dtype=np.uint8)
        if rgba:
            arr[..., 3] = 0  # fully transparent -> background
        Image.fromarray(arr).save(p)


def _pose(z):
    m = np.eye(4)
    m[2, 3] = z
    return m.tolist()


def test_blender_layout_without_extensions_and_rgba(tmp_path):
    _write_images(tmp_path, ["train/r_0.png", "train/r_1.png"], rgba=True)
    meta = {"camera_angle_x": 0.8, "frames": [{"file_path": "./train/r_0", "transform_matrix": _pose(3)},
                                              {"file_path": "./train/r_1", "transform_matrix": _pose(4)}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    d = read_transforms(tmp_path, "train", background=1.0)
    assert d.images.shape == (2, 4, 6, 3) and d.c2w.shape == (2, 4, 4) and d.c2w[1, 2, 3] == 4.0
    fx = 0.5 * 6 / math.tan(0.4)
    assert d.intrinsics == pytest.approx((fx, fx, 3.0, 2.0))
    assert np.allclose(d.images, 1.0) and d.alpha is not None  # transparent pixels composited on white
    assert d.names == ["train/r_0.png", "train/r_1.png"]


def test_nerfstudio_layout_intrinsics_and_split_lists(tmp_path):
    names = [f"images/f{k}.png" for k in range(4)]
    _write_images(tmp_path, names)
    meta = {"fl_x": 5.0, "fl_y": 6.0, "cx": 2.5, "cy": 1.5, "w": 6, "h": 4,
            "frames": [{"file_path": n, "transform_matrix": _pose(k)} for k, n in enumerate(names)],
            "train_filenames": names[:3], "val_filenames": names[3:], "test_filenames": names[3:]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    tr = read_transforms(tmp_path / "transforms.json", "train")
    te = read_transforms(tmp_path, "test")
    assert len(tr.names) == 3 and te.names == ["images/f3.png"] and tr.intrinsics == (5.0, 6.0, 2.5, 1.5)
    del meta["train_filenames"], meta["val_filenames"], meta["test_filenames"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert read_transforms(tmp_path, "test").names == ["images/f0.png"]  # every 8th frame held out
    meta["frames"] = meta["frames"][:1]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="split 'train' has no frames"):
        read_transforms(tmp_path, "train")


@pytest.mark.parametrize("meta, err, match", [
    ({"frames": [{"file_path": "a.png", "transform_matrix": _pose(1)}]}, ValueError, "no camera intrinsics"),
    ({"fl_x": 5, "frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}]}, ValueError, "4x4"),
    ({"fl_x": 5, "frames": [{"file_path": "missing", "transform_matrix": _pose(1)}]}, FileNotFoundError, "'missing' of a frame"),
    ({"fl_x": 5, "frames": []}, ValueError, "non-empty 'frames'"),
    ({"fl_x": 5, "w": 99, "frames": [{"file_path": "a.png", "transform_matrix": _pose(1)}]}, ValueError, "'w' is 99"),
    ({"fl_x": 5, "frames": [{"file_path": "a.png"}]}, ValueError, "needs 'file_path' and 'transform_matrix'"),
])
def test_bad_input_errors_name_the_problem(tmp_path, meta, err, match):
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(err, match=match):
        read_transforms(tmp_path, "test")  # frame 0 is held out when there are no split lists


def test_missing_folder_bad_json_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_transforms(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="transforms_train.json"):
        read_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_transforms(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        read_transforms(tmp_path, "dev")


def test_procedural_scene_is_deterministic_with_disjoint_splits(tmp_path):
    cfg = SceneConfig(width=16, n_train=3, n_val=2, n_test=2, seed=3)
    info = make_scene(tmp_path / "a", cfg)
    make_scene(tmp_path / "b", cfg)
    assert info["views"] == {"train": 3, "val": 2, "test": 2}
    for n in ("train/r_000.png", "test/r_001.png", "transforms.json"):
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    tr, te = read_transforms(tmp_path / "a", "train"), read_transforms(tmp_path / "a", "test")
    ns = read_transforms(tmp_path / "a" / "transforms.json", "train")  # the nerfstudio file gives the same split
    assert np.allclose(ns.c2w, tr.c2w) and ns.intrinsics == pytest.approx(tr.intrinsics)
    centres = {tuple(np.round(m[:3, 3], 4)) for m in tr.c2w}
    assert not centres & {tuple(np.round(m[:3, 3], 4)) for m in te.c2w}
    cover = tr.alpha.mean()
    assert 0.1 < cover < 0.8  # objects fill part of each view
    assert tr.images.std() > 0.15  # textured, not flat


def test_scene_config_errors():
    with pytest.raises(ValueError, match=r"SceneConfig.width must be >= 8, got 4"):
        SceneConfig(width=4)
    with pytest.raises(ValueError, match=r"SceneConfig.radius must be > 1.8"):
        SceneConfig(radius=1.0)


def test_views_traced_together_equal_views_traced_alone():
    from lowrank_vision.datasets.nerf.procedural import _random_poses, render_scene_views

    cfg = SceneConfig(width=12)
    poses = _random_poses(3, cfg, np.random.default_rng(3))
    alone = render_scene_views(poses, 12, cfg.camera_angle_x, views_per_batch=1)
    together = render_scene_views(poses, 12, cfg.camera_angle_x, views_per_batch=2)
    assert together.shape == (3, 12, 12, 4) and np.array_equal(alone, together) and alone[..., 3].sum() > 0
