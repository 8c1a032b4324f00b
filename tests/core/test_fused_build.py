"""The opt-in ``fused`` weight build (``AdapterConfig.fused``, ``core.functional.compiled``): the same numbers as the
eager build, compiled where torch.compile works, eager with the reason recorded where it does not.

The compiled cases on CPU need inductor's C++ compiler; the full table (bf16 too) is ``slow`` on CPU and ``gpu``
on CUDA; the fast set compiles three cases and runs the fallback path on the whole table.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, merge
from lowrank_vision.core.functional import compiled as compiled_mod

from .cases import LAYERS, randomize_adapter

torch.set_num_threads(1)

METHODS = ("lora", "cp_lora", "dora", "cp_dora", "conv_lora", "conv_dora")
KINDS = ("linear", "conv2d", "conv3d", "conv_transpose2d")


def _pair(kind: str, method: str, dtype=torch.float32, device="cpu"):
    """(eager model, fused model, input) with equal, non-trivial adapter weights, in the weight strategy."""
    make_layer, make_input, _ = LAYERS[kind]
    torch.manual_seed(0)
    base = nn.Sequential(make_layer())
    eager, fused = copy.deepcopy(base), copy.deepcopy(base)
    apply(eager, method, rank=2, alpha=3.0, strategy="weight")
    apply(fused, method, rank=2, alpha=3.0, strategy="weight", fused=True)
    randomize_adapter(eager, std=0.2)
    fused.load_state_dict(eager.state_dict())
    return eager.to(device, dtype), fused.to(device, dtype), make_input().to(device, dtype)


def _step(model, x, autocast_dtype=None):
    """Output and the adapter parameters' gradients of one forward + backward."""
    for p in model.parameters():
        p.grad = None
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = model(x)
    out.float().square().mean().backward()
    return out.detach(), [p.grad for p in model.parameters() if p.requires_grad]


def _assert_same(eager, fused, x, rtol, atol, autocast_dtype=None):
    out_e, grads_e = _step(eager, x, autocast_dtype)
    out_f, grads_f = _step(fused, x, autocast_dtype)
    torch.testing.assert_close(out_f, out_e, rtol=rtol, atol=atol)
    assert len(grads_f) == len(grads_e) > 0
    for g_f, g_e in zip(grads_f, grads_e):
        torch.testing.assert_close(g_f, g_e, rtol=rtol, atol=atol)


def _statuses(model) -> set:
    return {layer.fused_status for layer in adapter_layers(model).values()}


@pytest.fixture
def fresh_cache():
    compiled_mod.clear_compiled()
    yield
    compiled_mod.clear_compiled()


# -- the pure build functions are the eager path (no compiler involved) -----------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_weight_build_function_equals_effective_weight(kind, method):
    eager, _, _ = _pair(kind, method)
    layer = adapter_layers(eager, "default")["0"]
    fn, tensors, static = layer.weight_build()
    torch.testing.assert_close(fn(layer.base_weight(), *tensors, **static), layer.effective_weight(), rtol=0, atol=0)


