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
    # made by the CPU command or by the GPU run (bench/tracks4d_gpu.py writes the same files)
    assert meta["command"].startswith(("lowrank-tracks4d train --make-default-weights", "python3 bench/tracks4d_gpu.py"))
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


def test_float16_weights_round_trip_into_a_float32_model(tmp_path):
    from lowrank_vision.plugins.tracks4d.config import ModelConfig
    from lowrank_vision.plugins.tracks4d.model import TracksTo4DNet
    from lowrank_vision.plugins.tracks4d.weights import save_weights

    net = TracksTo4DNet(ModelConfig(width=16, depth=1, heads=2, num_basis=3, conv_kernel=3))
    full = save_weights(tmp_path / "full.safetensors", net, {"command": "x"})
    half = save_weights(tmp_path / "half.safetensors", net, {"command": "x"}, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, meta = load_weights(half)
    assert meta["command"] == "x" and next(loaded.parameters()).dtype == torch.float32
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), k
