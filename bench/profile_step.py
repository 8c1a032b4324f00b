"""GPU-time accounting of a training step: summed device-kernel time and kernel count, apart from wall time.

``profile_steps(step, device)`` runs ``step`` a few times under ``torch.profiler`` and returns per-step
averages: ``kernel_ms`` (sum of every device activity's duration: kernels, memcpy, memset) and
``kernels`` (their count), plus the host side the same way: ``cpu_ops`` (top-level operators, i.e.
without a parent operator, so nested ops are not counted twice) and ``cpu_op_ms`` (their summed
duration). On a CPU there are no device activities: ``kernel_ms`` and ``kernels`` are ``None`` (the
report prints n/a) and the operator columns still come from the same code path. Kernels replayed
from a captured CUDA graph are reported by CUPTI one by one, so graph and eager steps compare alike.

    python bench/profile_step.py --model vit_b --variants full,ours:lora:weight,peft_lora   # top kernels
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Optional

import torch


class Record(NamedTuple):
    kind: str
    """'kernel' (device activity) or 'cpu_op' (top-level host operator)."""
    name: str
    us: float
    """Duration in microseconds."""


def records_from_profile(prof) -> list[Record]:
    """The profiler's events as ``Record``s (device activities and top-level CPU operators only)."""
    from torch.autograd import DeviceType

    out = []
    for evt in prof.events():
        duration = float(evt.time_range.elapsed_us())
        if evt.device_type != DeviceType.CPU:
            out.append(Record("kernel", evt.name, duration))
        elif evt.cpu_parent is None and not evt.name.startswith("ProfilerStep"):
            out.append(Record("cpu_op", evt.name, duration))
    return out


def summarize_records(records: Iterable[Record], steps: int) -> dict:
    """Per-step kernel time/count and top-level CPU operator time/count (``None`` where there were no kernels)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    kernels = [r.us for r in records if r.kind == "kernel"]
    ops = [r.us for r in records if r.kind == "cpu_op"]
    per = 1.0 / steps
    return {
        "kernel_ms": sum(kernels) * per / 1e3 if kernels else None,
        "kernels": len(kernels) * per if kernels else None,
        "cpu_op_ms": sum(ops) * per / 1e3,
        "cpu_ops": len(ops) * per,
    }


def profile_steps(step: Callable[[], None], device: torch.device, steps: int = 3) -> dict:
    """Run ``step`` ``steps`` times under the profiler (after the caller's warm-up) and summarise per step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return summarize_records(records_from_profile(prof), steps)


def main(argv: Optional[list[str]] = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adapters import _first_tensor, build_variant, cases

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--variants", default="full,ours:lora:weight,peft_lora")
    parser.add_argument("--rows", type=int, default=18)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    case = cases(device.type)[args.model]
    torch.manual_seed(0)
    base = case.build().eval()
    inputs = case.make_input(device)
    targets = case.peft_targets(base)
    for variant in args.variants.split(","):
        model, params = build_variant(variant, base, targets, inputs, device, amp)
        model.train()
        floor = variant == "floor"  # nothing trainable: the input's gradient makes the backward run (as in adapters.py)
        step_inputs = tuple(t.clone().requires_grad_(floor and t.is_floating_point() and i == 0) for i, t in enumerate(inputs))
        opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda") if params else None

        def step():
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = _first_tensor(model(*step_inputs))
            out.float().square().mean().backward()
            if opt:
                opt.step()
                opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        print(f"\n===== {args.model} {variant} (3 steps): {summarize_records(records_from_profile(prof), 3)}")
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
        model = opt = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
