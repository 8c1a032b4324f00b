"""The umbrella app: plugin listing, the demo (short version), and lazy host-tool imports."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest

from lowrank_vision.apps import demo as demo_module
from lowrank_vision.apps.lowrank import main


def test_core_import_needs_torch_only():
    code = (
        "import sys, lowrank_vision.core, lowrank_vision.plugins\n"
        "heavy = [m for m in ('monai', 'timm', 'diffusers', 'nerfstudio', 'ultralytics', 'rasterio', 'open3d', 'peft', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugins_and_methods_commands(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("lora", "conv_lora", "cp_lora", "dora", "conv_dora", "cp_dora", "nola", "nera", "lora_c (= lora)"):
        assert name in out
    assert main(["plugins"]) == 0


def test_demo_short(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_METHODS", ["lora", "cp_dora", "nera"])
    summary = demo_module.run_demo(tmp_path, plugins=False)
    rows = summary["adapters"]["MONAI UNet 3D"]
    assert [r["method"] for r in rows] == ["lora", "cp_dora", "nera"]
    assert rows[0]["merge_rel_error"] < 1e-5 and rows[2]["merge_rel_error"] is None
    # CP-DoRA on the UNet: far fewer trainable parameters than LoRA at the same rank
    assert rows[1]["trainable_params"] < 0.2 * rows[0]["trainable_params"]
    assert (tmp_path / "trainable_params.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "demo.json").read_text())["adapters"]


@pytest.mark.slow
def test_demo_full(tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0


def test_demo_page_links_figures_relative_to_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "outputs" / "demo"
    summary = {"environment": {"command": "lowrank demo", "device": "cpu", "machine": "x", "torch": "t", "seconds": 1.0},
               "worst_merge_error": 0.0, "adapters": {"m": []},
               "plugins": {"p": {"app": "lowrank-p", "summary": "ran", "figures": [
                   {"path": "outputs/demo/p/a.png", "caption": "cwd-relative"},
                   {"path": str(out / "p" / "b.png"), "caption": "absolute"}]}}}
    page = demo_module.render_page(summary, Path("outputs/demo"))
    assert "](p/a.png)" in page and "](p/b.png)" in page
