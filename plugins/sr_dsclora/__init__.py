"""sr_dsclora: SPAN efficient super-resolution fine-tuned with DSCLoRA.

Chai et al., "Distillation-Supervised Convolutional Low-Rank Adaptation for Efficient Image
Super-Resolution" (arXiv 2504.11271), on SPAN (Wan et al., arXiv 2405.00602). ConvLoRA comes from
the core (``lowrank_vision.core.apply(model, "conv_lora", ...)``); after merging, the deployed
network is a plain SPAN with the same parameters and FLOPs. Host: SPAN-compatible state dicts
(:mod:`.weights`), nothing to register at import. App: ``lowrank-sr``.

Importing this package is cheap (no torch model code): :mod:`.config`, :mod:`.model`,
:mod:`.distill`, :mod:`.recipes`, :mod:`.commands`, :mod:`.weights`, :mod:`.metrics` hold the parts.
"""

from __future__ import annotations

from lowrank_vision.plugins import PluginSpec, lazy_demo

__all__ = ["PLUGIN"]


PLUGIN = PluginSpec(
    name="sr_dsclora",
    app="lowrank-sr",
    description="SPAN efficient super-resolution + DSCLoRA (ConvLoRA, spatial-affinity distillation), merged to plain SPAN",
    host="SPAN-compatible state dicts (SPAN / spandrel layout), ONNX",
    demo=lazy_demo(__name__),
)
