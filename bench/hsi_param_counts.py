"""Parameter counts of every LoLA-SpecViT variant: full training vs LoRA (core.apply), as a Markdown table.

    python bench/hsi_param_counts.py [--in-chans 15] [--num-classes 8] [--rank 8]

Prints the table of docs/results/hsi.md ("Parameter counts per variant"); counts come from
``lowrank_vision.core.count_parameters`` and the ``AdapterReport`` of ``core.apply``.
"""

from __future__ import annotations

import argparse

import torch

from lowrank_vision.core import apply, count_parameters
from lowrank_vision.plugins.hsi_specvit.config import RecipeConfig
from lowrank_vision.plugins.hsi_specvit.model import VARIANTS, create_lola_specvit


def counts(variant: str, in_chans: int, num_classes: int, rank: int) -> dict:
    recipe = RecipeConfig()
    m = create_lola_specvit(variant, in_chans=in_chans, num_classes=num_classes)
    _, full = count_parameters(m)
    report = apply(m, "lora", rank=rank, alpha=2.0 * rank, targets=list(recipe.targets), trainable=recipe.trainable)
    return {"variant": variant, "full_trainable": full, "lora_total": report.total_params,
            "lora_trainable": report.trainable_params, "adapter_params": report.adapter_params,
            "wrapped": len(report.wrapped), "reduction_pct": 100.0 * (1 - report.trainable_params / full)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in-chans", type=int, default=15)
    ap.add_argument("--num-classes", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"| variant | full fine-tuning: trainable = total | LoRA r={args.rank}: total | LoRA: trainable | of which adapter "
          "| layers wrapped | fewer trainable |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        c = counts(v, args.in_chans, args.num_classes, args.rank)
        print(f"| {v} | {c['full_trainable']:,} | {c['lora_total']:,} | {c['lora_trainable']:,} | {c['adapter_params']:,} | "
              f"{c['wrapped']} | {c['reduction_pct']:.1f}% |")


if __name__ == "__main__":
    main()
