"""``lowrank demo``: what the product does, on the embedded defaults, on a CPU in minutes.

Stage 1 wraps every supported layer of a MONAI 3-D UNet and a timm ViT with each adapter
family, randomises the adapters, checks that the merged model gives the unmerged outputs and
counts trainable parameters. Then each installed domain plugin runs its short demo
(``PluginSpec.demo``), which returns its numbers, pictures and a sentence on what ran.
``<out>/demo.md`` is the page to read (pictures and numbers per plugin, then the adapter table
and chart); ``<out>/demo.json`` holds every number.
"""

from __future__ import annotations

import copy
import platform
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, count_parameters, list_adapters, merge, unmerge
from lowrank_vision.core.files import save_figure, write_json, write_text

__all__ = ["run_demo", "adapt_and_check", "DEMO_MODELS", "demo_methods", "render_page"]

DEMO_RANK = 8
DEMO_METHODS: Optional[list[str]] = None
"""Families the demo runs; ``None`` means every registered family (third-party ones included)."""


def demo_methods() -> list[str]:
    return list(DEMO_METHODS) if DEMO_METHODS is not None else list_adapters()


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
    _, full = count_parameters(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-parameterised ranks on thin layers are expected here
        report = apply(model, method, rank=rank)
    with torch.no_grad():
        for adapter in adapter_layers(model).values():
            for _, p in adapter.adapter_parameters():
                p.add_(torch.randn_like(p) * 0.02)
        unmerged = model(x)
        mergeable = all(a.mergeable for a in adapter_layers(model).values())
        merge_error = None
        if mergeable:
            merge(model)
            merged = model(x)
            unmerge(model)
            merge_error = ((merged - unmerged).abs().max() / unmerged.abs().max().clamp_min(1e-12)).item()
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

    methods = [r["method"] for r in next(iter(results.values()))]
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
    save_figure(fig, path)


def adapter_table(results: dict[str, list[dict]]) -> str:
    lines = ["| model | method | wrapped | trainable params | % of full | merge rel. error |", "|---|---|---|---|---|---|"]
    for model_name, rows in results.items():
        for r in rows:
            err = "n/a (nonlinear)" if r["merge_rel_error"] is None else f"{r['merge_rel_error']:.1e}"
            lines.append(f"| {model_name} | {r['method']} | {r['wrapped_layers']} | {r['trainable_params']:,} "
                         f"| {r['percent_of_full']:.3f} | {err} |")
    return "\n".join(lines)


def _number_rows(metrics: dict, prefix: str = "") -> list[str]:
    """Flatten a plugin's result dict into ``| name | value |`` rows (pictures and prose left out)."""
    rows = []
    for key, value in metrics.items():
        if key in ("figures", "summary"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _number_rows(value, prefix=f"{name}.")
        elif isinstance(value, float):
            rows.append(f"| {name} | {value:.4g} |")
        elif isinstance(value, (int, str, bool)) or value is None:
            rows.append(f"| {name} | {value} |")
    return rows


def render_page(summary: dict, out_dir: Path) -> str:
    """The markdown page a person reads: per plugin its pictures and numbers, then the adapter table and chart."""
    env = summary["environment"]
    lines = ["# lowrank demo", "",
             f"Made by `{env['command']}` on {env['device']} ({env['machine']}), torch {env['torch']}, "
             f"in {env['seconds']:.0f} s. Every number below was measured by this run; `demo.json` holds them all.", ""]
    for name, result in summary["plugins"].items():
        lines += [f"## {name} (`{result.get('app', '')}`)", ""]
        if "error" in result:
            lines += [f"**The demo failed:** `{result['error']}`", ""]
            continue
        if result.get("summary"):
            lines += [result["summary"], ""]
        for fig in result.get("figures", []):
            path, root = Path(fig["path"]).resolve(), Path(out_dir).resolve()  # plugins give absolute or cwd-relative paths
            rel = path.relative_to(root) if path.is_relative_to(root) else path
            lines += [f"![{fig.get('caption', '')}]({rel.as_posix()})", "", f"*{fig.get('caption', '')}*", ""]
        rows = _number_rows(result)
        if rows:
            lines += ["| number | value |", "|---|---|", *rows, ""]
    lines += ["## Adapter families on a MONAI 3-D UNet and a timm ViT", "",
              f"Each family wraps every supported layer at rank {DEMO_RANK}; merged and unmerged outputs are compared "
              f"in fp32 (worst relative error {summary['worst_merge_error']:.1e}).", "",
              adapter_table(summary["adapters"]), "", "![trainable parameters per family](trainable_params.png)", ""]
    return "\n".join(lines)


def run_demo(out_dir: Path, device: str = "cpu", plugins: bool = True, only: Optional[list[str]] = None) -> dict:
    """Run the adapter check and every plugin's demo; write demo.md, demo.json and the chart to ``out_dir``."""
    from tqdm import tqdm

    from lowrank_vision.plugins import discover_plugins

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = {n: s for n, s in discover_plugins().items() if s.demo is not None and (only is None or n in only)} if plugins else {}
    stages = 1 + len(specs)

    print(f"[1/{stages}] adapter families on {', '.join(DEMO_MODELS)}", flush=True)
    results: dict[str, list[dict]] = {}
    methods = demo_methods()
    for model_name in DEMO_MODELS:
        model, x = DEMO_MODELS[model_name]()
        model, x = model.to(device), x.to(device)
        for method in tqdm(methods, desc=model_name, unit="family", leave=False):
            results.setdefault(model_name, []).append(adapt_and_check(model, x, method))
    worst = max(r["merge_rel_error"] or 0.0 for rows in results.values() for r in rows)
    print(adapter_table(results))
    print(f"worst merged-vs-unmerged relative error: {worst:.2e} (fp32)", flush=True)
    if worst > 1e-4:
        raise SystemExit(f"merge check failed: relative error {worst:.2e} > 1e-4")
    plot_trainable(results, out_dir / "trainable_params.png")

    summary: dict = {"adapters": results, "worst_merge_error": worst, "plugins": {}}
    for i, (name, spec) in enumerate(specs.items(), start=2):
        print(f"[{i}/{stages}] plugin {name} ({spec.app})", flush=True)
        t0 = time.perf_counter()
        try:
            result = dict(spec.demo(out_dir / name, device))
        except Exception as exc:  # one broken plugin must not hide the others' results
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["app"] = spec.app
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"      done in {result['seconds']} s" + (f" -- FAILED: {result['error']}" if "error" in result else ""), flush=True)
        summary["plugins"][name] = result

    summary["environment"] = {
        "command": "lowrank demo" + ("" if device == "cpu" else f" --device {device}"),
        "device": device, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "seconds": time.perf_counter() - start,
    }
    write_text(out_dir / "demo.md", render_page(summary, out_dir))
    write_json(out_dir / "demo.json", summary)
    print(f"wrote {out_dir / 'demo.md'} (open it), {out_dir / 'demo.json'}, {out_dir / 'trainable_params.png'}")
    failed = [n for n, r in summary["plugins"].items() if "error" in r]
    if failed:
        raise SystemExit(f"plugin demo(s) failed: {', '.join(failed)} (see {out_dir / 'demo.md'})")
    return summary
