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
SUBCOMMANDS = ("train", "finetune", "eval", "upscale", "export", "make-data")


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
    graph = train["trainer"]["cuda_graph"]  # requested by the SR defaults; a CPU run says why it stayed eager
    assert graph["requested"] is True and graph["captured"] is False and graph["fallback_reason"].startswith("device is cpu")
    assert train["trainer"]["optimizer"]["impl"] in ("foreach", "plain") and train["trainer"]["strategies"] == {"mode": "off"}
    teacher = tmp_path / "train" / "span_x2.safetensors"

    assert main(["finetune", "--dsclora", *TINY, *data, "--steps", "3", "--teacher", str(teacher), "--out", str(tmp_path / "ft")]) == 0
    ft = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert ft["method"] == "DSCLoRA" and ft["params_student"] == ft["params_teacher"] == train["params"]
    assert 0 < ft["trainable_params"] < ft["params_teacher"]
    assert ft["trainer"]["cuda_graph"]["eager_steps"] == 3 and ft["trainer"]["cuda_graph"]["graph_steps"] == 0
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


def _upscale_file(tmp_path, capsys, name, save):
    """Write an input with ``save(path)``, upscale it x2 in 8x8 tiles with the shipped weights, return (input, output) ImageFiles."""
    from lowrank_vision.datasets.images import read_image_file

    src, dst = tmp_path / f"{name}.png", tmp_path / f"{name}_x2.png"
    save(src)
    assert main(["upscale", str(src), str(dst), "--scale", "2", "--tile", "8", "--out", str(tmp_path)]) == 0
    assert "tiles: 100%" in capsys.readouterr().err  # the progress bar over the 3 x 3 tiles
    return read_image_file(src), read_image_file(dst)


def _photo_crop(size=(20, 18)):
    _, hr = bundled_photos("eval")[0]
    return hr[:, 200 : 200 + size[0], 220 : 220 + size[1]]


def test_upscale_keeps_grey_alpha_and_16_bits(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from lowrank_vision.datasets.images.readers import _png_16bit

    crop = _photo_crop()
    grey8 = (crop.mean(0) * 255).round().byte().numpy()
    ramp = np.linspace(0, 255, 18, dtype=np.float64)[None, :].repeat(20, 0).round().astype(np.uint8)  # alpha: a left-right ramp
    rgb8 = (crop.permute(1, 2, 0) * 255).round().byte().numpy()
    rgb16 = (crop.permute(1, 2, 0).double() * 65535).round().numpy().astype(np.uint16)
    cases = {
        "grey": (lambda p: Image.fromarray(grey8).save(p), "L", dict(grey=True, alpha=False, bits=8)),
        "rgba": (lambda p: Image.fromarray(np.dstack([rgb8, ramp])).save(p), "RGBA", dict(grey=False, alpha=True, bits=8)),
        "grey16": (lambda p: Image.fromarray(grey8.astype(np.uint16) * 257 + 3).save(p), "I;16", dict(grey=True, alpha=False, bits=16)),
        "rgb16": (lambda p: p.write_bytes(_png_16bit(rgb16)), None, dict(grey=False, alpha=False, bits=16)),
        "rgba16": (lambda p: p.write_bytes(_png_16bit(np.dstack([rgb16, ramp.astype(np.uint16) * 257]))), None,
                   dict(grey=False, alpha=True, bits=16)),
    }
    for name, (save, pil_mode, mode) in cases.items():
        src, out = _upscale_file(tmp_path, capsys, name, save)
        assert (out.grey, out.alpha is not None, out.bits) == (src.grey, src.alpha is not None, src.bits) == tuple(mode.values()), name
        assert out.rgb.shape == (3, 40, 36)
        if pil_mode is not None:
            assert Image.open(tmp_path / f"{name}_x2.png").mode == pil_mode
        if out.grey:
            assert torch.equal(out.rgb[0], out.rgb[1])
        if out.alpha is not None:  # the ramp, upscaled: still a left-right ramp from ~0 to ~1
            assert out.alpha.shape == (1, 40, 36) and out.alpha[0, :, 0].max() < 0.05 and out.alpha[0, :, -1].min() > 0.95
            assert (out.alpha[0, :, 1:] >= out.alpha[0, :, :-1] - 1e-6).all()
        # the picture itself is the super-resolved input: close to bicubic (the network's residual is small)
        bic = bicubic_upsample(src.rgb[None], 2)[0]
        assert (out.rgb - bic).abs().mean() < 0.03, name
        info = json.loads((tmp_path / f"{name}_x2.json").read_text())
        assert info["mode"] == mode
    # 16-bit output carries more than 8 bits: values off the 257-multiples grid
    out16 = read_image(tmp_path / "rgb16_x2.png")
    assert ((out16 * 65535).round() % 257 != 0).float().mean() > 0.5


def test_unreadable_images_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    write_image(torch.rand(3, 32, 32), tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    for name in ("garbage.png", "truncated.png"):
        line = _one_line_error(capsys, ["upscale", str(tmp_path / name), str(tmp_path / "o.png"), "--out", str(tmp_path / "u")],
                               "cannot read image")
        assert name in line
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "u").exists()
