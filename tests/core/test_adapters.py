"""Every adapter family x every layer type: the properties the foundation issue lists."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lowrank_vision.core import apply, load, merge, remove, save, unmerge
from lowrank_vision.core.functional.layout import layer_forward

from .cases import CASES, LAYERS, METHODS, NONLINEAR, RANK, UNSUPPORTED_CASES, randomize_adapter

STRATEGIES = ["weight", "activation"]


def build(method: str, layer_name: str, strategy: str = "auto", seed: int = 0):
    torch.manual_seed(seed)
    make_layer, make_input, _ = LAYERS[layer_name]
    model = nn.Sequential(make_layer())
    x = make_input()
    base_out = model(x).detach()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    options = METHODS[method][0]
    if method in NONLINEAR:
        strategy = "activation"  # its one execution path; "weight" is refused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = apply(model, method, rank=RANK, alpha=2 * RANK, strategy=strategy, **options)
    return model, x, base_out, base_state, report


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method,layer_name", CASES)
def test_zero_init_is_identity(method, layer_name, strategy):
    model, x, base_out, _, _ = build(method, layer_name, strategy)
    torch.testing.assert_close(model(x), base_out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,layer_name", CASES)
def test_strategies_merge_and_delta_agree(method, layer_name):
    outputs = {}
    for strategy in STRATEGIES:
        model, x, base_out, _, _ = build(method, layer_name, strategy)
        randomize_adapter(model)
        outputs[strategy] = model(x).detach()
        assert (outputs[strategy] - base_out).abs().max() > 1e-3, "randomised adapter must change the output"
        if method in NONLINEAR:
            continue
        adapter = model[0]
        # delta_weight() is exactly the change in outputs: op(x, W + dW) - op(x, W) == op(x, dW)
        expected_change = layer_forward(adapter.root, x, adapter.delta_weight().detach(), None)
        torch.testing.assert_close(outputs[strategy] - base_out, expected_change, rtol=1e-4, atol=1e-5)
        merge(model)
        torch.testing.assert_close(model(x), outputs[strategy], rtol=1e-5, atol=1e-5)
        unmerge(model)
        torch.testing.assert_close(model(x), outputs[strategy], rtol=0, atol=0)
    torch.testing.assert_close(outputs["weight"], outputs["activation"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,layer_name", CASES)
def test_trainable_parameter_count_matches_formula(method, layer_name):
    model, _, _, _, report = build(method, layer_name)
    out_channels, in_channels, kernel = LAYERS[layer_name][2]
    expected = METHODS[method][1](out_channels, in_channels, kernel, RANK)
    assert report.trainable_params == expected
    assert report.adapter_params == expected
    assert report.total_params == expected + sum(p.numel() for p in LAYERS[layer_name][0]().parameters())


@pytest.mark.parametrize("method,layer_name", CASES)
def test_only_adapter_parameters_get_gradients(method, layer_name):
    model, x, _, _, _ = build(method, layer_name)
    randomize_adapter(model)
    model(x).square().mean().backward()
    adapter = model[0]
    own = {id(p) for _, p in adapter.adapter_parameters()}
    for name, p in model.named_parameters():
        if id(p) in own:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


@pytest.mark.parametrize("method,layer_name", CASES)
def test_save_load_round_trip_is_bit_exact(method, layer_name, tmp_path):
    model, x, _, base_state, _ = build(method, layer_name)
    randomize_adapter(model)
    expected = model(x).detach()
    save(model, tmp_path / "adapter")

    torch.manual_seed(123)  # a different init must be fully overwritten by load
    fresh = nn.Sequential(LAYERS[layer_name][0]())
    fresh.load_state_dict(base_state)
    config = load(fresh, tmp_path / "adapter")
    assert config["method"] == model[0].method and config["rank"] == RANK
    for (n1, p1), (n2, p2) in zip(model[0].adapter_parameters(), fresh[0].adapter_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("method,layer_name", CASES)
def test_remove_restores_base_bit_exactly(method, layer_name, merged):
    model, x, base_out, base_state, _ = build(method, layer_name)
    original_layer = model[0].base_layer
    randomize_adapter(model)
    if merged and method not in NONLINEAR:
        merge(model)
    assert remove(model) == 1
    assert model[0] is original_layer
    state = model.state_dict()
    assert state.keys() == base_state.keys()
    for key in state:
        assert torch.equal(state[key], base_state[key]), key
    assert torch.equal(model(x), base_out)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method,layer_name", UNSUPPORTED_CASES)
def test_unsupported_layers_are_skipped_or_refused(method, layer_name):
    make_layer, _, _ = LAYERS[layer_name]
    model = nn.Sequential(make_layer(), nn.Flatten(), nn.LazyLinear(2) if False else nn.Identity())
    model.add_module("extra", nn.Linear(3, 3))
    report = apply(model, method, rank=2, **METHODS[method][0])
    assert report.skipped and "0" in report.skipped and report.wrapped == ["extra"]
    remove(model)
    with pytest.raises(ValueError, match="cannot adapt"):
        apply(model, method, rank=2, targets=["0"], **METHODS[method][0])


def test_nonlinear_adapter_refuses_merge_and_delta():
    model, _, _, _, _ = build("nera", "linear")
    with pytest.raises(TypeError, match="nonlinear"):
        merge(model)
    with pytest.raises(TypeError, match="nonlinear"):
        model[0].delta_weight()


def test_dtype_and_device_follow_base_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3).to(torch.float64))
    apply(model, "cp_dora", rank=2)
    assert all(p.dtype == torch.float64 for _, p in model[0].adapter_parameters())
    assert model(torch.randn(1, 3, 5, 5, dtype=torch.float64)).dtype == torch.float64


def test_dropout_only_on_adapter_path_and_off_in_eval():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    apply(model, "lora", rank=4, dropout=0.5)
    randomize_adapter(model)
    x = torch.randn(16, 8)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_overparameterised_rank_warns_once_and_works():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 3, 1))
    with pytest.warns(UserWarning, match="over-parameterised") as record:
        report = apply(model, "cp_lora", rank=16)
    assert len([w for w in record if "over-parameterised" in str(w.message)]) == 1
    assert len(report.wrapped) == 2


@pytest.mark.parametrize("method,layer_name", CASES)
def test_strategies_give_same_gradients(method, layer_name):
    """The fused activation-space kernels have a hand-written backward: check it against the weight space."""
    grads = {}
    for strategy in STRATEGIES:
        model, x, _, _, _ = build(method, layer_name, strategy)
        randomize_adapter(model)
        if x.is_floating_point():
            x = x.clone().requires_grad_(True)
        out = model(x)
        probe = torch.linspace(-1, 1, out.numel()).view_as(out)
        (out * probe).sum().backward()
        grads[strategy] = {n: p.grad.clone() for n, p in model[0].adapter_parameters()}
        if x.is_floating_point():
            grads[strategy]["input"] = x.grad.clone()
    assert grads["weight"].keys() == grads["activation"].keys()
    for name in grads["weight"]:
        torch.testing.assert_close(grads["activation"][name], grads["weight"][name], rtol=1e-4, atol=1e-5, msg=name)
