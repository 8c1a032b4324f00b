"""``lowrank demo``: every adapter family on a MONAI 3-D UNet and a timm ViT, then each plugin's short run.

For each family the demo wraps every supported layer, randomises the adapter, checks that the
merged model gives the unmerged outputs, and reports trainable parameters. Results go to
``<out>/demo.json``, ``<out>/demo.md`` and ``<out>/trainable_params.png``.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, merge, unmerge
from lowrank_vision.core.adapters import list_adapters

DEMO_METHODS = ["lora", "conv_lora", "cp_lora", "dora", "conv_dora", "cp_dora", "nola", "nera"]
DEMO_RANK = 8


def monai_unet3d() -> tuple[nn.Module, torch.Tensor]:
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    return net, torch.randn(1, 1, 32, 32, 32)


def timm_vit() -> tuple[nn.Module, torch.Tensor]:
    import timm

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10)
    return net, torch.randn(2, 3, 64, 64)


DEMO_MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {"MONAI UNet 3D": monai_unet3d, "timm ViT-Ti/16": timm_vit}


def adapt_and_check(model: nn.Module, x: torch.Tensor, method: str, rank: int = DEMO_RANK, seed: int = 0) -> dict:
    """Apply ``method`` to a copy of ``model``, randomise it, and measure the merge error."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model).eval()
    full = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-parameterised ranks on thin layers are expected here
        report = apply(model, method, rank=rank)
    with torch.no_grad():
        for adapter in adapter_layers(model).values():
            for _, p in adapter.adapter_parameters():
                p.add_(torch.randn_like(p) * 0.02)
        unmerged = model(x)
        mergeable = all(a.mergeable for a in adapter_layers(model).values())
        if mergeable:
            merge(model)
            merged = model(x)
            unmerge(model)
            merge_error = ((merged - unmerged).abs().max() / unmerged.abs().max().clamp_min(1e-12)).item()
        else:
            merge_error = None
    return {
        "method": method,
        "wrapped_layers": len(report.wrapped),
        "skipped_layers": len(report.skipped),
        "trainable_params": report.trainable_params,
        "full_params": full,
        "percent_of_full": 100.0 * report.trainable_params / full,
        "merge_rel_error": merge_error,
    }


def plot_trainable(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = DEMO_METHODS
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(len(results), 1)
    for i, (model_name, rows) in enumerate(results.items()):
        by_method = {r["method"]: r["trainable_params"] for r in rows}
        xs = [j + i * width for j in range(len(methods))]
        ax.bar(xs, [by_method.get(m, 0) for m in methods], width, label=f"{model_name} (full: {rows[0]['full_params']:,})")
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(methods))], methods, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel(f"trainable parameters (rank {DEMO_RANK})")
    ax.set_title("lowrank-vision: trainable parameters per adapter family")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def markdown_table(results: dict[str, list[dict]]) -> str:
    lines = ["| model | method | wrapped | trainable params | % of full | merge rel. error |", "|---|---|---|---|---|---|"]
    for model_name, rows in results.items():
        for r in rows:
            err = "n/a (nonlinear)" if r["merge_rel_error"] is None else f"{r['merge_rel_error']:.1e}"
            lines.append(f"| {model_name} | {r['method']} | {r['wrapped_layers']} | {r['trainable_params']:,} | {r['percent_of_full']:.3f} | {err} |")
    return "\n".join(lines)


def run_demo(out_dir: Path, device: str = "cpu", plugins: bool = True) -> dict:
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    jobs = [(name, method) for name in DEMO_MODELS for method in DEMO_METHODS]
    built = {}
    for model_name, method in tqdm(jobs, desc="adapters", unit="run"):
        if model_name not in built:
            model, x = DEMO_MODELS[model_name]()
            built[model_name] = (model.to(device), x.to(device))
        model, x = built[model_name]
        results.setdefault(model_name, []).append(adapt_and_check(model, x, method))
    table = markdown_table(results)
    print(table)
    summary: dict = {"adapters": results, "plugins": {}}
    worst = max(r["merge_rel_error"] or 0.0 for rows in results.values() for r in rows)
    print(f"\nworst merged-vs-unmerged relative error: {worst:.2e} (fp32)")
    if worst > 1e-4:
        raise SystemExit(f"merge check failed: relative error {worst:.2e} > 1e-4")
    plot_trainable(results, out_dir / "trainable_params.png")

    if plugins:
        from lowrank_vision.plugins import discover_plugins

        for name, spec in discover_plugins().items():
            if spec.demo is None:
                continue
            print(f"\n== plugin {name} ({spec.app}) ==")
            start = time.perf_counter()
            metrics = spec.demo(out_dir / name, device)
            metrics["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(metrics, indent=1, default=str))
            summary["plugins"][name] = metrics
    (out_dir / "demo.md").write_text("# lowrank demo\n\n" + table + "\n")
    tmp = out_dir / "demo.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, out_dir / "demo.json")
    print(f"\nwrote {out_dir / 'demo.md'}, {out_dir / 'demo.json'}, {out_dir / 'trainable_params.png'}")
    return summary
