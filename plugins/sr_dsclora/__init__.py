"""sr_dsclora: SPAN efficient super-resolution fine-tuned with DSCLoRA.

Chai et al., "Distillation-Supervised Convolutional Low-Rank Adaptation for Efficient Image
Super-Resolution" (arXiv 2504.11271), on SPAN (Wan et al., arXiv 2405.00602). ConvLoRA comes from
the core (``lowrank_vision.core.apply(model, "conv_lora", ...)``); after merging, the deployed
network is a plain SPAN with the same parameters and FLOPs. App: ``lowrank-sr``.
"""

from __future__ import annotations

from pathlib import Path

from lowrank_vision.plugins import PluginSpec

from .distill import DSCLoRAConfig, DistillationLoss, attach_dsclora, fold_dsclora
from .span import SPAN, SPANConfig, build_span, count_params, deployed_param_count, reparameterize

__all__ = [
    "PLUGIN",
    "SPAN",
    "SPANConfig",
    "build_span",
    "reparameterize",
    "count_params",
    "deployed_param_count",
    "DSCLoRAConfig",
    "DistillationLoss",
    "attach_dsclora",
    "fold_dsclora",
    "demo",
]


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """Score the shipped x4 SPAN and DSCLoRA weights and bicubic on the bundled eval photos (< 60 s)."""
    from lowrank_vision.datasets.sr_data import bicubic_upsample, load_eval_set

    from .io import default_weights, load_span
    from .recipes import evaluate, upscale
    from .report import plot_comparison, write_json

    out_dir = Path(out_dir)
    images = load_eval_set(None, 4)
    metrics: dict = {}
    outputs = {}
    for kind in ("span", "dsclora"):
        model = load_span(default_weights(kind, 4)).to(device)
        scores = evaluate(model, images, 4)
        metrics[f"{kind}_psnr"], metrics[f"{kind}_ssim"] = scores["psnr"], scores["ssim"]
        metrics[f"{kind}_params"] = count_params(model)
        outputs[kind] = upscale(model, images[0].lr.to(device)).cpu()
    bicubic = evaluate(None, images, 4)
    metrics["bicubic_psnr"], metrics["bicubic_ssim"] = bicubic["psnr"], bicubic["ssim"]
    plot_comparison(
        [("bicubic", bicubic_upsample(images[0].lr[None], 4)[0]), ("SPAN", outputs["span"]), ("DSCLoRA", outputs["dsclora"]), ("HR", images[0].hr)],
        out_dir / "sr_demo.png",
        crop=(180, 180, 160),
    )
    write_json(metrics, out_dir / "sr_demo.json")
    return metrics


PLUGIN = PluginSpec(
    name="sr_dsclora",
    app="lowrank-sr",
    description="SPAN efficient super-resolution + DSCLoRA (ConvLoRA, spatial-affinity distillation), merged to plain SPAN",
    host="SPAN-compatible state dicts (SPAN / spandrel layout), ONNX",
    demo=demo,
)
