"""Training-step speed and peak memory of adapters vs full fine-tuning, the frozen floor, and PEFT.

One process per model: every variant is built from the same base weights and timed with the
same loop (forward, backward, AdamW step), median over the timed steps of a round. Rounds
interleave the variants (``--rounds``, >= 3 for a claim); every figure and ratio is reported as
median [min, max] over the rounds, a ratio being taken round by round (variant / reference in the
same round). Besides wall time, a profiled pass (``bench/profile_step.py``) gives the summed device
kernel time per step and the kernel count, so launch overhead and GPU work are reported apart
(n/a on a CPU, where the host operators are counted instead).

``--mode cuda_graph`` captures each variant's whole step (forward, backward, AdamW) once with
``torch.cuda.graph`` after the warm-up and times replays; where that is impossible (a CPU, a capture
error) the variant runs eagerly and its ``mode`` says why. Results are appended to
``docs/bench_results.json`` (keyed by device and mode) and ``docs/benchmarks.md`` is rewritten
from all stored results, with ratios to full fine-tuning and to PEFT LoRA.

    python bench/adapters.py --device cpu --models unet3d_cpu,unet3d_cpu_nores --rounds 5  # CPU goal rows
    python bench/adapters.py --device cuda --rounds 3 --models unet3d_large,vit_b   # H200 sizes, bf16 autocast
    python bench/adapters.py --device cuda --rounds 3 --mode cuda_graph              # whole-step graphs
    python bench/adapters.py --device cuda --compile --models unet3d_large,vit_l
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from lowrank_vision.core.files import save_figure, write_json, write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import profile_steps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench_results.json"
REPORT = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
RANK = 8


@dataclass
class ModelCase:
    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[torch.device], tuple]
    """Returns positional args for the model."""
    peft_targets: Callable[[nn.Module], list[str]]
    """Module names every adapter (ours and PEFT) wraps."""
    description: str
    output: Callable = field(default=lambda out: out)


def _unet3d(channels, size, batch, res_units=2):
    def build():
        from monai.networks.nets import UNet

        return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=channels, strides=(2, 2, 2), num_res_units=res_units)

    return build, (lambda dev: (torch.randn(batch, 1, size, size, size, device=dev),))


def _names_of(model: nn.Module, types: tuple, suffixes: tuple = ()) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, types) and (not suffixes or n.split(".")[-1] in suffixes)]


def _vit(arch, batch, size=224):
    def build():
        import timm

        return timm.create_model(arch, pretrained=False, img_size=size, num_classes=1000)

    return build, (lambda dev: (torch.randn(batch, 3, size, size, device=dev),))


def _diffusers_unet(batch, size):
    def build():
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(
            sample_size=size, in_channels=4, out_channels=4, block_out_channels=(128, 256, 512), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=512,
            attention_head_dim=8,
        )

    def make_input(dev):
        return (torch.randn(batch, 4, size, size, device=dev), torch.randint(0, 1000, (batch,), device=dev),
                torch.randn(batch, 77, 512, device=dev))

    return build, make_input


def _resnet50(batch, size):
    def build():
        import torchvision

        return torchvision.models.resnet50(weights=None)

    return build, (lambda dev: (torch.randn(batch, 3, size, size, device=dev),))


def cases(device: str) -> dict[str, ModelCase]:
    def vit_targets(m):
        return _names_of(m, (nn.Linear,), ("qkv", "proj", "fc1", "fc2"))

    def conv3d(m):
        return _names_of(m, (nn.Conv3d,))

    def conv2d(m):
        return _names_of(m, (nn.Conv2d,))

    def diff_targets(m):
        return _names_of(m, (nn.Linear, nn.Conv2d), ("to_q", "to_k", "to_v", "0", "conv1", "conv2", "proj_in", "proj_out"))
    out = {}
    if device == "cuda":
        table = {
            "unet3d_large": (_unet3d((32, 64, 128, 256), 128, 4), conv3d, "MONAI UNet 3D, channels (32,64,128,256), 128^3, batch 4"),
            "unet3d_small": (_unet3d((16, 32, 64, 128), 96, 2), conv3d, "MONAI UNet 3D, channels (16,32,64,128), 96^3, batch 2"),
            "vit_b": (_vit("vit_base_patch16_224", 16), vit_targets, "timm vit_base_patch16_224, batch 16"),
            "vit_l": (_vit("vit_large_patch16_224", 32), vit_targets, "timm vit_large_patch16_224, batch 32"),
            "diffusers_unet": (_diffusers_unet(8, 64), diff_targets, "diffusers UNet2DConditionModel (128,256,512), 64x64 latents, batch 8"),
            "resnet50": (_resnet50(64, 224), conv2d, "torchvision ResNet-50, 224^2, batch 64"),
        }
    else:
        table = {
            "unet3d_cpu": (_unet3d((16, 32, 64, 128), 32, 2), conv3d, "MONAI UNet 3D, channels (16,32,64,128), 32^3, batch 2"),
            "unet3d_cpu_nores": (_unet3d((16, 32, 64, 128), 32, 2, res_units=0), conv3d,
                                 "MONAI UNet 3D without residual units, channels (16,32,64,128), 32^3, batch 2"),
            "vit_s_cpu": (_vit("vit_small_patch16_224", 2, 112), vit_targets, "timm vit_small_patch16 at 112^2, batch 2"),
            "resnet50_cpu": (_resnet50(2, 112), conv2d, "torchvision ResNet-50, 112^2, batch 2"),
        }
    for name, ((build, make_input), targets, desc) in table.items():
        out[name] = ModelCase(name, build, make_input, targets, desc)
    return out


# -- variants -----------------------------------------------------------------------------------
OUR_METHODS = ["lora", "cp_lora", "conv_lora", "dora", "cp_dora", "spline_lora", "nera"]


MODES = ("eager", "cuda_graph")


FUSED_VARIANTS = ["ours:lora:fused", "ours:cp_lora:fused", "ours:dora:fused"]
"""``ours:<method>:fused``: the weight strategy with the build compiled (``apply(..., fused=True)``); pointless under
``--compile``, where the outer graph fuses the build anyway."""


def variant_names(compile_mode: bool, mode: str = "eager") -> list[str]:
    if mode == "cuda_graph":
        # activation: the input-space path skips the full weight gradient (less GPU work, more kernels); under graphs
        # launches are free, so it is the candidate for the kernel-time goal on the Linear-heavy rows
        return ["full", "floor", "peft_lora", "ours:lora:auto", "ours:lora:weight", "ours:lora:activation", "ours:cp_lora:auto",
                "ours:dora:auto", *FUSED_VARIANTS]
    if compile_mode:
        return ["full", "floor", "peft_lora", "ours:lora:auto", "ours:lora:weight", "ours:lora:activation"]
    names = ["full", "floor", "peft_lora", "peft_dora"]
    names += [f"ours:lora:{s}" for s in ("weight", "activation", "auto", "tuned", "measured")]
    names += [f"ours:{m}:auto" for m in OUR_METHODS if m != "lora"]
    names += ["ours:dora:weight", "ours:dora:activation"]
    return names + FUSED_VARIANTS


def build_variant(variant: str, base: nn.Module, targets: list[str], inputs: tuple, device, amp_dtype):
    import lowrank_vision.core as lr

    model = copy.deepcopy(base).to(device)
    if variant == "full":
        return model, [p for p in model.parameters()]
    if variant == "floor":
        for p in model.parameters():
            p.requires_grad_(False)
        return model, []
    if variant.startswith("peft_"):
        import peft

        config = peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=targets, use_dora=variant == "peft_dora")
        model = peft.get_peft_model(model, config)
        return model, [p for p in model.parameters() if p.requires_grad]
    _, method, strategy = variant.split(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr.apply(model, method, rank=RANK, alpha=2 * RANK, targets=targets, fused=strategy == "fused",
                 strategy="auto" if strategy in ("tuned", "measured") else "weight" if strategy == "fused" else strategy)
    if strategy in ("tuned", "measured"):  # measured: per layer, then whole steps (core.tune whole_model)
        from lowrank_vision.core.tune import tune_strategies

        model.train()  # timed in the mode the step runs in
        tune_strategies(model, inputs, autocast_dtype=amp_dtype, repeats=3, whole_model=strategy == "measured")
    return model, [p for p in model.parameters() if p.requires_grad]


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(type(out))


def time_training(model, params, inputs, device, amp_dtype, steps: int, warmup: int, floor: bool, compile_mode: bool,
                  mode: str = "eager", profile: bool = True) -> dict:
    """Median step ms after warm-up, peak memory, the mode actually used and (``profile``) kernel time/count per step."""
    model.train()
    graph_wanted = mode == "cuda_graph" and device.type == "cuda"
    optimizer = (torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda", capturable=graph_wanted) if params else None)
    runner = torch.compile(model) if compile_mode else model
    inputs = tuple(t.clone().requires_grad_(floor and t.is_floating_point() and i == 0) for i, t in enumerate(inputs))

    def update():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = _first_tensor(runner(*inputs))
        loss = out.float().square().mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    def step():
        update()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        if floor:
            inputs[0].grad = None

    compile_start = time.perf_counter()
    if graph_wanted:  # warm-up on a side stream, as torch.cuda.graph asks
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
    else:
        for _ in range(warmup):
            step()
    used = "eager" if mode == "eager" else f"eager (fallback: device is {device.type}, CUDA graphs need a CUDA device)"
    if graph_wanted:
        step, used = capture_step(update, step, optimizer, inputs, floor, device)
    sync(device)
    warm_s = time.perf_counter() - compile_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    row = {"ms": statistics.median(times), "peak_mib": peak, "warmup_s": warm_s, "mode": used}
    if profile:
        row.update(profile_steps(step, device, steps=min(steps, 3)))
    return row


def capture_step(update, eager_step, optimizer, inputs, floor, device):
    """(replay function, "cuda_graph") for the captured ``update``; (``eager_step``, "eager (fallback: ...)") if capture fails."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    if floor:
        inputs[0].grad = None
    sync(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            update()
    except Exception as exc:  # e.g. a host sync inside the step: measure it eagerly and say why
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        if floor:
            inputs[0].grad = None
        sync(device)
        return eager_step, f"eager (fallback: capture failed: {type(exc).__name__}: {str(exc)[:160]})"
    return graph.replay, "cuda_graph"


def time_inference(model, inputs, device, amp_dtype, steps: int) -> float:
    model.eval()
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for i in range(steps + 3):
            sync(device)
            t0 = time.perf_counter()
            model(*inputs)
            sync(device)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choice_summary(model: nn.Module) -> Optional[dict]:
    """Counts of the tuned layers' strategies and sources (``core.tune`` records); ``None`` for an untuned variant."""
    from lowrank_vision.core.tune import strategy_choices

    choices = strategy_choices(model)
    if not choices:
        return None
    count = lambda key: {v: sum(r[key] == v for r in choices.values()) for v in sorted({r[key] for r in choices.values()})}  # noqa: E731
    summary = {"strategy": count("strategy"), "source": count("source"),
               "cost_model_wrong": sum(bool(r.get("cost_model_wrong")) for r in choices.values())}
    model_times = next((r["model_times_s"] for r in choices.values() if r.get("model_times_s")), None)
    if model_times:
        summary["model_ms"] = {k: round(v * 1e3, 3) for k, v in model_times.items()}
    return summary


def fused_summary(model: nn.Module) -> Optional[dict]:
    """``{fused_status: layer count}`` of the layers built with ``fused=True`` (``None`` for other variants)."""
    import lowrank_vision.core as lr

    statuses = [a.fused_status for a in lr.adapter_layers(model, unique=True).values() if a.fused]
    if not statuses:
        return None
    return {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)}


