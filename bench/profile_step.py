"""Profile one training step of a benchmark variant: top CUDA kernels and CPU time.

    python bench/profile_step.py --model vit_b --variants full,ours:lora:weight,peft_lora
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapters import build_variant, cases, _first_tensor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--variants", default="full,ours:lora:weight,peft_lora")
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    device = torch.device("cuda")
    case = cases("cuda")[args.model]
    torch.manual_seed(0)
    base = case.build().eval()
    inputs = case.make_input(device)
    targets = case.peft_targets(base)
    for variant in args.variants.split(","):
        model, params = build_variant(variant, base, targets, inputs, device, torch.bfloat16)
        model.train()
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True) if params else None

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = _first_tensor(model(*inputs))
            out.float().square().mean().backward()
            if opt:
                opt.step()
                opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(f"\n===== {args.model} {variant} (3 steps)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
        model = opt = None
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
