"""lowrank-detect: --help of every subcommand, bad input -> one line + exit 2, and a short run of every command."""

import json
import os

import pytest

from lowrank_vision.apps import detect

os.environ.setdefault("YOLO_OFFLINE", "1")
COMMANDS = ("make-data", "train-teacher", "distill", "val", "predict", "export", "bench", "make-weights")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        detect.main([command, "--help"])
    assert exit_.value.code == 0
    assert "--out" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["predict", "/no/such/image.tif"], "image /no/such/image.tif does not exist"),
    (["val", "--weights", "/no/such.safetensors"], "weights /no/such.safetensors do not exist"),
    (["distill", "--teacher", "/no/such.pt"], "checkpoint /no/such.pt does not exist"),
    (["train-teacher", "--model", "nope"], "--model: expected one of"),
    (["val", "--data", "/no/data.yaml", "--weights", "/no/w.pt"], "does not exist"),
    (["bench", "--weights", "/no/a.safetensors"], "weights /no/a.safetensors do not exist"),
    (["make-data", "--size", "100"], "SyntheticConfig.size must be a multiple of 32"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    assert detect.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"lowrank-detect {argv[0]}: error:") and needle in err


def _run(argv, capsys):
    assert detect.main(argv) == 0
    out = capsys.readouterr().out  # ultralytics logs to stdout too; the result JSON comes last
    start = 0 if out.startswith("{") else out.rindex("\n{\n") + 1
    return json.loads(out[start:])


def test_every_command_short(tmp_path, capsys):
    data = _run(["make-data", "--out", str(tmp_path / "data"), "--train", "4", "--val", "2", "--size", "64"], capsys)["data_yaml"]
    tiny = ["--data", data, "--epochs", "1", "--imgsz", "64", "--batch", "2"]
    teacher = _run(["train-teacher", "--out", str(tmp_path / "t"), *tiny], capsys)
    assert teacher["test"]["split"] == "test" and teacher["checkpoint"].endswith(".pt")
    student = _run(["distill", "--out", str(tmp_path / "s"), "--teacher", teacher["checkpoint"], "--rank-ratio", "0.5", *tiny], capsys)
    assert student["distilled"] and student["rank_ratio"] == 0.5
    ckpt = student["checkpoint"]
    scores = _run(["val", "--out", str(tmp_path / "v"), "--weights", ckpt, "--data", data, "--imgsz", "64", "--by-condition"], capsys)
    assert 0 <= scores["mAP50"] <= 1 and (tmp_path / "v/result.json").is_file()
    by_condition = scores["by_condition"]  # each test image is "clear" or in the subset of every condition it has
    assert sum(c["images"] for c in by_condition.values()) >= 2 and all(0 <= c["mAP50"] <= 1 for c in by_condition.values())
    image = str(tmp_path / "data/images/test/test_00000.tif")
    shown = _run(["predict", image, "--out", str(tmp_path / "p"), "--weights", ckpt, "--imgsz", "64", "--conf", "0.0"], capsys)
    png = tmp_path / "p/test_00000.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and len(shown["images"]) == 1
    onnx = _run(["export", "onnx", "--out", str(tmp_path / "e"), "--weights", ckpt, "--imgsz", "64"], capsys)
    assert onnx["max_abs_diff"] < 1e-3 * max(1.0, onnx["max_abs_value"])
    speed = _run(["bench", "--out", str(tmp_path / "b"), "--weights", teacher["checkpoint"], ckpt, "--imgsz", "64", "--repeats", "1"], capsys)
    t, s = speed["models"]
    assert s["parameters"] < t["parameters"] and s["scan_gflops"] < t["scan_gflops"] and s["latency_ms"] > 0


def test_predict_rejects_a_three_channel_tiff(tmp_path, capsys):
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    from lowrank_vision.plugins.multispectral_det import model_yaml
    from lowrank_vision.plugins.multispectral_det.model import student_from_teacher
    from lowrank_vision.plugins.multispectral_det.weights import save_weights
    from ultralytics.nn.tasks import DetectionModel

    w = save_weights(student_from_teacher(DetectionModel(model_yaml("dlrmamba-t"), ch=4, nc=3, verbose=False), 0.5),
                     tmp_path / "w.safetensors")
    assert detect.main(["predict", str(tmp_path / "rgb.tif"), "--weights", str(w), "--out", str(tmp_path / "p")]) == 2
    assert "has 3 channels, the model expects 4" in capsys.readouterr().err


@pytest.mark.slow
def test_commands_run_on_their_defaults(tmp_path, capsys):
    from lowrank_vision.plugins.multispectral_det.commands import demo

    result = demo(tmp_path, "cpu")
    assert 0 <= result["student_test_mAP50"] <= 1 and result["student_params"] < result["teacher_params"]
    assert all((tmp_path / f["path"]).is_file() or os.path.isfile(f["path"]) for f in result["figures"])
    assert detect.main(["predict", "--out", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 4