def merge_round(previous: Optional[dict], row: dict) -> dict:
    """Append one round's measurements to a variant's row: ``rounds_<key>`` lists, ``ms``/``kernel_ms`` = their median."""
    if previous is not None and "error" in previous:
        previous = None
    merged = dict(row)
    for key in ("ms", "kernel_ms", "cpu_op_ms"):
        if row.get(key) is not None:
            merged[f"rounds_{key}"] = (previous or {}).get(f"rounds_{key}", []) + [row[key]]
            merged[key] = statistics.median(merged[f"rounds_{key}"])
    if previous and previous.get("peak_mib") is not None and row.get("peak_mib") is not None:
        merged["peak_mib"] = max(previous["peak_mib"], row["peak_mib"])
    if previous and previous.get("mode") not in (None, row.get("mode")):
        merged["mode"] = f"{previous['mode']}; then {row.get('mode')}"
    return merged


def run_case(case: ModelCase, device, amp_dtype, steps, warmup, compile_mode, variants, inference: bool, rounds: int = 1,
             mode: str = "eager", profile: bool = True) -> dict:
    torch.manual_seed(0)
    base = case.build().eval()
    inputs = case.make_input(device)
    targets = case.peft_targets(base)
    rows = {}
    from tqdm import tqdm

    # Rounds interleave the variants, so slow drift of the host (eager steps on small models are bound by
    # the CPU that launches kernels) hits every variant alike; every round is kept (rounds_*), the report
    # gives median [min, max] and takes ratios round by round.
    for round_index in range(rounds):
        for variant in tqdm(variants, desc=f"{case.name} round {round_index + 1}/{rounds}", leave=False):
            try:
                model, params = build_variant(variant, base, targets, inputs, device, amp_dtype)
                row = time_training(model, params, inputs, device, amp_dtype, steps, warmup, variant == "floor", compile_mode,
                                    mode, profile)
                row["trainable"] = sum(p.numel() for p in params)
                if (choices := choice_summary(model)) is not None:
                    row["strategy_choice"] = choices
                if (fused := fused_summary(model)) is not None:
                    row["fused_status"] = fused
                rows[variant] = merge_round(rows.get(variant), row)
            except Exception as exc:  # a variant that cannot run (e.g. PEFT DoRA on an unsupported layer) is reported
                rows[variant] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            finally:
                model = params = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    result = {"description": case.description, "targets": len(targets), "rows": rows}
    if inference and not compile_mode:
        import lowrank_vision.core as lr

        infer = {"base": time_inference(copy.deepcopy(base).to(device), inputs, device, amp_dtype, steps)}
        ours, _ = build_variant("ours:lora:auto", base, targets, inputs, device, amp_dtype)
        with torch.no_grad():
            for a in lr.adapter_layers(ours).values():
                for _, p in a.adapter_parameters():
                    p.add_(torch.randn_like(p) * 1e-3)
        infer["ours_unmerged"] = time_inference(ours, inputs, device, amp_dtype, steps)
        lr.merge(ours)
        infer["ours_merged"] = time_inference(ours, inputs, device, amp_dtype, steps)
        peft_model, _ = build_variant("peft_lora", base, targets, inputs, device, amp_dtype)
        infer["peft_unmerged"] = time_inference(peft_model, inputs, device, amp_dtype, steps)
        result["inference_ms"] = infer
    return result


