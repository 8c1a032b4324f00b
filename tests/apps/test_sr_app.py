"""End-to-end ``lowrank-sr``: train -> finetune --dsclora -> eval -> export, and upscale with the shipped weights."""

import json

import pytest
import torch

from lowrank_vision.apps.sr import main
from lowrank_vision.datasets.sr_data import bicubic_downsample, bicubic_upsample, bundled_photos, mod_crop, read_image, write_image
from lowrank_vision.datasets.sr_metrics import psnr_y
from lowrank_vision.plugins.sr_dsclora.io import default_weights, load_span
from lowrank_vision.plugins.sr_dsclora.span import build_span, count_params

torch.set_num_threads(1)

TINY = ["--scale", "2", "--batch-size", "2", "--patch", "16", "--cpu"]


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


def test_bad_arguments_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(["eval", "--weights", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)])
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--weights", str(bogus)])
    with pytest.raises(SystemExit):
        main(["train", "--scale", "5"])


def test_upscale_real_photo_with_shipped_weights_beats_bicubic(tmp_path):
    try:
        default_weights("dsclora", 4)
    except FileNotFoundError:
        pytest.fail("the package must ship dsclora_x4.safetensors")
    name, hr = bundled_photos("eval")[0]  # astronaut: never seen in training
    hr = mod_crop(hr, 4)
    write_image(bicubic_downsample(hr, 4), tmp_path / "lr.png")
    lr = read_image(tmp_path / "lr.png")
    assert main(["upscale", str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), "--tile", "48"]) == 0
    sr = read_image(tmp_path / "sr.png")
    assert sr.shape == hr.shape == (3, 512, 512)
    ours = psnr_y(sr[None], hr[None], border=4)
    bicubic = psnr_y(bicubic_upsample(lr[None], 4), hr[None], border=4)
    assert ours > bicubic + 0.1, (ours, bicubic)
