"""End-to-end ``lowrank-sr``: train -> finetune --dsclora -> eval -> export, upscale with the shipped weights,
``--help`` of every subcommand, and bad input -> one line on stderr, exit 2."""

import json

import pytest
import torch

from lowrank_vision.apps.sr import build_parser, main
from lowrank_vision.core import count_parameters
from lowrank_vision.datasets.images import bicubic_downsample, bicubic_upsample, bundled_photos, mod_crop, read_image, write_image
from lowrank_vision.plugins.sr_dsclora.metrics import psnr_y
from lowrank_vision.plugins.sr_dsclora.model import build_span
from lowrank_vision.plugins.sr_dsclora.weights import default_weights, load_span

torch.set_num_threads(1)

TINY = ["--scale", "2", "--batch-size", "2", "--patch", "16", "--threads", "1"]
SUBCOMMANDS = ("train", "finetune", "eval", "upscale", "export")


def count_params(model):
    return count_parameters(model)[1]


def _small_folders(tmp_path):
    """A tiny HR folder for the quick run (the slow run uses the bundled photos)."""
    torch.manual_seed(0)
    name, hr = bundled_photos("train")[0]
    for i, (y, x) in enumerate([(0, 0), (200, 300)]):
        write_image(hr[:, y : y + 96, x : x + 96], tmp_path / "hr" / f"{name}_{i}.png")
    _, ev = bundled_photos("eval")[0]
    write_image(ev[:, 200:264, 200:264], tmp_path / "val" / "astronaut_crop.png")
    return ["--data", str(tmp_path / "hr"), "--eval-dir", str(tmp_path / "val")]


@pytest.mark.parametrize("bundled", [pytest.param(False), pytest.param(True, marks=pytest.mark.slow)])
def test_train_finetune_eval_export(tmp_path, bundled):
    data = [] if bundled else _small_folders(tmp_path)
    n_eval = 5 if bundled else 1
    assert main(["train", *TINY, *data, "--steps", "3", "--channels", "8", "--out", str(tmp_path / "train")]) == 0
    train = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert train["params"] == count_params(load_span(tmp_path / "train" / "span_x2.safetensors"))
    assert (tmp_path / "train" / "loss.png").stat().st_size > 0
    teacher = tmp_path / "train" / "span_x2.safetensors"

    assert main(["finetune", "--dsclora", *TINY, *data, "--steps", "3", "--teacher", str(teacher), "--out", str(tmp_path / "ft")]) == 0
    ft = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert ft["method"] == "DSCLoRA" and ft["params_student"] == ft["params_teacher"] == train["params"]
    assert 0 < ft["trainable_params"] < ft["params_teacher"]
    student = tmp_path / "ft" / "dsclora_x2.safetensors"

    eval_dir = [] if bundled else [str(tmp_path / "val")]
    assert main(["eval", *eval_dir, "--weights", str(student), "--scale", "2", "--out", str(tmp_path / "eval")]) == 0
    ev = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert len(ev["per_image"]) == n_eval and ev["cost"]["params"] == train["params"] and ev["cost"]["convs"] == 22
    assert list((tmp_path / "eval").glob("compare_*.png"))

    assert main(["export", "--weights", str(student), "--scale", "2", "--out", str(tmp_path / "export")]) == 0
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    state = torch.load(info["files"]["span_state_dict"], weights_only=True)
    plain = build_span(2, 8)  # the training-form SPAN class loads the exported layout strictly
    plain.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert (plain.eval()(x) - load_span(student)(x)).abs().max().item() < 1e-4
    if "onnx_max_abs_diff" in info:
        assert info["onnx_max_abs_diff"] < 1e-4


def test_every_subcommand_has_help(capsys):
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(SUBCOMMANDS)
    for command in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"lowrank-sr {command}" in out and "--device" in out and f"runs/sr/{command}" in out


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lowrank-sr {argv[0]}: error:"), captured.err
    assert match in lines[0] and "Traceback" not in captured.err
    return lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nope.safetensors")
    _one_line_error(capsys, ["eval", "--weights", missing, "--out", str(tmp_path / "e")], "checkpoint not found")
    _one_line_error(capsys, ["export", "--weights", missing, "--out", str(tmp_path / "x")], "checkpoint not found")
    _one_line_error(capsys, ["finetune", "--teacher", missing, "--out", str(tmp_path / "f")], "checkpoint not found")
    _one_line_error(capsys, ["train", "--init", missing, "--out", str(tmp_path / "t")], "checkpoint not found")
    _one_line_error(capsys, ["train", "--data", str(tmp_path / "no_dir"), "--out", str(tmp_path / "t")], "image folder not found")
    _one_line_error(capsys, ["eval", str(tmp_path / "no_dir"), "--out", str(tmp_path / "e")], "image folder not found")
    _one_line_error(capsys, ["upscale", str(tmp_path / "in.png"), "--out", str(tmp_path / "u")], "image file not found")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"garbage")
    _one_line_error(capsys, ["upscale", "--weights", str(bogus), "--out", str(tmp_path / "u")], "safetensors")
    _one_line_error(capsys, ["eval", "--kind", "span", "--scale", "3", "--out", str(tmp_path / "e")], "no shipped span weights")
    _one_line_error(capsys, ["train", "--patch", "4", "--out", str(tmp_path / "t")], "SRTrainConfig.lr_patch must be")
    for command in SUBCOMMANDS:
        _one_line_error(capsys, [command, "--device", "tpu", "--out", str(tmp_path / "d")], "--device")
    assert not [p for p in tmp_path.iterdir() if p.name != "bogus.safetensors"]  # nothing written
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--scale", "5"])
    assert exit_info.value.code == 2


def test_upscale_real_photo_with_shipped_weights_beats_bicubic(tmp_path):
    try:
        default_weights("dsclora", 4)
    except FileNotFoundError:
        pytest.fail("the package must ship dsclora_x4.safetensors")
    name, hr = bundled_photos("eval")[0]  # astronaut: never seen in training
    hr = mod_crop(hr[:, 128:384, 128:384], 4)  # the centre (face, suit), 256x256, to keep the test short
    write_image(bicubic_downsample(hr, 4), tmp_path / "lr.png")
    lr = read_image(tmp_path / "lr.png")
    assert main(["upscale", str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), "--tile", "32", "--out", str(tmp_path)]) == 0
    sr = read_image(tmp_path / "sr.png")
    assert sr.shape == hr.shape == (3, 256, 256)
    ours = psnr_y(sr[None], hr[None], border=4)
    bicubic = psnr_y(bicubic_upsample(lr[None], 4), hr[None], border=4)
    assert ours > bicubic + 0.1, (ours, bicubic)
    info = json.loads((tmp_path / "sr.json").read_text())
    assert info["sr_size"] == [256, 256] and info["tile"] == 32