# -- report --------------------------------------------------------------------------------------
GPU_ROWS = ("unet3d_large", "unet3d_small", "vit_b", "vit_l", "diffusers_unet", "resnet50")
CPU_ROWS = ("unet3d_cpu", "unet3d_cpu_nores")
MIN_ROUNDS = 3
"""Fewer rounds than this give a number, never a claim."""


def rounds_of(row: Optional[dict], key: str = "ms") -> list[float]:
    """Every round's value of ``key`` (older stored rows without ``rounds_<key>`` give their single value)."""
    if not row or "error" in row:
        return []
    if row.get(f"rounds_{key}"):
        return [float(v) for v in row[f"rounds_{key}"]]
    return [float(row[key])] if row.get(key) is not None else []


def ratio_rounds(num: Optional[dict], den: Optional[dict], key: str = "ms") -> list[float]:
    """``num / den`` round by round (the rounds are interleaved, so round i of both saw the same host state);
    a single ratio of medians when the two rows do not hold the same number of rounds."""
    a, b = rounds_of(num, key), rounds_of(den, key)
    if not a or not b:
        return []
    if len(a) == len(b):
        return [x / y for x, y in zip(a, b)]
    return [statistics.median(a) / statistics.median(b)]


def fmt_spread(values: list[float], digits: int = 2) -> str:
    """``median [min, max]`` (one value alone when there is one round, "–" when none)."""
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def store_key(device_type: str, compiled: bool = False, mode: str = "eager") -> str:
    """Where a run's results live in ``docs/bench_results.json``: ``cuda``, ``cuda + cuda graph``, ``cpu``, ..."""
    return f"{device_type}{' + torch.compile' if compiled else ''}{' + cuda graph' if mode == 'cuda_graph' else ''}"


