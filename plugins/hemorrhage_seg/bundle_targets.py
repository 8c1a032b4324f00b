"""The ``_target_`` functions of the MONAI bundle in ``bundle/`` (``configs/inference.json``, ``configs/train.json``).

The bundle builds the shipped TBI UNet with the shipped CP-LoRA SAH adapter layers (unmerged),
loads ``models/model.pt`` into it, windows HU images with
:class:`lowrank_vision.datasets.ct.readers.HUWindowd`, and runs :func:`bundle_infer` or :func:`bundle_train`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

__all__ = ["bundle_network", "load_bundle_weights", "bundle_infer", "bundle_train"]


def bundle_network(base: Optional[str] = None, adapter: Optional[str] = None, merge: bool = False) -> nn.Module:
    """``network_def`` of the bundle: the TBI UNet with the SAH adapter layers (unmerged, so
    ``train.json`` can keep training only the adapter). ``None`` picks the shipped weights."""
    from .weights import DEFAULT_ADAPTER, load_model

    net, _, _ = load_model(base, adapter if adapter is not None else DEFAULT_ADAPTER, merge=merge)
    return net


def load_bundle_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``models/model.pt`` (state dict of the adapter-wrapped UNet) into ``network``; clear error on mismatch."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bundle weights {p} do not exist")
    sd = torch.load(p, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(sd)
    except RuntimeError as exc:
        raise ValueError(f"bundle weights {p} do not fit the bundle network: {exc}") from exc
    return network


@torch.no_grad()
def bundle_infer(network: nn.Module, dataloader, inferer, postprocessing, device) -> list[str]:
    """The bundle's ``run``: segment every item, invert the padding, save masks; returns the written paths."""
    from monai.data import decollate_batch
    from tqdm.auto import tqdm

    network.eval()
    written = []
    for batch in tqdm(dataloader, desc="segment"):
        batch["pred"] = inferer(batch["image"].to(device), network).cpu()
        for item in decollate_batch(batch):
            out = postprocessing(item)
            written.append(str(out["pred"].meta.get("saved_to", "")))
    return written


def bundle_train(network: nn.Module, dataloader, config, save_path: str | os.PathLike) -> dict:
    """The bundle's ``train`` run: only the adapter parameters train (every other parameter is frozen)."""
    from lowrank_vision.core import adapter_layers
    from lowrank_vision.core.train import fit

    from .model import save_torch
    from .recipes import seg_loss

    network.requires_grad_(False)
    for layer in adapter_layers(network).values():
        for _, p in layer.adapter_parameters():
            p.requires_grad_(True)
    res = fit(network, dataloader, seg_loss, config)
    out = save_torch(res.model.state_dict(), save_path)
    return {"steps": res.steps, "final_loss": res.final_loss, "saved": str(out)}
