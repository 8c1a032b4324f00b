"""Runtime comparison of two SR networks: interleaved rounds (alternating order) and the per-round ratio's spread."""

import pytest
import torch

from lowrank_vision.plugins.sr_dsclora import recipes
from lowrank_vision.plugins.sr_dsclora.model import build_span, reparameterize


def test_runtime_ratio_is_per_round():
    times = {"a": [2.0, 3.0, 2.2], "b": [2.0, 2.0, 2.0]}
    assert recipes.runtime_ratio(times, "a", "b") == {"median": pytest.approx(1.1), "min": 1.0, "max": 1.5, "rounds": 3}


def test_interleaved_runtimes_alternate_the_order(monkeypatch):
    calls = []
    monkeypatch.setattr(recipes, "measure_runtime", lambda model, size, repeats, warmup: calls.append(model) or float(len(calls)))
    times = recipes.interleaved_runtimes({"a": "A", "b": "B"}, (8, 8), rounds=3, repeats=1)
    assert calls == ["A", "B", "B", "A", "A", "B"]
    assert times == {"a": [1.0, 4.0, 5.0], "b": [2.0, 3.0, 6.0]}


def test_a_real_span_is_timed_in_inference_mode():
    torch.manual_seed(0)
    span = reparameterize(build_span(4, channels=8).eval())
    modes = []
    span.register_forward_hook(lambda module, args, out: modes.append(torch.is_inference_mode_enabled()))
    ms = recipes.interleaved_runtimes({"x": span, "y": span}, (8, 8), rounds=2, repeats=2)
    assert all(len(v) == 2 and all(t > 0 for t in v) for v in ms.values())
    assert len(modes) == 2 * 2 * (1 + 2) and all(modes)  # rounds x models x (warm-up + repeats), no autograd in the time
