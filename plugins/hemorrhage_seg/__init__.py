"""Hemorrhage segmentation plugin: TBI -> SAH transfer learning with low-rank adapters on MONAI UNets.

Seed paper: Minoccheri et al., "LoRA-based methods on Unet for transfer learning in (aneurysmal)
subarachnoid hematoma segmentation", arXiv 2508.01772. Host: MONAI, through the bundle in ``bundle/``
(its ``_target_`` functions are in :mod:`.bundle_targets`). Files: :mod:`.config`, :mod:`.model`,
:mod:`.recipes`, :mod:`.commands` (the ``lowrank-seg`` subcommands), :mod:`.weights`, :mod:`.metrics`.
Importing this package imports neither MONAI nor torch.
"""

from __future__ import annotations

from pathlib import Path

from lowrank_vision.plugins import PluginSpec

__all__ = ["PLUGIN", "demo"]


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """Short run for ``lowrank demo`` (:func:`.commands.demo`)."""
    from .commands import demo as run_demo

    return run_demo(Path(out_dir), device)


PLUGIN = PluginSpec(
    name="hemorrhage_seg",
    app="lowrank-seg",
    description="TBI->SAH hemorrhage segmentation: CP-LoRA/LoRA-C/convLoRA/DoRA variants on MONAI UNets (3-D, multi-view)",
    host="MONAI (bundle: configs/metadata.json, train.json, inference.json)",
    demo=demo,
)
