"""Measured strategy choice (issue 17 item 4): fake timers, recorded reasons, save/load round trip."""

from __future__ import annotations

import json

import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, load, save, tune_strategies
from lowrank_vision.core.tune import MODEL_CANDIDATES, strategy_choices

from .cases import randomize_adapter


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.Flatten(), nn.Linear(8 * 16 * 16, 4))


LAYERS = ("0[default]", "2[default]", "4[default]")
# per layer: seconds of each strategy; layer 2 is made "weight"-fast, the others "activation"-fast
FAKE = {"0[default]": {"weight": 3.0, "activation": 1.0}, "2[default]": {"weight": 0.5, "activation": 2.0},
        "4[default]": {"weight": 9.0, "activation": 4.0}}


def fake_timer(name: str, candidate: str) -> float:
    return FAKE[name][candidate] if name else {"per_layer": 2.0, "cost_model": 3.0, "weight": 1.0, "activation": 5.0}[candidate]


def tuned(whole_model: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = small_net()
    apply(model, "lora", rank=2)
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    tune_strategies(model, x, timer=fake_timer, whole_model=whole_model)
    return model, x


def test_measured_choice_is_the_fastest_candidate_and_records_why():
    model, x = tuned()
    choices = strategy_choices(model)
    assert set(choices) == set(LAYERS)
    for name, record in choices.items():
        assert record["strategy"] == min(FAKE[name], key=FAKE[name].get)
        assert adapter_layers(model)[name].strategy == record["strategy"]
        assert record["source"] == "measured" and record["times_s"] == FAKE[name]
        assert record["cost_model"] in ("weight", "activation") and record["device"] == "cpu"
        assert record["cost_model_wrong"] == (record["strategy"] != record["cost_model"])
    assert choices["0[default]"]["input_shape"] == [2, 3, 8, 8]
    json.dumps(choices)  # JSON-ready


def test_whole_model_timing_overrules_per_layer_choice():
    model, _ = tuned(whole_model=True)
    choices = strategy_choices(model)
    assert {r["strategy"] for r in choices.values()} == {"weight"}  # the fake whole-step clock favours all-weight
    assert all(r["model_choice"] == "weight" and set(r["model_times_s"]) == set(MODEL_CANDIDATES) for r in choices.values())
    assert choices["2[default]"]["source"] == "measured"  # already weight per layer
    assert choices["0[default]"]["source"] == choices["4[default]"]["source"] == "model"


def test_choices_round_trip_through_save_and_load(tmp_path):
    model, x = tuned()
    expected = strategy_choices(model)
    save(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert {f"{n}[default]": r["strategy_choice"] for n, r in config["layers"].items()} == expected
    torch.manual_seed(0)
    fresh = small_net()
    load(fresh, tmp_path / "adapter")
    assert strategy_choices(fresh) == expected
    assert {n: layer.strategy for n, layer in adapter_layers(fresh).items()} == {n: r["strategy"] for n, r in expected.items()}
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)


def test_choice_measured_on_another_device_is_kept_but_not_applied(tmp_path):
    model, _ = tuned()
    for layer in adapter_layers(model).values():
        layer.strategy_choice = {**layer.strategy_choice, "device": "cuda"}
    save(model, tmp_path / "adapter")
    torch.manual_seed(0)
    fresh = small_net()
    load(fresh, tmp_path / "adapter")
    assert all(layer.strategy == "auto" and layer.strategy_choice["device"] == "cuda" for layer in adapter_layers(fresh).values())


def test_real_clock_measured_path_keeps_outputs_and_gradients():
    """The measured choice (real clock, per layer and whole model) changes neither outputs nor gradients."""
    torch.manual_seed(0)
    model = small_net()
    apply(model, "lora", rank=2)
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    tune_strategies(model, lambda m: m(x).square().sum(), repeats=1, whole_model=True)
    assert all(p.grad is None for p in model.parameters()), "gradients left by timing"
    choices = strategy_choices(model)
    assert set(choices) == set(LAYERS)
    assert all(r["source"] in ("measured", "cached", "model") and r["strategy"] in ("weight", "activation") for r in choices.values())
    out2 = model(x)
    out2.square().sum().backward()
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5)


def test_dropout_layers_are_recorded_as_forced_activation():
    torch.manual_seed(0)
    model = small_net()
    apply(model, "lora", rank=2, dropout=0.1)
    tune_strategies(model, torch.randn(2, 3, 8, 8), timer=fake_timer)
    assert {(r["strategy"], r["source"]) for r in strategy_choices(model).values()} == {("activation", "dropout")}


def test_interleaved_medians_rotate_the_order_and_take_medians():
    from lowrank_vision.core.tune import interleaved_medians

    order, now = [], [0.0]
    cost = {"a": 1.0, "b": 2.0, "c": 3.0}

    def clock():
        return now[0]

    def runner(label):
        def run():
            order.append(label)
            now[0] += cost[label] * (10.0 if len(order) == 9 else 1.0)  # one slow spell, on the 9th run overall
        return run

    prepared = []
    candidates = {k: (lambda k=k: prepared.append(k), runner(k)) for k in cost}
    medians = interleaved_medians(candidates, torch.device("cpu"), repeats=3, clock=clock)
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]  # two warm-ups each, not timed
    assert order[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # the order rotates every round
    assert medians == {"a": 1.0, "b": 2.0, "c": 3.0}  # the spell (c, first timed round) is out-voted by its other rounds
    assert prepared.count("a") == 4  # once before the warm-ups, once per round
