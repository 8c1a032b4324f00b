"""Hemorrhage segmentation plugin: TBI -> SAH transfer learning with low-rank adapters on MONAI UNets.

Seed paper: Minoccheri et al., "LoRA-based methods on Unet for transfer learning in (aneurysmal)
subarachnoid hematoma segmentation", arXiv 2508.01772. Host: MONAI (bundle in ``bundle/``).
Submodules import MONAI lazily; importing this package imports neither MONAI nor the recipe.
"""

from __future__ import annotations

from pathlib import Path

from lowrank_vision.plugins import PluginSpec

__all__ = ["PLUGIN", "BUNDLE_DIR", "demo"]

BUNDLE_DIR = Path(__file__).parent / "bundle"


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """Short run for ``lowrank demo``: the shipped TBI UNet and its CP-LoRA SAH adapter on synthetic SAH
    volumes of a seed neither was trained on (seed 2), Dice before and after loading the adapter."""
    import dataclasses

    import torch

    from lowrank_vision.core import load

    from .inference import DEFAULT_ADAPTER, DEFAULT_BASE
    from .metrics import summarize_cases
    from .models import load_checkpoint
    from .recipe import PRESETS, evaluate, load_dataset, make_synthetic_data

    torch.set_num_threads(1)
    cfg = dataclasses.replace(PRESETS["cpu"], seed=2, cpu=(device == "cpu"))
    sah = load_dataset(make_synthetic_data(cfg, Path(out_dir) / "data")[1], cfg.windows)
    model, arch, _ = load_checkpoint(DEFAULT_BASE)
    before = summarize_cases(evaluate(model, sah, arch.divisor))
    load(model, DEFAULT_ADAPTER)
    after = summarize_cases(evaluate(model, sah, arch.divisor))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"sah_cases": before["n_cases"], "sah_dice_pretrained_only": round(before["dice_mean"], 4),
            "sah_dice_cp_lora_r8": round(after["dice_mean"], 4), "cp_lora_trainable_params": trainable,
            "unet_params": sum(p.numel() for p in model.parameters()) - trainable}


PLUGIN = PluginSpec(
    name="hemorrhage_seg",
    app="lowrank-seg",
    description="TBI->SAH hemorrhage segmentation: CP-LoRA/LoRA-C/convLoRA/DoRA variants on MONAI UNets (3-D, multi-view)",
    host="MONAI (bundle: configs/metadata.json, train.json, inference.json)",
    demo=demo,
)
