"""Every console script of the project: it imports, ``--help`` of every subcommand works, and a
missing input file exits 2 with one line on stderr (the shared convention of ``apps/_cli.py``)."""

from __future__ import annotations

import argparse
import importlib
from importlib.metadata import entry_points

import pytest

APPS = sorted((ep.name, ep.value.split(":")[0]) for ep in entry_points(group="console_scripts")
              if ep.value.startswith("lowrank_vision.apps."))


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def test_every_app_is_registered():
    names = {name for name, _ in APPS}
    assert {"lowrank", "lowrank-seg", "lowrank-hsi", "lowrank-sr"} <= names, names


@pytest.mark.parametrize("script,module", APPS)
def test_help_of_every_subcommand(script, module, capsys):
    app = importlib.import_module(module)
    parser = app.build_parser()
    assert parser.prog == script
    subs = _subcommands(parser)
    assert subs, f"{script} has no subcommands"
    for sub in [None, *subs]:
        with pytest.raises(SystemExit) as exc:
            app.main(["--help"] if sub is None else [sub, "--help"])
        assert exc.value.code == 0, (script, sub)
        out = capsys.readouterr().out
        assert "usage:" in out and (sub is None or sub in out)
        if sub is not None and "--device" in out:  # one device flag everywhere, never --gpu / --cpu
            assert "--gpu" not in out and "--cpu " not in out


MISSING = "does-not-exist"
MISSING_INPUT = {  # one subcommand per app whose input file is missing
    "lowrank-seg": ["predict", f"{MISSING}.nii.gz"],
    "lowrank-hsi": ["eval", f"{MISSING}.mat"],
    "lowrank-sr": ["eval", "--weights", f"{MISSING}.safetensors"],
    "lowrank-nerf": ["eval", "--checkpoint", f"{MISSING}.safetensors"],
    "lowrank-tracks4d": ["predict", f"{MISSING}.npz"],
    "lowrank-detect": ["val", "--weights", f"{MISSING}.pt"],
    "lowrank-diffusion": ["sample", "a red circle", "--adapter", f"{MISSING}"],
}


@pytest.mark.parametrize("script,module", [a for a in APPS if a[0] != "lowrank"])
def test_missing_input_file_exits_2_with_one_line(script, module, tmp_path, monkeypatch, capsys):
    assert script in MISSING_INPUT, f"add a missing-input case for {script}"
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = importlib.import_module(module).main([*MISSING_INPUT[script], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, (script, code, err)
    assert len(err.splitlines()) == 1 and MISSING in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir()), "nothing is written for a missing input"


@pytest.mark.parametrize("script,module", APPS)
def test_app_module_is_thin(script, module):
    path = importlib.import_module(module).__file__
    with open(path, encoding="utf-8") as fh:
        lines = sum(1 for _ in fh)
    assert lines <= 80, f"{path}: {lines} lines; apps build a config and call the plugin's commands.py"
