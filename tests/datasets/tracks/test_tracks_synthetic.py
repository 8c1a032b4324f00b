"""Generated dynamic scenes: determinism, geometry consistency, low-rank motion, disjoint splits."""

import numpy as np
import pytest

from lowrank_vision.datasets.tracks import SceneConfig, make_scene, split_seeds


def test_same_seed_same_scene_and_different_seed_differs():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    np.testing.assert_array_equal(a.tracks, b.tracks)
    assert not np.allclose(a.tracks, c.tracks)


def test_tracks_are_projections_of_the_ground_truth():
    s = make_scene(3, SceneConfig(noise_px=0.0))
    cam = np.einsum("tij,tnj->tni", s.R, s.points) + s.t[:, None]
    np.testing.assert_allclose(cam[..., 2], s.depth)
    pix = cam[..., :2] / cam[..., 2:] * [s.K[0, 0], s.K[1, 1]] + s.K[:2, 2]
    np.testing.assert_allclose(s.tracks[s.visible], pix[s.visible], atol=1e-3)
    assert (s.depth[s.visible] > 0).all()
    H, W = s.image_size
    inside = s.tracks[s.visible]
    assert inside[:, 0].min() >= 0 and inside[:, 0].max() < W and inside[:, 1].max() < H


def test_static_points_do_not_move_and_object_motion_is_low_rank():
    s = make_scene(5, SceneConfig(frames=20, points=96))
    static = s.points[:, ~s.dynamic]
    assert np.abs(static - static[:1]).max() == 0
    moving = s.points[:, s.dynamic]  # [T, M, 3]
    assert np.abs(moving - moving[:1]).max() > 0.1
    # each object's trajectory lies in the span of at most 6 time functions (+ the rest shape)
    flat = moving.reshape(moving.shape[0], -1)
    sv = np.linalg.svd(flat - flat.mean(0), compute_uv=False)
    assert sv[12] < 1e-8 * sv[0]  # at most 2 objects x 6 coefficients


def test_static_config_and_counts():
    s = make_scene(2, SceneConfig(dynamic_fraction=0.0, points=40, frames=10))
    assert s.tracks.shape == (10, 40, 2) and not s.dynamic.any()
    assert (s.visible.sum(0) >= 2).all()


def test_splits_are_disjoint_and_bad_config_is_named():
    tr, va, te = (set(split_seeds(k, 500)) for k in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)
    with pytest.raises(ValueError, match="SceneConfig.frames must be an int >= 2"):
        SceneConfig(frames=1)
    with pytest.raises(ValueError, match="split must be one of"):
        split_seeds("dev", 3)