# -- fallback: torch.compile unavailable ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["lora", "cp_lora", "dora", "conv_lora"])
def test_compile_failure_falls_back_to_eager_with_reason(kind, method, monkeypatch, fresh_cache):
    calls = []

    def no_compiler(fn, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("no working C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    eager, fused, x = _pair(kind, method)
    _assert_same(eager, fused, x, rtol=0, atol=0)
    assert _statuses(fused) == {"eager (fallback: torch.compile failed: RuntimeError: no working C++ compiler)"}
    assert calls == [{"dynamic": False, "fullgraph": True}]
    _step(fused, x)  # the failure is remembered per shape: no second attempt
    assert len(calls) == 1


def test_changing_scale_compiles_a_bounded_number_of_times(monkeypatch, fresh_cache):
    """A scale schedule would compile every step: past MAX_STATIC_VARIANTS values per shape the build runs eagerly."""
    compiles = []

    def traced(fn, **kwargs):  # stands in for torch.compile: runs the function itself
        compiles.append(fn.__code__.co_name)
        return fn

    monkeypatch.setattr(torch, "compile", traced)
    monkeypatch.setattr(compiled_mod, "MAX_STATIC_VARIANTS", 2)
    eager, fused, x = _pair("conv2d", "lora")
    layer_e, layer_f = adapter_layers(eager, "default")["0"], adapter_layers(fused, "default")["0"]
    statuses = []
    for scale in (1.5, 0.5, 1.5, 0.25):
        layer_e.scale = layer_f.scale = scale
        _assert_same(eager, fused, x, rtol=0, atol=0)
        statuses.append(layer_f.fused_status)
    assert statuses[:3] == ["compiled"] * 3 and statuses[3].startswith("eager (fallback: 2 static-argument sets") and "scale=0.25" in statuses[3]
    assert len(compiles) == 2 and len(set(compiles)) == 2 and all(n.startswith("lora_add_to_weight_") for n in compiles)


def test_family_without_build_function_records_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    apply(model, "sltrain", rank=2, strategy="weight", fused=True, mode="add")
    _step(model, torch.randn(3, 6))
    assert _statuses(model) == {"eager (fallback: SLTrainDelta has no weight-build function)"}


def test_fused_must_be_a_bool():
    with pytest.raises(ValueError, match=r"AdapterConfig.fused must be True or False, got 1"):
        apply(nn.Sequential(nn.Linear(4, 4)), "lora", rank=2, fused=1)


def _bench_adapters():
    """``bench/adapters.py`` imported as ``adapters`` (it imports its sibling ``profile_step``)."""
    import importlib
    import sys
    from pathlib import Path

    bench_dir = str(Path(__file__).resolve().parents[2] / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module("adapters")


def test_bench_fused_variants_build_and_report_the_fallback(monkeypatch, fresh_cache):
    """``bench/adapters.py``: ``ours:<method>:fused`` is the weight strategy with ``fused=True``; a fallback shows in the table."""
    def no_compiler(fn, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    bench = _bench_adapters()
    assert {"ours:lora:fused", "ours:cp_lora:fused", "ours:dora:fused"} <= set(bench.variant_names(False, "eager"))
    assert {"ours:lora:fused", "ours:cp_lora:fused", "ours:dora:fused"} <= set(bench.variant_names(False, "cuda_graph"))
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    inputs = (torch.randn(2, 3, 8, 8),)
    model, params = bench.build_variant("ours:dora:fused", base, ["0", "2"], inputs, torch.device("cpu"), None)
    assert all(a.fused and a.strategy == "weight" for a in adapter_layers(model, "default").values())
    row = bench.time_training(model, params, inputs, torch.device("cpu"), None, steps=1, warmup=1, floor=False,
                              compile_mode=False, profile=False)
    row["fused_status"] = bench.fused_summary(model)
    assert row["fused_status"] == {"eager (fallback: torch.compile failed: RuntimeError: no compiler)": 2}
    assert bench.mode_cell(row) == "eager; fused build: 2 layers eager (fallback: torch.compile failed: RuntimeError: no compiler)"
    assert bench.mode_cell({"mode": "cuda_graph", "fused_status": {"compiled": 2}}) == "cuda_graph"
    plain, _ = bench.build_variant("ours:dora:auto", base, ["0", "2"], inputs, torch.device("cpu"), None)
    assert bench.fused_summary(plain) is None


# -- compiled path on this machine's CPU (inductor's C++ backend) ----------------------------------------------------
@pytest.mark.parametrize("kind,method", [("linear", "lora"), ("conv2d", "cp_lora"), ("conv3d", "dora")])
def test_compiled_equals_eager_cpu_fast(kind, method, fresh_cache):
    eager, fused, x = _pair(kind, method)
    _assert_same(eager, fused, x, rtol=1e-5, atol=1e-6)
    assert _statuses(fused) == {"compiled"}, _statuses(fused)
    entries = len(compiled_mod.COMPILED)
    _assert_same(eager, fused, x, rtol=1e-5, atol=1e-6)  # second step: the cached build, nothing compiled anew
    assert len(compiled_mod.COMPILED) == entries == 1


def test_merge_and_no_grad_stay_eager(fresh_cache):
    eager, fused, x = _pair("conv2d", "dora")
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x), rtol=0, atol=0)
    assert _statuses(fused) == {None} and not compiled_mod.COMPILED
    merge(fused)
    merge(eager)
    torch.testing.assert_close(fused(x), eager(x), rtol=0, atol=0)
    assert _statuses(fused) == {None}


TABLE = [(k, m) for k in ("linear", "conv2d", "conv3d") for m in ("lora", "cp_lora", "dora")]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind,method", TABLE)
def test_compiled_equals_eager_cpu_table(kind, method, dtype, fresh_cache):
    eager, fused, x = _pair(kind, method, dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    _assert_same(eager, fused, x, **tol)
    assert _statuses(fused) == {"compiled"}, _statuses(fused)


# -- compiled path on CUDA (Triton) ----------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind,method,precision", [
    # a Latin square: every method and every layer kind once in each precision (each case compiles anew, ~seconds each)
    ("linear", "lora", "fp32"), ("linear", "cp_lora", "autocast_bf16"), ("linear", "dora", "bf16"),
    ("conv2d", "lora", "autocast_bf16"), ("conv2d", "cp_lora", "bf16"), ("conv2d", "dora", "fp32"),
    ("conv3d", "lora", "bf16"), ("conv3d", "cp_lora", "fp32"), ("conv3d", "dora", "autocast_bf16"),
    ("conv_transpose2d", "cp_dora", "autocast_bf16"), ("conv3d", "conv_lora", "fp32"),
])
def test_compiled_equals_eager_cuda(kind, method, precision, fresh_cache):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    eager, fused, x = _pair(kind, method, dtype, device="cuda")
    autocast = torch.bfloat16 if precision == "autocast_bf16" else None
    tol = {"rtol": 1e-4, "atol": 1e-5} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 means fp32 (cuDNN's default is TF32)
        _assert_same(eager, fused, x, autocast_dtype=autocast, **tol)
    assert _statuses(fused) == {"compiled"}, _statuses(fused)


@pytest.mark.gpu
@needs_cuda
def test_fused_dora_inside_captured_training_step_cuda(fresh_cache):
    """TrainConfig(cuda_graph=True): the build compiles in the eager warm-up steps, then the captured graph replays it."""
    from torch.utils.data import DataLoader, TensorDataset

    from lowrank_vision.core.train import TrainConfig, fit

    def run(fused: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))
        apply(model, "dora", rank=2, strategy="weight", fused=fused)
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.randn(32, 2, 8, 8, generator=g))
        config = TrainConfig(max_steps=12, lr=5e-3, warmup_steps=2, log_every=1, progress=False, cuda_graph=True)
        loss_fn = lambda m, batch: nn.functional.mse_loss(m(batch[0]), batch[1])  # noqa: E731
        return fit(model, DataLoader(data, batch_size=8), loss_fn, config), model

    (eager, _), (graphed, model) = run(False), run(True)
    assert graphed.cuda_graph["captured"] is True, graphed.cuda_graph
    assert _statuses(model) == {"compiled"}
    assert [m["loss"] for m in graphed.history] == pytest.approx([m["loss"] for m in eager.history], rel=1e-3, abs=1e-5)
