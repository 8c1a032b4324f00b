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
    """Short run for ``lowrank demo``: tiny TBI pre-training, CP-LoRA SAH fine-tuning, one prediction."""
    import dataclasses

    import torch

    from .recipe import PRESETS, evaluate, finetune, fold_indices, load_dataset, pretrain
    from .metrics import summarize_cases
    from .models import load_checkpoint

    torch.set_num_threads(1)
    out = Path(out_dir)
    cfg = dataclasses.replace(PRESETS["tiny"], cpu=(device == "cpu"))
    m = pretrain(cfg, out / "data", out / "tbi_unet.pt", progress=False)
    base, arch, _ = load_checkpoint(out / "tbi_unet.pt")
    sah = load_dataset(out / "data" / "sah", cfg.windows)
    test = fold_indices(len(sah), cfg.folds, cfg.seed)[0]
    train = [i for i in range(len(sah)) if i not in test]
    model, n_train = finetune(base, sah, train, "cp_lora", 8, cfg, progress=False)
    before = summarize_cases(evaluate(base, sah, arch.divisor, test))["dice_mean"]
    after = summarize_cases(evaluate(model, sah, arch.divisor, test))["dice_mean"]
    return {"tbi_heldout_dice": m["tbi_heldout_dice"], "sah_dice_pretrained": before, "sah_dice_cp_lora_r8": after,
            "cp_lora_trainable_params": n_train, "unet_params": m["params"]}


PLUGIN = PluginSpec(
    name="hemorrhage_seg",
    app="lowrank-seg",
    description="TBI->SAH hemorrhage segmentation: CP-LoRA/LoRA-C/convLoRA/DoRA variants on MONAI UNets (3-D, multi-view)",
    host="MONAI (bundle: configs/metadata.json, train.json, inference.json)",
    demo=demo,
)
