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
