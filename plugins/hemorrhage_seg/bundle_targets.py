"""The ``_target_`` functions of the MONAI bundle in ``bundle/`` (``configs/inference.json``, ``configs/train.json``).

The bundle builds the shipped TBI UNet with the shipped CP-LoRA SAH adapter layers (unmerged),
loads ``models/model.pt`` into it, brings each volume to the network's canonical grid (``spacing`` in the
configs, the same as the ``geometry`` of the shipped checkpoint) with :class:`ToCanonicald`, windows HU
images with :class:`lowrank_vision.datasets.ct.readers.HUWindowd`, and runs :func:`bundle_infer` or
:func:`bundle_train`. :class:`FromCanonicald` puts the prediction back on the input's exact grid and affine
(the same code as ``lowrank-seg predict``: :mod:`lowrank_vision.datasets.ct.geometry`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

__all__ = ["bundle_network", "load_bundle_weights", "bundle_infer", "bundle_train", "ToCanonicald", "FromCanonicald"]


class ToCanonicald:
    """Dictionary transform: the (1, x, y, z) HU MetaTensor under ``key`` goes to the canonical grid of ``spacing``
    mm (RAS); the input's grid map and meta data are kept under ``key + "_grid_map"`` and ``key + "_input_meta"``."""

    def __init__(self, key: str = "image", spacing=(3.75, 3.75, 10.5)):
        from lowrank_vision.datasets.ct.geometry import CanonicalGrid

        self.key, self.grid = key, CanonicalGrid(tuple(spacing))

    def __call__(self, data: dict) -> dict:
        import numpy as np
        from monai.data import MetaTensor

        from lowrank_vision.datasets.ct.geometry import to_canonical

        out, img = dict(data), data[self.key]
        x, gm = to_canonical(np.asarray(img)[0], np.asarray(img.affine), self.grid)
        out[self.key] = MetaTensor(x[None], affine=torch.as_tensor(gm.canonical_affine), meta={
            k: v for k, v in img.meta.items() if k in ("filename_or_obj", "space")})
        out[self.key + "_grid_map"], out[self.key + "_input_meta"] = gm, dict(img.meta)
        return out


class FromCanonicald:
    """Dictionary transform: the (1, ...) canonical-grid prediction under ``key`` back onto the input's exact grid
    (linear interpolation of probabilities), with the input's meta data (affine, file name)."""

    def __init__(self, key: str = "pred", source: str = "image"):
        self.key, self.source = key, source

    def __call__(self, data: dict) -> dict:
        from monai.data import MetaTensor

        from lowrank_vision.datasets.ct.geometry import from_canonical

        out = dict(data)
        back = from_canonical(torch.as_tensor(data[self.key]).as_subclass(torch.Tensor), data[self.source + "_grid_map"])
        out[self.key] = MetaTensor(back, meta=dict(data[self.source + "_input_meta"]))
        return out


def bundle_network(base: Optional[str] = None, adapter: Optional[str] = None, merge: bool = False) -> nn.Module:
    """``network_def`` of the bundle: the TBI UNet with the SAH adapter layers (unmerged, so
    ``train.json`` can keep training only the adapter). ``None`` picks the shipped weights."""
    from .weights import DEFAULT_ADAPTER, load_model

    return load_model(base, adapter if adapter is not None else DEFAULT_ADAPTER, merge=merge)[0]


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
def bundle_infer(network: nn.Module, dataset, inferer, postprocessing, device) -> list[str]:
    """The bundle's ``run``: segment every item of ``dataset`` (one volume at a time: each has its own grid map),
    undo padding and canonical grid, save masks; returns the written paths."""
    from tqdm.auto import tqdm

    network.eval()
    written = []
    for item in tqdm(dataset, desc="segment"):
        item["pred"] = inferer(item["image"][None].to(device), network)[0].cpu()
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
