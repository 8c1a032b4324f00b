"""Inference time of the shipped SPAN x4 and the merged DSCLoRA x4 (identical architecture), NTIRE-ESR style.

    python bench/sr_runtime.py --device cuda --size 256 --rounds 11

Interleaved rounds (``recipes.compare_runtime``) so host drift hits both models alike; prints JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from lowrank_vision.core import count_parameters
from lowrank_vision.plugins.sr_dsclora.recipes import compare_runtime, count_flops
from lowrank_vision.plugins.sr_dsclora.weights import default_weights, load_span


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256, help="LR input side (pixels)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    models = {kind: load_span(default_weights(kind, 4)).to(args.device).eval() for kind in ("span", "dsclora")}
    with torch.no_grad():
        times = compare_runtime(models, (args.size, args.size), rounds=args.rounds, repeats=args.repeats)
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "lr_input": [args.size, args.size],
        "params": {k: count_parameters(m)[1] for k, m in models.items()},
        "flops_g": {k: count_flops(m.cpu(), (args.size, args.size)) / 1e9 for k, m in models.items()},
        "runtime_ms": times,
        "dsclora_over_span": times["dsclora"] / times["span"],
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
