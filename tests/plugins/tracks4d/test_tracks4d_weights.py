"""Shipped weights: they load, their card's numbers come from the JSON its command wrote, bad files are refused; the demo runs."""

import json

import pytest
import torch

from lowrank_vision.datasets.tracks import SceneConfig, make_scene
from lowrank_vision.plugins.tracks4d.recipes import prepare
from lowrank_vision.plugins.tracks4d.weights import DEFAULT_WEIGHTS, WeightsError, load_weights

torch.set_num_threads(1)


def test_shipped_weights_load_and_run():
    model, meta = load_weights()
    assert meta["command"].startswith("lowrank-tracks4d train --make-default-weights")
    b = prepare([make_scene(300000, SceneConfig(frames=10, points=30)).to_trackset()])
    with torch.no_grad():
        out = model(b["tracks"], b["visible"], b["focal_known"])
    assert out["points"].shape == (1, 10, 30, 3) and torch.isfinite(out["points"]).all()


def test_card_numbers_are_the_recorded_ones():
    record = json.loads((DEFAULT_WEIGHTS.parent / "tracks4d_small.json").read_text())
    card = (DEFAULT_WEIGHTS.parent / "README.md").read_text()
    chosen = min(record["selection"]["candidates"], key=lambda c: c["val"]["depth_abs_rel"])
    assert chosen["lr"] == record["selection"]["chosen_lr"] and len(record["selection"]["candidates"]) >= 2
    assert f"{record['test_feedforward']['depth_abs_rel']:.4g}" in card
    seeds = record["data"]
    assert max(seeds["val_seeds"]) < min(seeds["test_seeds"]) and seeds["train_seeds"][1] < min(seeds["val_seeds"])


def test_foreign_or_missing_weights_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a tracks4d weights file"):
        load_weights(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "none.safetensors")


@pytest.mark.slow
def test_demo_returns_numbers_figures_and_summary(tmp_path):
    from lowrank_vision.plugins.tracks4d import PLUGIN

    res = PLUGIN.demo(tmp_path, "cpu")
    assert res["speedup"] > 5 and res["baseline"]["reprojection_px"] < 2.0
    assert all((tmp_path / "predict" / "preview.png").is_file() for f in res["figures"]) and "per-scene" in res["summary"]
