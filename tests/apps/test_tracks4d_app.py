"""lowrank-tracks4d: --help of every subcommand, one-line errors, and a short run of every command."""

import json

import numpy as np
import pytest

from lowrank_vision.apps.tracks4d import build_parser, main

COMMANDS = ["make-scenes", "train", "predict", "eval", "extract-tracks"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "--device" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["predict", "missing.npz"], ["extract-tracks", "missing.mp4"], ["predict", "--weights", "no.safetensors"]])
def test_missing_input_exits_2_with_one_line(argv, tmp_path, capsys):
    argv = [a if not a.startswith(("missing", "no.")) else str(tmp_path / a) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "o"), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lowrank-tracks4d {argv[0]}: error:") and "not found" in err[0]
    assert not (tmp_path / "o").exists()


def test_malformed_tracks_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", tracks=np.zeros((4, 3)), visible=np.ones((4, 3), bool), image_size=[10, 10])
    assert main(["predict", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o"), "--threads", "1"]) == 2
    assert "'tracks' must have shape [T, N, 2]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    assert main(["train", "--steps", "3", "--scenes", "4", "--out", str(out), "--threads", "1"]) == 0
    return out / "tracks4d.safetensors"


def test_make_scenes_then_predict_writes_every_output(tiny_weights, tmp_path, capsys):
    assert main(["make-scenes", "--count", "1", "--out", str(tmp_path / "scenes"), "--threads", "1"]) == 0
    scene = json.loads(capsys.readouterr().out)["files"][0]
    out = tmp_path / "pred"
    assert main(["predict", scene, "--weights", str(tiny_weights), "--finetune-steps", "2", "--out", str(out), "--threads", "1"]) == 0
    rec = np.load(out / "reconstruction.npz")
    T, N = rec["visible"].shape
    assert rec["points"].shape == (T, N, 3) and rec["R"].shape == (T, 3, 3) and rec["t"].shape == (T, 3)
    assert rec["focal"].shape == (T,) and rec["depth"].shape == (T, N) and rec["coefficients"].shape[0] == T
    cam = np.einsum("tij,tnj->tni", rec["R"], rec["points"]) + rec["t"][:, None]
    np.testing.assert_allclose(cam[..., 2], rec["depth"], rtol=1e-4, atol=1e-4)
    m = json.loads((out / "metrics.json").read_text())
    assert m["reprojection_px"] > 0 and "depth_abs_rel" in m["ground_truth"]
    assert (out / "preview.png").stat().st_size > 1000 and len(list((out / "ply").glob("frame_*.ply"))) == T
    assert (out / "ply" / "cameras.ply").read_bytes().startswith(b"ply")
    assert m["preview_video"] == str(out / "preview.mp4") and m["preview_video_writer"] in ("imageio-ffmpeg-h264", "opencv-mp4v")
    cv2 = pytest.importorskip("cv2")
    cap, frames = cv2.VideoCapture(str(out / "preview.mp4")), 0
    while cap.read()[0]:
        frames += 1
    assert frames == T


def test_eval_compares_three_methods(tiny_weights, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--scenes", "1", "--baseline-steps", "10", "--finetune-steps", "2", "--weights", str(tiny_weights),
                 "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "eval.json").read_text())["summary"]
    assert set(summary) == {"feedforward", "finetune", "baseline"} and summary["baseline"]["seconds"] > 0
    assert (out / "eval.png").is_file()


def test_extract_tracks_and_predict_on_frames(tiny_weights, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((200, 260)) * 255).astype(np.float32), (0, 0), 2.0)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(8):
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.warpAffine(base, np.float32([[1, 0, i], [0, 1, 0.5 * i]]), (260, 200)).astype(np.uint8))
    assert main(["extract-tracks", str(folder), "--stride", "1", "--out", str(tmp_path / "x"), "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["frames"] == 8 and res["points"] > 50 and (tmp_path / "x" / "tracks.png").is_file()
    assert main(["predict", str(tmp_path / "x" / "tracks.npz"), "--weights", str(tiny_weights), "--out", str(tmp_path / "p"),
                 "--threads", "1"]) == 0
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["focal_known"] is False
    assert main(["predict", str(folder), "--stride", "1", "--weights", str(tiny_weights), "--out", str(tmp_path / "v"), "--threads", "1"]) == 0
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["frames"] == 8 and m["source"].startswith("video") and (tmp_path / "v" / "preview.mp4").stat().st_size > 1000


def test_preview_falls_back_to_png_frames_without_a_video_writer(tmp_path, monkeypatch):
    import sys

    from lowrank_vision.plugins.tracks4d.metrics import write_preview_video

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    frames = [np.full((20, 30, 3), i * 40, np.uint8) for i in range(3)]
    res = write_preview_video(frames, tmp_path / "preview.mp4")
    assert res["writer"] == "png-frames" and not (tmp_path / "preview.mp4").exists()
    assert sorted(p.name for p in (tmp_path / "preview_frames").iterdir()) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]


def test_parser_lists_every_command():
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(COMMANDS)


def test_predict_with_the_per_scene_baseline_needs_no_weights(tmp_path):
    out = tmp_path / "ps"
    assert main(["predict", "--per-scene-steps", "10", "--weights", str(tmp_path / "absent.safetensors"), "--out", str(out),
                 "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "per-scene optimisation" and m["source"].startswith("generated test scene")


@pytest.mark.parametrize("blocked", ["imageio_ffmpeg", "cv2"])
def test_preview_video_with_either_writer_has_every_frame(blocked, tmp_path, monkeypatch):
    import sys

    from lowrank_vision.plugins.tracks4d.metrics import write_preview_video

    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setitem(sys.modules, blocked, None)
    frames = [np.full((21, 31, 3), i * 40, np.uint8) for i in range(4)]  # odd sizes are cropped to even ones
    res = write_preview_video(frames, tmp_path / "preview.mp4")
    assert res["writer"] == ("opencv-mp4v" if blocked == "imageio_ffmpeg" else "imageio-ffmpeg-h264")
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    cap, n = cv2.VideoCapture(str(tmp_path / "preview.mp4")), 0
    while cap.read()[0]:
        n += 1
    assert n == 4
