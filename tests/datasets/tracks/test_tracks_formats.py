"""The documented .npz track format: round trip, readers of CoTracker/TAPIR layouts, and clear errors."""

import numpy as np
import pytest

from lowrank_vision.datasets.tracks import TracksFormatError, load_tracks, make_scene, save_tracks
from lowrank_vision.datasets.tracks.formats import guess_intrinsics


def _arrays(T=5, N=7):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 100, (T, N, 2)).astype(np.float32), np.ones((T, N), bool)


def test_round_trip_keeps_tracks_intrinsics_and_ground_truth(tmp_path):
    ts = make_scene(1, ).to_trackset()
    path = save_tracks(tmp_path / "s.npz", ts)
    back = load_tracks(path)
    np.testing.assert_array_equal(back.tracks[back.visible], ts.tracks[ts.visible])
    np.testing.assert_array_equal(back.visible, ts.visible)
    np.testing.assert_allclose(back.K, ts.K)
    assert back.focal_known and back.image_size == ts.image_size
    np.testing.assert_allclose(back.gt["gt_depth"], ts.gt["gt_depth"])


def test_image_size_only_guesses_a_centred_focal(tmp_path):
    tracks, vis = _arrays()
    np.savez(tmp_path / "a.npz", tracks=tracks, visible=vis, image_size=np.array([240, 320]))
    ts = load_tracks(tmp_path / "a.npz")
    assert not ts.focal_known
    np.testing.assert_allclose(ts.K, [[280, 0, 160], [0, 280, 120], [0, 0, 1]])
    np.testing.assert_allclose(guess_intrinsics((240, 320)), ts.K)


def test_cotracker_and_tapir_layouts(tmp_path):
    tracks, vis = _arrays()
    vis[2, 3] = False
    np.savez(tmp_path / "co.npz", pred_tracks=tracks[None], pred_visibility=vis[None], image_size=np.array([100, 100]))
    np.savez(tmp_path / "tap.npz", tracks=np.swapaxes(tracks, 0, 1), occluded=~vis.T, image_size=np.array([100, 100]))
    for name in ("co.npz", "tap.npz"):
        ts = load_tracks(tmp_path / name)
        np.testing.assert_array_equal(ts.visible, vis)
        np.testing.assert_allclose(ts.tracks[vis], tracks[vis])


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("visible"), "missing key"),
    (lambda d: d.pop("K"), "needs 'K'"),
    (lambda d: d.update(tracks=d["tracks"][..., :1]), "'tracks' must have shape [T, N, 2]"),
    (lambda d: d.update(visible=d["visible"][:, :3]), "'visible' must have shape"),
    (lambda d: d.update(K=np.eye(4)), "'K' must have shape [3, 3]"),
    (lambda d: d.update(K=-np.eye(3)), "fx, fy > 0"),
    (lambda d: d["tracks"].__setitem__((1, 2, 0), np.nan), "NaN"),
    (lambda d: d.update(visible=np.full(d["visible"].shape, 3)), "'visible' must be bool"),
    (lambda d: d.update(image_size=np.array([0, 5])), "'image_size' must be [H, W]"),
])
def test_malformed_files_fail_with_a_clear_error(tmp_path, change, message):
    tracks, vis = _arrays()
    data = {"tracks": tracks, "visible": vis, "K": guess_intrinsics((100, 100))}
    change(data)
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(TracksFormatError) as err:
        load_tracks(tmp_path / "bad.npz")
    assert message in str(err.value) and "bad.npz" in str(err.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tracks(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TracksFormatError, match="not a readable .npz"):
        load_tracks(tmp_path / "junk.npz")
