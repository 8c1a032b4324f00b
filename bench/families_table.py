"""The table of every core adapter family: ``docs/core_families.md`` (and its raw JSON beside it).

Everything in the table but the one-line purpose is measured by this script on the installed
library: the families come from the registry (third-party ones included), the trainable
parameters on two reference layers from ``apply``'s report, "merges" from merging a randomised
adapter and comparing outputs (or the refusal it raises), and the layer types by trying every
type (apply, forward, backward), not from a hand-written list.

    python bench/families_table.py            # writes docs/core_families.md and docs/core_families.json
"""

from __future__ import annotations

import argparse
import inspect
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, get_adapter_class, list_adapters, merge
from lowrank_vision.core.files import write_json, write_text
from lowrank_vision.core.functional.layout import UnsupportedLayerError, geometry_of

ROOT = Path(__file__).resolve().parents[1]
RANK = 8
PROBE_RANK = 4  # a multiple of block_lora's default num_blocks

# layer type -> (layer factory, input factory); the probe wraps each alone with the family's default options
PROBE_LAYERS: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "Linear": (lambda: nn.Linear(16, 12), lambda: torch.randn(3, 16)),
    "Conv1d": (lambda: nn.Conv1d(6, 8, 3, padding=1), lambda: torch.randn(2, 6, 9)),
    "Conv2d": (lambda: nn.Conv2d(6, 8, 3, padding=1), lambda: torch.randn(2, 6, 7, 7)),
    "Conv3d": (lambda: nn.Conv3d(6, 8, 3, padding=1), lambda: torch.randn(2, 6, 5, 5, 5)),
    "Conv2d groups=2": (lambda: nn.Conv2d(6, 8, 3, groups=2), lambda: torch.randn(2, 6, 7, 7)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(6, 8, 2, stride=2), lambda: torch.randn(2, 6, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(6, 8, 2, stride=2), lambda: torch.randn(2, 6, 4, 4)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(6, 8, 2, stride=2), lambda: torch.randn(2, 6, 3, 3, 3)),
    "Embedding": (lambda: nn.Embedding(20, 12), lambda: torch.randint(0, 20, (3, 5))),
}

REFERENCE_LAYERS = {"Linear(768, 768)": lambda: nn.Linear(768, 768), "Conv2d(64, 64, 3)": lambda: nn.Conv2d(64, 64, 3, padding=1)}

PURPOSE = {
    "lora": "Fine-tuning: dW = B A (LoRA; LoRA-C on convolutions)",
    "conv_lora": "Fine-tuning convolutions with loralib's ConvLoRA factor layout",
    "cp_lora": "Fine-tuning convolutions with a rank-R CP decomposition of the whole kernel update (fewest parameters)",
    "dora": "Fine-tuning: magnitude/direction split over a LoRA update (DoRA; DoRA-C on convolutions)",
    "conv_dora": "DoRA over a ConvLoRA update",
    "cp_dora": "DoRA over a CP-LoRA update",
    "nola": "Fine-tuning with the smallest adapters: LoRA factors mixed from seeded random bases, only the mixing coefficients train",
    "nera": "Nonlinear fine-tuning: down- and up-projections are KAN layers (NeRA)",
    "spline_lora": "Nonlinear fine-tuning: LoRA with a learned spline on the r hidden channels",
    "noble": "Training from scratch: a permanent CosNet low-rank branch beside each layer, the layer trains with it (NOBLE)",
    "sltrain": "Pre-training: the weight is low-rank + sparse with a fixed random support (SLTrain); memory report in core.adapters.sltrain",
    "flylora": "Fine-tuning with a frozen sparse random router and rank-wise top-k experts; only B trains (FlyLoRA)",
    "block_lora": "Fine-tuning: n up-projection blocks over one shared down-projection block (Block-LoRA)",
    "mtlora": "Multi-task fine-tuning: shared + per-task low-rank updates, task picked at run time with set_task, or every task in one pass (set_task(model, \"all\")) (MTLoRA)",
    "hypelora": "Fine-tuning with one hyper-network generating every layer's A and B from a layer embedding (HypeLoRA)",
}