def _rows(store: dict, key: str, case: str) -> dict:
    return store.get(key, {}).get("cases", {}).get(case, {}).get("rows", {})


def goals_section(store: dict) -> list[str]:
    """The goals of issue 17, each checked against the stored numbers (reached or not, never edited by hand).

    A goal reads the median of its per-round ratios; with fewer than ``MIN_ROUNDS`` rounds it is unclaimed."""
    lines = ["## Goals (checked from the numbers below)", "",
             f"Value = median [min, max] of the per-round ratios; a goal needs >= {MIN_ROUNDS} interleaved rounds to be claimed.", "",
             "| goal | row | value | rounds | limit | reached |", "|---|---|---|---|---|---|"]

    def add(goal, row, ratios, limit, note=""):
        if not ratios:
            status = "not measured" + (f" ({note})" if note else "")
        elif len(ratios) < MIN_ROUNDS:
            status = f"unclaimed ({len(ratios)} round(s))"
        else:
            status = "yes" if statistics.median(ratios) <= limit else "no"
        lines.append(f"| {goal} | {row} | {fmt_spread(ratios)} | {len(ratios)} | {limit} | {status} |")

    def floor_line(what, row, ratios, limit):
        """Not a goal: what the frozen network with the input's gradient costs, the least any adapter can cost."""
        if ratios:
            below = statistics.median(ratios) > limit
            lines.append(f"| (reference) frozen floor {what} | {row} | {fmt_spread(ratios)} | {len(ratios)} | – | "
                         + (f"the {limit} goal is below the frozen floor: no adapter that runs the frozen network reaches it |"
                            if below else f"the {limit} goal is above the frozen floor |"))

    def dora_lines(row, eager, graph):
        """Not goals: why eager DoRA misses 1.15 where launches bound the step (its kernel count over our LoRA's), and
        DoRA against our LoRA as the shared trainer runs them under whole-step graphs (DoRA on its compiled build)."""
        dora_k, lora_k = (eager.get(v, {}).get("kernels") for v in ("ours:dora:auto", "ours:lora:auto"))
        if dora_k and lora_k:
            lines.append(f"| (reference) eager kernels per step dora / our lora (profiled step) | {row} | {dora_k / lora_k:.2f} | 1 | – | "
                         "where launching kernels bounds the eager step, its time grows about as this count |")
        ratios = ratio_rounds(graph.get("ours:dora:fused"), graph.get("ours:lora:auto"))
        if ratios:
            within = statistics.median(ratios) <= 1.15
            lines.append(f"| (reference) dora / our lora, whole-step graphs (DoRA's compiled build, as `fit` picks it) | {row} | "
                         f"{fmt_spread(ratios)} | {len(ratios)} | – | {'within' if within else 'above'} the eager goal's 1.15 |")

    for row in GPU_ROWS:
        rows = _rows(store, "cuda", row)
        for method in ("lora", "cp_lora"):
            add(f"GPU kernel time {method} / full FT", row, ratio_rounds(rows.get(f"ours:{method}:auto"), rows.get("full"), "kernel_ms"), 0.85)
        graph = _rows(store, "cuda + cuda graph", row)
        for method in ("lora", "cp_lora"):
            if graph.get(f"ours:{method}:auto"):
                add(f"GPU kernel time {method} / full FT, whole-step graphs", row,
                    ratio_rounds(graph.get(f"ours:{method}:auto"), graph.get("full"), "kernel_ms"), 0.85)
        floor_line("kernel time / full FT", row, ratio_rounds(rows.get("floor"), rows.get("full"), "kernel_ms"), 0.85)
        floor_line("kernel time / full FT, whole-step graphs", row, ratio_rounds(graph.get("floor"), graph.get("full"), "kernel_ms"), 0.85)
        add("eager lora / PEFT LoRA", row, ratio_rounds(rows.get("ours:lora:auto"), rows.get("peft_lora")), 1.0)
        add("eager dora / our lora", row, ratio_rounds(rows.get("ours:dora:auto"), rows.get("ours:lora:auto")), 1.15)
        dora_lines(row, rows, graph)
    for row in GPU_ROWS:
        rows = _rows(store, "cuda + cuda graph", row)
        add("graph lora / graph full FT", row, ratio_rounds(rows.get("ours:lora:auto"), rows.get("full")), 0.9)
        floor_line("step / full FT, whole-step graphs", row, ratio_rounds(rows.get("floor"), rows.get("full")), 0.9)
        peft = rows.get("peft_lora") or {}
        captured = peft.get("mode") == "cuda_graph"
        add("graph lora / graph PEFT LoRA", row, ratio_rounds(rows.get("ours:lora:auto"), peft) if captured else [], 0.7,
            "" if captured or not peft else "PEFT not captured")
    for row, case in store.get("cuda", {}).get("cases", {}).items():
        rows = case["rows"]
        mem, peft_mem = rows.get("ours:lora:auto", {}).get("peak_mib"), rows.get("peft_lora", {}).get("peak_mib")
        add("peak memory lora / PEFT LoRA", row, [mem / peft_mem] if mem and peft_mem else [], 1.0)
    for row in ("unet3d_large", "vit_l"):  # the goals of the earlier compile work, kept so they stay checked
        rows = _rows(store, "cuda + torch.compile", row)
        add("compiled lora / compiled PEFT LoRA", row, ratio_rounds(rows.get("ours:lora:auto"), rows.get("peft_lora")), 0.6)
        if row == "vit_l":
            add("compiled lora / compiled full FT", row, ratio_rounds(rows.get("ours:lora:auto"), rows.get("full")), 0.8)
    for row in CPU_ROWS:
        rows = _rows(store, "cpu", row)
        add("CPU lora / PEFT LoRA", row, ratio_rounds(rows.get("ours:lora:auto"), rows.get("peft_lora")), 0.7)
        if rows.get("ours:lora:measured"):
            add("CPU lora (measured strategies) / PEFT LoRA", row, ratio_rounds(rows.get("ours:lora:measured"), rows.get("peft_lora")), 0.7)
        floor_line("/ PEFT LoRA", row, ratio_rounds(rows.get("floor"), rows.get("peft_lora")), 0.7)
    return lines + [""]


