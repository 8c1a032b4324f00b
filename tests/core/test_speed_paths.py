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


# --------------------------------------------------------------------- bench accounting (bench/adapters.py)


def _bench():
    import importlib
    import sys
    from pathlib import Path

    bench_dir = str(Path(__file__).resolve().parents[2] / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module("adapters"), importlib.import_module("profile_step")


def test_summarize_records_per_step_kernel_time_and_count():
    _, prof = _bench()
    R = prof.Record
    records = [R("kernel", "gemm", 100.0), R("kernel", "gemm", 300.0), R("kernel", "Memcpy HtoD", 20.0), R("kernel", "relu", 80.0),
               R("cpu_op", "aten::mm", 50.0), R("cpu_op", "aten::relu", 10.0)]
    out = prof.summarize_records(records, steps=2)
    assert out == pytest.approx({"kernel_ms": 0.25, "kernels": 2.0, "cpu_op_ms": 0.03, "cpu_ops": 1.0})
    cpu_only = prof.summarize_records([R("cpu_op", "aten::mm", 40.0)], steps=1)
    assert cpu_only["kernel_ms"] is None and cpu_only["kernels"] is None and cpu_only["cpu_ops"] == 1.0
    with pytest.raises(ValueError, match="steps must be >= 1"):
        prof.summarize_records(records, steps=0)


def test_profile_steps_on_cpu_counts_host_ops_and_no_kernels():
    _, prof = _bench()
    layer = nn.Linear(16, 16)
    x = torch.randn(4, 16)

    def step():
        layer(x).square().mean().backward()

    out = prof.profile_steps(step, torch.device("cpu"), steps=2)
    assert out["kernel_ms"] is None and out["kernels"] is None
    assert out["cpu_ops"] >= 3 and out["cpu_op_ms"] > 0  # linear, square, mean (+ backward) per step


def test_rounds_merge_and_ratios_round_by_round():
    adapters, _ = _bench()
    row = None
    for ms, k in ((10.0, 4.0), (14.0, 5.0), (12.0, 6.0)):
        row = adapters.merge_round(row, {"ms": ms, "kernel_ms": k, "peak_mib": ms, "mode": "eager"})
    assert row["rounds_ms"] == [10.0, 14.0, 12.0] and row["ms"] == 12.0 and row["kernel_ms"] == 5.0 and row["peak_mib"] == 14.0
    full = {"rounds_ms": [20.0, 20.0, 30.0]}
    assert adapters.ratio_rounds(row, full) == pytest.approx([0.5, 0.7, 0.4])
    assert adapters.fmt_spread(adapters.ratio_rounds(row, full)) == "0.50 [0.40, 0.70]"
    assert adapters.ratio_rounds(row, {"ms": 24.0}) == pytest.approx([0.5])  # unpaired rounds: ratio of medians
    assert adapters.ratio_rounds(row, {"error": "x"}) == [] and adapters.fmt_spread([]) == "–"


def _store(rounds_ours, rounds_peft):
    rows = {"ours:lora:auto": {"rounds_ms": rounds_ours, "trainable": 1, "cpu_ops": 3.0, "kernel_ms": None},
            "peft_lora": {"rounds_ms": rounds_peft, "trainable": 1, "cpu_ops": 5.0, "kernel_ms": None}}
    env = {"machine": "m", "versions": "v", "command": "c", "precision": "fp32", "steps": 1, "warmup": 1, "rounds": len(rounds_ours)}
    return {"cpu": {"env": env, "cases": {"unet3d_cpu": {"description": "d", "targets": 1, "rows": rows}}}}


def test_goal_needs_three_rounds_and_reads_the_median():
    adapters, _ = _bench()
    goal = [line for line in adapters.goals_section(_store([6.0, 9.0, 6.5], [10.0, 10.0, 10.0])) if "| unet3d_cpu |" in line]
    assert goal == ["| CPU lora / PEFT LoRA | unet3d_cpu | 0.65 [0.60, 0.90] | 3 | 0.7 | yes |"]
    goal = [line for line in adapters.goals_section(_store([8.0, 9.0, 6.5], [10.0, 10.0, 10.0])) if "| unet3d_cpu |" in line]
    assert goal[0].endswith("| 3 | 0.7 | no |")
    goal = [line for line in adapters.goals_section(_store([6.0, 6.0], [10.0, 10.0])) if "| unet3d_cpu |" in line]
    assert goal[0].endswith("| 2 | 0.7 | unclaimed (2 round(s)) |")
    page = adapters.render_report(_store([6.0, 9.0, 6.5], [10.0, 10.0, 10.0]))
    assert "| ours:lora:auto | 6.5 [6.0, 9.0] | – | 0.65 [0.60, 0.90] | n/a | n/a | n/a (3 host ops) |" in page


def test_dora_reference_lines_read_the_eager_kernel_counts_and_the_graph_rounds():
    """Not goals: DoRA's eager kernel count over our LoRA's, and DoRA's compiled build over our LoRA under graphs."""
    adapters, _ = _bench()
    env = {"machine": "m", "versions": "v", "command": "c", "precision": "bf16", "steps": 1, "warmup": 1, "rounds": 3}
    eager = {"ours:lora:auto": {"rounds_ms": [10.0] * 3, "kernels": 1000}, "ours:dora:auto": {"rounds_ms": [15.0] * 3, "kernels": 1340}}
    graph = {"ours:lora:auto": {"rounds_ms": [8.0, 8.0, 10.0]}, "ours:dora:fused": {"rounds_ms": [8.8, 9.6, 10.0]}}
    store = {"cuda": {"env": env, "cases": {"vit_b": {"description": "d", "targets": 1, "rows": eager}}},
             "cuda + cuda graph": {"env": env, "cases": {"vit_b": {"description": "d", "targets": 1, "rows": graph}}}}
    lines = [line for line in adapters.goals_section(store) if "(reference) eager kernels" in line or "(reference) dora" in line]
    assert lines == [
        "| (reference) eager kernels per step dora / our lora (profiled step) | vit_b | 1.34 | 1 | – | where launching kernels "
        "bounds the eager step, its time grows about as this count |",
        "| (reference) dora / our lora, whole-step graphs (DoRA's compiled build, as `fit` picks it) | vit_b | 1.10 [1.00, 1.20] "
        "| 3 | – | within the eager goal's 1.15 |"]
    graph["ours:dora:fused"]["rounds_ms"] = [9.6, 9.6, 12.0]
    assert any(line.endswith("| above the eager goal's 1.15 |") for line in adapters.goals_section(store))


def test_cuda_graph_mode_falls_back_on_cpu_with_reason():
    adapters, _ = _bench()
    torch.manual_seed(0)
    model = small_net()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    row = adapters.time_training(model, params, (torch.randn(2, 3, 8, 8),), torch.device("cpu"), None, steps=2, warmup=1,
                                 floor=False, compile_mode=False, mode="cuda_graph", profile=True)
    assert row["mode"].startswith("eager (fallback: device is cpu")
    assert row["ms"] > 0 and row["kernel_ms"] is None and row["cpu_ops"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, params)), "the fallback must still train"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_mode_captures_ours_and_peft_on_cuda():
    adapters, _ = _bench()
    device = torch.device("cuda")
    torch.manual_seed(0)
    base = small_net().eval()
    inputs = (torch.randn(4, 3, 8, 8, device=device),)
    targets = [n for n, m in base.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for variant in ("full", "peft_lora", "ours:lora:auto", "ours:cp_lora:auto", "floor"):
        model, params = adapters.build_variant(variant, base, targets, inputs, device, torch.bfloat16)
        row = adapters.time_training(model, params, inputs, device, torch.bfloat16, steps=3, warmup=2, floor=variant == "floor",
                                     compile_mode=False, mode="cuda_graph", profile=True)
        assert row["mode"] == "cuda_graph", (variant, row["mode"])
        assert row["kernel_ms"] > 0 and row["kernels"] >= 3, (variant, row)


def test_bench_choice_summary_counts_the_recorded_choices():
    adapters, _ = _bench()
    torch.manual_seed(0)
    model = small_net()
    assert adapters.choice_summary(model) is None  # no adapter, nothing tuned
    apply(model, "lora", rank=2)
    seconds = {"0[default]": (3.0, 1.0), "2[default]": (0.5, 2.0), "4[default]": (9.0, 4.0)}
    tune_strategies(model, torch.randn(2, 3, 8, 8), timer=lambda name, s: seconds[name][s == "activation"] if name else 1.0)
    summary = adapters.choice_summary(model)
    assert summary["strategy"] == {"activation": 2, "weight": 1} and summary["source"] == {"measured": 3}
    assert "model_ms" not in summary