# Tools of the core that are not adapter families; their parameter cells are measured in other_core_tools().
OTHER_COLUMNS = ("tool", "what it is for", "entry point", "parameters on Linear(768, 768)", "merges", "layer types")


def other_core_tools() -> list[dict[str, str]]:
    """core.factorize and core.watermark: what each is for, with parameters counted on Linear(768, 768) at ``RANK``."""
    from lowrank_vision.core import factorize

    dense = nn.Sequential(nn.Linear(768, 768))
    before = sum(p.numel() for p in dense.parameters())
    factorize.compress(dense, ranks=RANK)
    after = sum(p.numel() for p in dense.parameters())
    branch_params = reference_params("lora")["Linear(768, 768)"]  # a MarkBoard branch is one core lora adapter
    return [
        {"tool": "core.factorize (compression)",
         "what it is for": "Making a trained model smaller: Linear/Conv layers replaced by low-rank factors, rank per layer from "
                           "the singular values (WeLore threshold under a parameter or error budget), Tucker-2/CP for conv "
                           "kernels, PELA feature distillation, Maestro ordered ranks + truncate",
         "entry point": "core.factorize.compress(model, budget=0.5)",
         "parameters on Linear(768, 768)": f"{after:,} at rank {RANK}, replacing {before:,}",
         "merges": "n/a: it replaces the layer (its factors multiply back to a dense weight)",
         "layer types": "Linear, Conv1d/2d/3d (ungrouped); Tucker/CP on convs; grouped/transposed convs and Embedding skipped"},
        {"tool": "core.watermark (Hot-Swap MarkBoard)",
         "what it is for": "Signing distributed models: an n-bit owner signature held by n of 2n swappable LoRA branches, "
                           "verified black-box from outputs on secret triggers, re-signed per user without retraining",
         "entry point": "core.watermark.embed(model, inputs, MarkBoardConfig(n_bits=8))",
         "parameters on Linear(768, 768)": f"{branch_params:,} per branch at rank {RANK}; a signature installs n branches, "
                                           "the owner keeps 2n; the merged copy adds 0",
         "merges": "yes (distribute merges the n branches into a plain copy)",
         "layer types": "those of core lora; triggers need float inputs"},
    ]


def purpose(name: str) -> str:
    if name in PURPOSE:
        return PURPOSE[name]
    doc = inspect.getdoc(get_adapter_class(name)) or ""
    return doc.splitlines()[0] if doc else "(third-party family; no docstring)"


def probe_layer(method: str, layer_type: str) -> tuple[bool, str]:
    """Whether ``method`` wraps ``layer_type`` with default options: apply, forward and backward all run."""
    make_layer, make_input = PROBE_LAYERS[layer_type]
    torch.manual_seed(0)
    model = nn.Sequential(make_layer())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply(model, method, rank=PROBE_RANK)
        out = model(make_input())
        out.float().square().mean().backward()
    except (ValueError, TypeError, RuntimeError) as exc:
        try:  # the family's own reason when it declares one, else the error apply/forward raised
            reason = get_adapter_class(method).unsupported_reason(geometry_of(make_layer()))
        except UnsupportedLayerError as layer_error:
            reason = str(layer_error)
        return False, reason or str(exc).splitlines()[0]
    return True, ""


def probe_merge(method: str) -> dict:
    """Merge a randomised adapter on ``Linear(16, 12)`` and compare outputs, or record the refusal."""
    make_layer, make_input = PROBE_LAYERS["Linear"]
    torch.manual_seed(0)
    model, x = nn.Sequential(make_layer()), make_input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply(model, method, rank=PROBE_RANK)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for adapter in adapter_layers(model).values():
            for _, p in adapter.adapter_parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        before = model(x)
        try:
            merge(model)
        except TypeError as exc:
            return {"merges": False, "reason": str(exc)}
        error = ((model(x) - before).abs().max() / before.abs().max()).item()
    return {"merges": True, "max_rel_error": error}


def reference_params(method: str) -> dict[str, int]:
    """``apply``'s count of the adapter's trainable parameters on each reference layer at rank ``RANK``."""
    counts = {}
    for name, make in REFERENCE_LAYERS.items():
        model = nn.Sequential(make())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts[name] = apply(model, method, rank=RANK).adapter_params
    return counts