def _kernel_cells(row: dict, full: dict) -> tuple[str, str, str]:
    if "cpu_ops" not in row and "kernels" not in row:
        return "–", "–", "–"  # measured before the kernel accounting existed
    if row.get("kernel_ms") is None:  # no device kernels: a CPU run; the host operators were counted instead
        return "n/a", "n/a", f"n/a ({row['cpu_ops']:.0f} host ops)" if row.get("cpu_ops") is not None else "n/a"
    return fmt_spread(rounds_of(row, "kernel_ms")), fmt_spread(ratio_rounds(row, full, "kernel_ms")), f"{row['kernels']:.0f}"


def mode_cell(row: dict) -> str:
    """The step's mode, plus how the fused builds ran where any layer did not run compiled."""
    fused = row.get("fused_status")
    if not fused or set(fused) == {"compiled"}:
        return row.get("mode", "eager")
    return f"{row.get('mode', 'eager')}; fused build: " + ", ".join(f"{n} layers {s}" for s, n in fused.items())


def render_report(store: dict) -> str:
    lines = [
        "# Benchmarks: adapter training step vs full fine-tuning, the frozen floor and PEFT",
        "",
        "Median training step (forward, backward, AdamW step) after warm-up, same base weights and inputs",
        f"for every variant; rank {RANK}, alpha {2 * RANK}, the same target layers for ours and PEFT. `floor` = every",
        "weight frozen, the input requires grad (the least any adapter can cost). `ours:<method>:<strategy>`:",
        "`weight` = one op with W + dW built on the fly, `activation` = fused frozen op + low-rank path,",
        "`auto` = cost model, `tuned` = measured per layer (`lowrank_vision.core.tune.tune_strategies`), `fused` = `weight`",
        "with W + dW (DoRA: and its norm scaling) built by torch.compile-generated kernels (`apply(..., fused=True)`).",
        "Every figure is median [min, max] over interleaved rounds; a ratio is taken round by round.",
        "`kernel ms` = summed device time of every kernel/memcpy of one step (profiler, `bench/profile_step.py`),",
        "`kernels` = their count per step; wall time minus kernel time is launch and host overhead (n/a on a CPU).",
        "`mode`: `eager`, `cuda_graph` (whole step captured once, replayed), or the eager fallback and its reason.",
        "Regenerate with the commands in each section; raw numbers are in `docs/bench_results.json`;",
        "`python bench/adapters.py --report-only` re-renders this page.",
        "",
        "**Rename (2026-12-02):** every `ours:nera:auto` row below was measured before `nera` became the paper's",
        "KAN adapter; those rows are the LoRA-with-one-spline form now registered as `spline_lora`. The KAN form",
        "has not been benchmarked here yet.",
        "",
        "Other benchmark pages: low-rank optimizers and adapter initialisations (GaLore, Fira, LoRA-GA,",
        "LoRA-SB) in `docs/benchmarks_optim.md` (`python bench/optim.py`); the fused weight build (`ours:*:fused`,",
        "first H200 rows, small 3-D UNet, eager and whole-step graphs) in `docs/benchmarks_fused.md` (commands there);",
        "NeRA's spline without its basis tensor in `docs/results/nera_basis.md` (`python bench/nera_basis.py`).",
        "",
    ]
    summary = ROOT / "docs" / "benchmarks_notes.md"
    if summary.is_file():
        lines += [summary.read_text().strip(), ""]
    lines += goals_section(store)
    for key, run in store.items():
        env = run["env"]
        lines += [f"## {key}", "", f"- machine: {env['machine']}", f"- versions: {env['versions']}",
                  f"- command (the last run into this section; a table measured by another names its own): `{env['command']}`",
                  f"- precision: {env['precision']}; median of {env['steps']} timed steps after {env['warmup']} warm-up steps per round, "
                  f"{env.get('rounds', 1)} interleaved round(s)", ""]
        for case_name, case in run["cases"].items():
            rows = case["rows"]
            full, peft = rows.get("full"), rows.get("peft_lora")
            peft_mem = (peft or {}).get("peak_mib")
            lines += [f"### {case_name}: {case['description']} ({case['targets']} target layers)", ""]
            if case.get("env", env) != env:
                own = case["env"]
                lines += [f"Measured by `{own['command']}` ({own['versions']}; {own['machine']}; {own.get('rounds', 1)} interleaved round(s)).", ""]
            lines += [
                      "| variant | step ms | / full FT | / PEFT LoRA | kernel ms | kernel / full FT | kernels | peak MiB | mem / PEFT LoRA | trainable | mode |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for variant, row in rows.items():
                if "error" in row:
                    lines.append(f"| {variant} | failed: {row['error']} | | | | | | | | | |")
                    continue
                mem = row.get("peak_mib")
                k_ms, k_ratio, k_count = _kernel_cells(row, full)
                lines.append(
                    f"| {variant} | {fmt_spread(rounds_of(row), 1)} | {fmt_spread(ratio_rounds(row, full))} | {fmt_spread(ratio_rounds(row, peft))} | "
                    f"{k_ms} | {k_ratio} | {k_count} | {'–' if mem is None else f'{mem:,.0f}'} | "
                    f"{fmt_spread([mem / peft_mem] if mem and peft_mem else [])} | {row['trainable']:,} | {mode_cell(row)} |"
                )
            if "inference_ms" in case:
                inf = case["inference_ms"]
                lines += ["", "Inference (no grad): " + ", ".join(f"{k} {v:.2f} ms" for k, v in inf.items())
                          + f"; merged / base = {inf['ours_merged'] / inf['base']:.3f}, unmerged overhead ours {inf['ours_unmerged'] / inf['base'] - 1:+.1%}, PEFT {inf['peft_unmerged'] / inf['base'] - 1:+.1%}"]
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(store: dict, path: Path = CHART) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, c, n) for k, run in store.items() for n, c in run["cases"].items()]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), squeeze=False)
    for ax, (key, case, name) in zip(axes[:, 0], panels):
        full = case["rows"].get("full")
        ratios = {n: ratio_rounds(r, full) for n, r in case["rows"].items()}
        names = [n for n, v in ratios.items() if v]
        med = [statistics.median(ratios[n]) for n in names]
        err = [[m - min(ratios[n]) for n, m in zip(names, med)], [max(ratios[n]) - m for n, m in zip(names, med)]]
        colors = ["#999" if n in ("full", "floor") else "#d62728" if n.startswith("peft") else "#1f77b4" for n in names]
        ax.barh(names, med, xerr=err, color=colors)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{name} [{key}]", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step time / full fine-tuning (median, min-max over rounds)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def environment(device, args) -> dict:
    import importlib.metadata as md

    versions = []
    for pkg in ("torch", "peft", "monai", "timm", "diffusers", "torchvision"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    machine = f"{platform.machine()}, {os.cpu_count()} CPU threads"
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}, " + machine
    return {"machine": machine, "versions": ", ".join(versions), "command": "python " + " ".join(sys.argv),
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "steps": args.steps, "warmup": args.warmup,
            "rounds": args.rounds, "mode": args.mode, "profiled": not args.no_profile}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=None, help="comma-separated subset of the model cases")
    parser.add_argument("--variants", default=None, help="comma-separated subset of variants")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant")
    parser.add_argument("--rounds", type=int, default=3, help="time every variant this many interleaved times (>= 3 for a claim)")
    parser.add_argument("--mode", choices=MODES, default="eager", help="cuda_graph: capture each variant's whole step once, time replays")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled pass (kernel time and count)")
    parser.add_argument("--report", default=str(REPORT), help="markdown page to write (its .png chart beside it)")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--report-only", action="store_true", help="re-render docs/benchmarks.md from stored results")
    args = parser.parse_args(argv)
    if args.compile and args.mode == "cuda_graph":
        parser.error("--compile and --mode cuda_graph are exclusive (compiled graphs: torch.compile's own reduce-overhead mode)")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    results_path = Path(args.results)
    store = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if not args.report_only:
        device = torch.device(args.device)
        args.steps = args.steps or (10 if device.type == "cuda" else 3)
        args.warmup = args.warmup or (3 if device.type == "cuda" else 1)
        amp_dtype = torch.bfloat16 if device.type == "cuda" else None
        all_cases = cases(device.type)
        chosen = args.models.split(",") if args.models else list(all_cases)
        unknown = [c for c in chosen if c not in all_cases]
        if unknown:
            parser.error(f"--models: unknown {unknown}; choose from {list(all_cases)}")
        variants = args.variants.split(",") if args.variants else variant_names(args.compile, args.mode)
        run = store.setdefault(store_key(device.type, args.compile, args.mode), {"cases": {}})
        run["env"] = environment(device, args)
        for name in chosen:
            print(f"== {name}", flush=True)
            run["cases"][name] = run_case(all_cases[name], device, amp_dtype, args.steps, args.warmup, args.compile, variants,
                                          not args.no_inference and args.mode == "eager", args.rounds, args.mode, not args.no_profile)
            run["cases"][name]["env"] = run["env"]  # rows of one section come from several commands: each keeps its own
            rows = run["cases"][name]["rows"]
            for variant, row in rows.items():
                print(f"  {variant:24s} {fmt_spread(rounds_of(row), 2):>24s} ms  / full {fmt_spread(ratio_rounds(row, rows.get('full'))):>20s}  "
                      f"kernel {fmt_spread(rounds_of(row, 'kernel_ms'), 2) if row.get('kernel_ms') is not None else 'n/a':>20s} ms  "
                      f"{row.get('mode', '')} {row.get('error', '')}", flush=True)
            write_json(results_path, store, indent=1)
    report = Path(args.report)
    write_text(report, render_report(store))
    plot(store, report.with_suffix(".png"))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
