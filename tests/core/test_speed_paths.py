"""Execution strategies: auto choice, measured tuning, torch.compile without graph breaks, autocast."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, tune_strategies
from lowrank_vision.core.adapters.strategy import choose_strategy, strategy_costs
from lowrank_vision.core.functional.dora import lowrank_row_norm
from lowrank_vision.core.functional.layout import LayerGeometry

from .cases import randomize_adapter


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.Flatten(), nn.Linear(8 * 16 * 16, 4))


def test_auto_strategy_cost_model():
    tokens = LayerGeometry("linear", 768, 768)
    assert choose_strategy(tokens, (16, 197, 768), rank=8) == "activation"  # many tokens: thin path is cheap
    costs = strategy_costs(tokens, (16, 197, 768), 8)
    assert costs["activation"] < costs["weight"]
    conv = LayerGeometry("conv", 32, 32, (3, 3, 3))
    assert choose_strategy(conv, (4, 32, 64, 64, 64), rank=8) == "weight"  # thin r-channel 3-D maps are bandwidth-bound
    assert choose_strategy(conv, (4, 32, 64, 64, 64), rank=8, has_thin_path=False) == "weight"
    assert choose_strategy(LayerGeometry("conv", 8, 4, (3, 3), groups=2), (2, 8, 9, 9), rank=2) == "weight"


def test_lowrank_dora_norm_matches_dense():
    torch.manual_seed(0)
    w, a, b = torch.randn(12, 30), torch.randn(4, 30), torch.randn(12, 4)
    dense = (w + 0.7 * b @ a).norm(dim=1)
    torch.testing.assert_close(lowrank_row_norm(w, a, b, 0.7), dense, rtol=1e-5, atol=1e-5)


def test_tuned_strategies_are_set_and_outputs_unchanged():
    torch.manual_seed(0)
    model = small_net()
    apply(model, "lora", rank=2)
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    before = model(x).detach()
    chosen = tune_strategies(model, x, repeats=1)
    assert set(chosen) == {"0[default]", "2[default]", "4[default]"} and set(chosen.values()) <= {"weight", "activation"}
    assert all(adapter_layers(model)[n].strategy == s for n, s in chosen.items())
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "cp_lora", "dora", "nola", "nera"])
def test_compiles_without_graph_breaks(method):
    """``fullgraph=True`` fails on any graph break; aot_eager also traces the backward (incl. the fused kernels)."""
    torch.manual_seed(0)
    model = small_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply(model, method, rank=2)
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x).detach()
    for strategy in ("weight", "activation"):
        for layer in adapter_layers(model).values():
            layer.strategy = strategy if method != "nera" else layer.strategy
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        out.sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs_both_strategies():
    torch.manual_seed(0)
    model = small_net()
    apply(model, "dora", rank=2)
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    reference = model(x).detach()
    for strategy in ("weight", "activation"):
        for layer in adapter_layers(model).values():
            layer.strategy = strategy
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        assert torch.allclose(out.float(), reference, rtol=0.05, atol=0.05)
        assert all(p.dtype == torch.float32 for layer in adapter_layers(model).values() for _, p in layer.adapter_parameters())


@pytest.mark.parametrize("kernel", [(), (3,), (3, 2), (3, 1, 2)])
def test_cp_as_lora_factors_equals_cp_einsum(kernel):
    from lowrank_vision.core.functional.cp import cp_as_lora_factors, cp_delta, init_cp_factors
    from lowrank_vision.core.functional.lora import lora_delta

    geometry = LayerGeometry("conv" if kernel else "linear", 5, 4, kernel)
    factors = init_cp_factors(geometry, 3)
    factors = [f + torch.randn_like(f) for f in factors]
    lora_a, lora_b = cp_as_lora_factors(factors)
    assert lora_a.shape == (3, geometry.fan_in) and lora_b.shape == (5, 3)
    torch.testing.assert_close(lora_delta(lora_a, lora_b, geometry, 0.5), cp_delta(factors, geometry, 0.5), rtol=1e-5, atol=1e-5)


def test_tuning_leaves_no_gradients_behind():
    """Timing runs backward passes; trainable base parameters (here the biases) must not keep their gradients."""
    torch.manual_seed(0)
    model = small_net()
    apply(model, "lora", rank=2, trainable=("*.bias",))
    model[0].root.bias.grad = torch.ones_like(model[0].root.bias)  # a gradient the caller already had
    tune_strategies(model, torch.randn(2, 3, 8, 8), repeats=1)
    assert torch.equal(model[0].root.bias.grad, torch.ones_like(model[0].root.bias))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.base_layer.bias"), "gradients left by timing"