def measure() -> dict:
    torch.set_num_threads(2)
    aliases: dict[str, list[str]] = {}
    for entry in list_adapters(include_aliases=True):
        if " (= " in entry:
            alias, target = entry[:-1].split(" (= ")
            aliases.setdefault(target, []).append(alias)
    rows = []
    for method in list_adapters():
        layers = {t: probe_layer(method, t) for t in PROBE_LAYERS}
        rows.append({
            "name": method,
            "aliases": aliases.get(method, []),
            "purpose": purpose(method),
            "params": reference_params(method),
            "merge": probe_merge(method),
            "layers": {t: ok for t, (ok, _) in layers.items()},
            "unsupported_reasons": {t: why for t, (ok, why) in layers.items() if not ok},
        })
    return {"rank": RANK, "probe_rank": PROBE_RANK, "reference_layers": list(REFERENCE_LAYERS), "layer_types": list(PROBE_LAYERS),
            "torch": torch.__version__, "families": rows, "other_core_tools": other_core_tools()}


def merge_cell(merge_result: dict) -> str:
    if merge_result["merges"]:
        return f"yes (max rel. error {merge_result['max_rel_error']:.0e})"
    return "no (nonlinear in the input)"


def render(result: dict) -> str:
    refs = result["reference_layers"]
    lines = [
        "# Core adapter families",
        "",
        "Written by `python bench/families_table.py` (raw numbers in `docs/core_families.json`); do not edit by hand.",
        f"Trainable parameters are `apply(...).adapter_params` at rank {result['rank']} with the family's default options",
        "(for `noble` they include the wrapped layer's own weight and bias, which train with the branch; for `sltrain` the bias,",
        "whose dense weight it replaces; for `hypelora` the shared hyper-network, which a model's further layers share).",
        f"\"merges\" merges a randomised rank-{result['probe_rank']} adapter on `Linear(16, 12)` and compares outputs.",
        "Layer types are probed: the family wraps a layer of that type alone (default options), and forward and backward run.",
        "",
        "| family | what it is for | " + " | ".join(f"params on {r}" for r in refs) + " | merges | layer types |",
        "|---|---|" + "---:|" * len(refs) + "---|---|",
    ]
    for row in result["families"]:
        name = f"`{row['name']}`" + (f" ({', '.join(f'`{a}`' for a in row['aliases'])})" if row["aliases"] else "")
        supported = [t for t, ok in row["layers"].items() if ok]
        missing = [t for t, ok in row["layers"].items() if not ok]
        types = ", ".join(supported) + (f"; not: {', '.join(missing)}" if missing else "")
        params = " | ".join(f"{row['params'][r]:,}" for r in refs)
        lines.append(f"| {name} | {row['purpose']} | {params} | {merge_cell(row['merge'])} | {types} |")
    lines += [
        "",
        "## Other core tools",
        "",
        "Tools that are not adapter families (their parameter cells measured by the same command):",
        "",
    ]
    if result["other_core_tools"]:
        lines += ["| " + " | ".join(OTHER_COLUMNS) + " |", "|" + "---|" * len(OTHER_COLUMNS)]
        lines += ["| " + " | ".join(str(tool.get(c, "")) for c in OTHER_COLUMNS) + " |" for tool in result["other_core_tools"]]
    else:
        lines.append("(none listed yet)")
    reasons = [(row["name"], t, why) for row in result["families"] for t, why in row["unsupported_reasons"].items()]
    if reasons:
        lines += ["", "## Why a layer type is not supported", "", "| family | layer type | reason (the library's own message) |", "|---|---|---|"]
        lines += [f"| `{name}` | {t} | {why.replace('|', '/')} |" for name, t, why in reasons]
    lines += ["", f"torch {result['torch']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "core_families.md", help="markdown page; the JSON goes beside it")
    args = parser.parse_args(argv)
    result = measure()
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, render(result))
    print(f"wrote {args.out} ({len(result['families'])} families)")


if __name__ == "__main__":
    main()
