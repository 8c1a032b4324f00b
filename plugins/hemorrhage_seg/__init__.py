"""Hemorrhage segmentation plugin: TBI -> SAH transfer learning with low-rank adapters on MONAI UNets.

Seed paper: Minoccheri et al., "LoRA-based methods on Unet for transfer learning in (aneurysmal)
subarachnoid hematoma segmentation", arXiv 2508.01772. Host: MONAI, through the bundle in ``bundle/``
(its ``_target_`` functions are in :mod:`.bundle_targets`). Files: :mod:`.config`, :mod:`.model`,
:mod:`.recipes`, :mod:`.commands` (the ``lowrank-seg`` subcommands), :mod:`.weights`, :mod:`.metrics`.
Importing this package imports neither MONAI nor torch.
"""

from __future__ import annotations

from lowrank_vision.plugins import PluginSpec, lazy_demo

__all__ = ["PLUGIN"]


PLUGIN = PluginSpec(
    name="hemorrhage_seg",
    app="lowrank-seg",
    description="TBI->SAH hemorrhage segmentation: CP-LoRA/LoRA-C/convLoRA/DoRA variants on MONAI UNets (3-D, multi-view)",
    host="MONAI (bundle: configs/metadata.json, train.json, inference.json)",
    demo=lazy_demo(__name__),
)
