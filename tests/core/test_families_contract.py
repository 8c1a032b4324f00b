"""The every-method tests whose method lists are written out (option errors, load into another shape,
``torch.compile``, shared modules), run for the families of issue 20; the gradient comparison across
strategies and the failed-apply transaction run them in ``test_gradients.py`` and
``test_transactions.py`` (their tables name them; the last test here checks that).

Excluded from the gradient table, with the reason: ``noble`` and ``flylora`` (nonlinear in the input,
they have one execution path, so there is nothing to compare; ``weight`` is refused, tested below) and
``sltrain`` in its default ``mode="replace"`` with the wrapped weight trainable (the dense weight is not
used in that mode, so it gets no gradient by design; its bias is compared in
``test_families.py::test_sltrain_strategies_agree_in_replace_mode``; the table runs ``mode="add"``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lowrank_vision.core import AdapterLayer, adapter_layers, apply, load, save

from .cases import LAYERS, METHODS, SmallConvNet, assert_unchanged, randomize_adapter, snapshot
from .test_aliasing import SharedNet, unique_adapters
from .test_gradients import DELTA_METHODS, LAYER_TYPES
from .test_speed_paths import small_net
from .test_transactions import FAILING_LAYER_CASES

NEW = ["noble", "sltrain", "flylora", "block_lora", "mtlora", "hypelora"]


@pytest.mark.parametrize("method", ["noble", "flylora"])
def test_nonlinear_families_refuse_the_weight_strategy(method):
    with pytest.raises(ValueError, match=f"strategy.*{method}"):
        apply(nn.Sequential(nn.Linear(4, 4)), method, rank=2, strategy="weight")


@pytest.mark.parametrize("method", NEW)
def test_load_into_a_model_that_cannot_take_it_leaves_the_model_unchanged(method, tmp_path):
    torch.manual_seed(0)
    model = SmallConvNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank 4 on the 8 -> 3 head
        apply(model, method, rank=4)
    randomize_adapter(model)
    save(model, tmp_path / "a")
    other = SmallConvNet(width=6)  # same names, other shapes
    before = snapshot(other)
    with pytest.raises(ValueError, match="first mismatching layer"):
        load(other, tmp_path / "a")
    assert_unchanged(other, before)


@pytest.mark.parametrize("option,value,message", [
    ("train_base", "yes", "NOBLEOptions.train_base must be True or False"),
])
def test_noble_options(option, value, message):
    with pytest.raises(ValueError, match=message):
        apply(nn.Sequential(nn.Linear(4, 4)), "noble", rank=2, **{option: value})


@pytest.mark.parametrize("method,options,message", [
    ("sltrain", {"density": 0}, r"SLTrainOptions.density must be a number in \(0, 1\], got 0"),
    ("sltrain", {"mode": "full"}, "SLTrainOptions.mode must be 'replace' or 'add', got 'full'"),
    ("flylora", {"top_k": 0}, "FlyLoRAOptions.top_k must be None or an integer >= 1, got 0"),
    ("flylora", {"density": 1.5}, r"FlyLoRAOptions.density must be a number in \(0, 1\]"),
    ("block_lora", {"num_blocks": 0}, "BlockLoRAOptions.num_blocks must be an integer >= 1, got 0"),
    ("mtlora", {"task_rank": 0}, "MTLoRAOptions.task_rank must be None or an integer >= 1, got 0"),
    ("hypelora", {"chunk_size": 0}, "HypeLoRAOptions.chunk_size must be an integer >= 1, got 0"),
])
def test_option_errors_name_class_and_field(method, options, message):
    with pytest.raises(ValueError, match=message):
        apply(nn.Sequential(nn.Linear(4, 4)), method, rank=2, **options)


@pytest.mark.parametrize("method", NEW)
def test_compiles_without_graph_breaks(method):
    """As ``test_speed_paths.py``: ``fullgraph=True`` fails on any graph break; aot_eager traces the backward too."""
    torch.manual_seed(0)
    model = small_net()
    options = {"tasks": ("a", "b")} if method == "mtlora" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply(model, method, rank=4, **options)
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x).detach()
    for layer in adapter_layers(model).values():
        layer.strategy = "activation"  # the path with the most ops (the fused kernels for the linear families)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", NEW)
def test_shared_modules_wrapped_once_and_loaded_onto_every_alias(method, tmp_path):
    torch.manual_seed(0)
    model = SharedNet()
    x = torch.randn(2, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply(model, method, rank=2, **({"num_blocks": 2} if method == "block_lora" else {}))
    assert model.first[0] is model.again[0] and isinstance(model.first[0], AdapterLayer)
    assert model.proj is model.proj_alias and len(unique_adapters(model)) == 3
    randomize_adapter(model)
    expected = model(x).detach()
    save(model, tmp_path / "a")
    torch.manual_seed(1)
    fresh = SharedNet()
    if method not in ("noble", "sltrain"):  # the others adapt frozen base weights: give them the same ones
        fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if k.replace(".base_layer", "") in fresh.state_dict()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load(fresh, tmp_path / "a")
    assert fresh.first[0] is fresh.again[0] and fresh.proj is fresh.proj_alias
    assert torch.equal(fresh(x), expected)


def test_table_covers_the_new_families():
    assert set(NEW) <= set(METHODS) and all(name in LAYERS for name in LAYER_TYPES)
    assert set(NEW) - {"noble", "flylora"} <= set(DELTA_METHODS)  # test_gradients.py runs the strategy comparison for them
    assert set(NEW) <= {m for m, _ in FAILING_LAYER_CASES}  # test_transactions.py runs the failed-apply test for them
