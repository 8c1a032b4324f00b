"""lowrank-diffusion: --help of every subcommand; missing inputs exit 2 with one line and write nothing."""

from __future__ import annotations

import pytest

from lowrank_vision.apps.diffusion import main

SUBCOMMANDS = ["pretrain-base", "train", "sample", "export", "compare"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: lowrank-diffusion " + command in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["export", "{tmp}/missing"], "export: error: adapter: "),
    (["sample", "a red circle", "--base", "{tmp}/missing"], "sample: error: --base: "),
    (["train", "--base", "{tmp}/missing"], "train: error: --base: "),
    (["sample", "a red circle", "--device", "gpu0"], "sample: error: --device: "),
])
def test_missing_input_exits_2_one_line(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "out")] * (argv[0] != "export")
    if argv[0] == "export":
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_train_export_sample_short(tmp_path, capsys):
    """Short version of train -> export --format diffusers -> sample --adapter on a small base built from configs."""
    pytest.importorskip("diffusers")
    import json
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lowrank_vision.plugins.diffusion_nera.config import PipelineConfig
    from lowrank_vision.plugins.diffusion_nera.model import build_pipeline

    base = tmp_path / "base"
    build_pipeline(PipelineConfig(text_layers=1)).save_pretrained(str(base))
    common = ["--base", str(base), "--threads", "2"]
    assert main(["train", "--adapter", "lora", "--steps", "2", "--images", "8", "--eval", "0", "--out", str(tmp_path / "run"), *common]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["trainable_params"] > 0 and (tmp_path / "run" / "samples.png").is_file()
    assert main(["export", str(tmp_path / "run" / "adapter"), "--out", str(tmp_path / "lora"), "--base", str(base)]) == 0
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    capsys.readouterr()
    assert main(["sample", "a checkered red circle on the left", "--adapter", str(tmp_path / "lora"), "--steps", "2",
                 "--out", str(tmp_path / "s"), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == ["base", "adapter (diffusers)"] and (tmp_path / "s" / "samples.png").is_file()
