"""Load the (adapter-wrapped) UNet and segment NIfTI files; helpers the MONAI bundle points at.

The shipped default weights live next to this file in ``weights/`` (how they were made:
``weights/README.md``): ``tbi_unet.pt`` (UNet pre-trained on synthetic TBI) and
``sah_cp_lora_r8/`` (a CP-LoRA rank-8 adapter fine-tuned on synthetic SAH).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .models import UNetConfig, load_checkpoint, pad_to_multiple

__all__ = ["WEIGHTS_DIR", "DEFAULT_BASE", "DEFAULT_ADAPTER", "load_model", "segment_file", "bundle_network", "BundleWindowd",
           "load_bundle_weights", "bundle_infer", "bundle_train"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_BASE = WEIGHTS_DIR / "tbi_unet.pt"
DEFAULT_ADAPTER = WEIGHTS_DIR / "sah_cp_lora_r8"


def load_model(base: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None,
               merge: bool = True) -> tuple[nn.Module, UNetConfig, tuple[str, ...]]:
    """``(model in eval mode, arch, windows)`` from a base checkpoint and an optional adapter folder."""
    net, arch, ckpt = load_checkpoint(base or DEFAULT_BASE)
    if adapter is not None:
        from lowrank_vision.core import load, merge as merge_adapters

        a = Path(adapter)
        if not (a / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {a} has no adapter_config.json")
        try:
            load(net, a)
        except Exception as exc:
            raise ValueError(f"adapter {a} does not fit the base network of {base or DEFAULT_BASE}: {exc}") from exc
        if merge:
            merge_adapters(net)
    return net.eval(), arch, tuple(ckpt.get("windows", ("brain", "subdural")))


@torch.no_grad()
def volume_probability(model: nn.Module, image: torch.Tensor, arch: UNetConfig, max_whole_voxels: int = 160 * 160 * 48,
                       roi: tuple[int, int, int] = (128, 128, 32)) -> torch.Tensor:
    """Hemorrhage probability (x, y, z) of one windowed image (C, x, y, z).

    Volumes up to ``max_whole_voxels`` go through the network in one pass (zero-padded to a multiple
    of the UNet's stride product); larger ones through MONAI's Gaussian-weighted sliding window of
    ``roi`` voxels with 25 % overlap (instance normalisation then sees one window at a time).
    """
    model.eval()
    dev = next(model.parameters()).device
    if image[0].numel() <= max_whole_voxels:
        x, crop = pad_to_multiple(image.unsqueeze(0), arch.divisor)
        return torch.sigmoid(model(x.to(dev)).float())[crop][0, 0].cpu()
    from monai.inferers import sliding_window_inference

    if any(r % arch.divisor for r in roi):
        raise ValueError(f"roi {roi} must be multiples of {arch.divisor}")
    x, crop = pad_to_multiple(image.unsqueeze(0), arch.divisor)
    logits = sliding_window_inference(x.to(dev), roi_size=roi, sw_batch_size=1, predictor=model, overlap=0.25, mode="gaussian")
    return torch.sigmoid(logits.float())[crop][0, 0].cpu()


@torch.no_grad()
def segment_file(in_path: str | os.PathLike, out_path: str | os.PathLike, model: nn.Module, arch: UNetConfig,
                 windows, threshold: float = 0.5, max_whole_voxels: int = 160 * 160 * 48) -> dict:
    """Segment one NIfTI CT volume (HU) and write the uint8 mask with the input's affine/header."""
    from lowrank_vision.datasets.ct_readers import load_nifti, save_mask_like, window_hu

    from .metrics import volume_ml

    hu, affine, header = load_nifti(in_path)
    prob = volume_probability(model, window_hu(hu, windows), arch, max_whole_voxels).numpy()
    mask = (prob > threshold).astype(np.uint8)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    save_mask_like(mask, header, affine, out_path)
    return {"input": str(in_path), "output": str(out_path), "blood_ml": volume_ml(mask, spacing),
            "voxels": int(mask.sum()), "spacing_mm": [float(s) for s in spacing]}


# ----------------------------------------------------------------------------- MONAI bundle targets


def bundle_network(base: Optional[str] = None, adapter: Optional[str] = None, merge: bool = False) -> nn.Module:
    """``network_def`` of the bundle: the TBI UNet with the SAH adapter layers (unmerged, so
    ``train.json`` can keep training only the adapter). ``None`` picks the shipped weights."""
    net, _, _ = load_model(base, adapter if adapter is not None else DEFAULT_ADAPTER, merge=merge)
    return net


class BundleWindowd:
    """Bundle transform: HU image (1, x, y, z) -> the checkpoint's windows as channels, [0, 1]."""

    def __init__(self, keys=("image",), windows=("brain", "subdural")):
        self.keys, self.windows = tuple(keys), tuple(windows)

    def __call__(self, data):
        from lowrank_vision.datasets.ct_readers import window_hu

        out = dict(data)
        for k in self.keys:
            img = data[k]
            win = window_hu(torch.as_tensor(np.asarray(img))[0], self.windows)
            if hasattr(img, "copy_meta_from"):
                from monai.data import MetaTensor

                win = MetaTensor(win, meta=img.meta, applied_operations=img.applied_operations)
            out[k] = win
        return out


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
    """The bundle's ``train`` run: only the adapter parameters train (the rest is frozen by construction)."""
    from lowrank_vision.core.train import fit

    from .recipe import seg_loss

    for name, p in network.named_parameters():
        p.requires_grad_(_is_adapter_param(network, name))
    res = fit(network, dataloader, seg_loss, config)
    out = Path(save_path)
    tmp = out.with_name(".tmp_" + out.name)
    torch.save(res.model.state_dict(), tmp)
    os.replace(tmp, out)
    return {"steps": res.steps, "final_loss": res.final_loss, "saved": str(out)}


def _is_adapter_param(network: nn.Module, name: str) -> bool:
    """True for a parameter that belongs to an adapter layer but not to its wrapped base layer."""
    from lowrank_vision.core.adapters import AdapterLayer

    parents = name.split(".")
    for i in range(len(parents) - 1, 0, -1):
        if isinstance(network.get_submodule(".".join(parents[:i])), AdapterLayer):
            return "base_layer" not in parents[i:]
    return False
