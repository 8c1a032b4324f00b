"""Lucas-Kanade tracker: a synthetic texture moved by known sub-pixel shifts is tracked to within 0.1 px on average."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from lowrank_vision.datasets.tracks.lk import LKConfig, extract_tracks, track_frames  # noqa: E402


def _moving_texture(frames=12, step=(1.3, -0.7)):
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((300, 400)) * 255).astype(np.float32), (0, 0), 2.0)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    shifts = np.arange(frames)[:, None] * np.array(step)
    imgs = [cv2.warpAffine(base, np.float32([[1, 0, dx], [0, 1, dy]]), (400, 300), flags=cv2.INTER_CUBIC)
            .astype(np.uint8)[40:260, 40:360] for dx, dy in shifts]
    return imgs, shifts


def test_recovers_a_known_translation():
    imgs, shifts = _moving_texture()
    tracks, vis = track_frames(imgs, LKConfig(min_track_length=12, max_points=200))
    assert tracks.shape[1] >= 150 and vis.all()
    err = np.linalg.norm((tracks - tracks[:1]) - shifts[:, None], axis=-1)
    assert err.mean() < 0.1, err.mean()
    assert np.percentile(err, 95) < 0.3


def test_forward_backward_check_drops_tracks_through_a_cut():
    imgs, _ = _moving_texture(frames=8)
    rng = np.random.default_rng(1)
    imgs[4] = (rng.random(imgs[4].shape) * 255).astype(np.uint8)  # a cut to unrelated noise
    tracks, vis = track_frames(imgs, LKConfig(min_track_length=2, reseed_every=0))
    survived = vis[:4].all(0)
    assert survived.sum() > 50
    assert vis[5:, survived].mean() < 0.05


def test_video_file_to_trackset(tmp_path):
    imgs, _ = _moving_texture(frames=10)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, im in enumerate(imgs):
        cv2.imwrite(str(folder / f"{i:03d}.png"), im)
    ts = extract_tracks(folder, LKConfig(min_track_length=5), frames=None, stride=1, max_side=None)
    assert ts.num_frames == 10 and ts.num_points > 50 and not ts.focal_known
    with pytest.raises(FileNotFoundError):
        extract_tracks(tmp_path / "nope.mp4")
