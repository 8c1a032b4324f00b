"""Model bundles: one safetensors file with the (adapter-merged) model, the PCA and a JSON record.

A bundle holds everything ``predict`` needs: the architecture (variant + config), the
PCA fitted on the training pixels (``pca.*`` tensors), the patch size, class names, and
how it was made (recipe, command, metrics). LoRA models are saved merged: the adapters
are folded into the base weights, so a bundle loads into the plain architecture.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lowrank_vision.datasets.hsi_io import atomic_path
from lowrank_vision.datasets.hsi_split import PCA

__all__ = ["save_bundle", "load_bundle", "baked_state_dict", "build_architecture", "DEFAULT_WEIGHTS",
           "load_default_weights", "BundleError"]

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "lola_specvit_tiny_synthetic.safetensors"
_META_KEY = "lowrank_hsi"


class BundleError(ValueError):
    """A bundle file that is missing, corrupt, or made for another model."""


def baked_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the plain architecture: adapters merged into the base weights, adapter params dropped."""
    from lowrank_vision.core import AdapterLayer, merge

    if not any(isinstance(m, AdapterLayer) for m in model.modules()):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    m = copy.deepcopy(model).cpu()
    merge(m)
    adapters = {n for n, mod in m.named_modules() if isinstance(mod, AdapterLayer)}
    sd = m.state_dict()
    out = {}
    for key, value in sd.items():
        parent, _, leaf = key.rpartition(".")
        # "<layer>.base_layer.<param>" -> "<layer>.<param>"; other tensors of an adapter layer are its factors
        owner = next((a for a in adapters if parent == a or parent.startswith(a + ".")), None)
        if owner is None:
            out[key] = value.detach().clone()
        elif parent == owner + ".base_layer":
            out[f"{owner}.{leaf}"] = value.detach().clone()
    return out


def build_architecture(meta: dict) -> nn.Module:
    """Rebuild the (adapter-free) architecture recorded in a bundle's metadata."""
    arch = meta.get("arch")
    if arch == "lola_specvit":
        from .specvit import LoLASpecViT, SpecViTConfig

        return LoLASpecViT(SpecViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model_cfg"].items()}))
    if arch == "hybridsn":
        from .baselines import HybridSN

        return HybridSN(**meta["model_cfg"])
    raise BundleError(f"bundle: unknown architecture {arch!r}; expected 'lola_specvit' or 'hybridsn'")


def save_bundle(path: Path, model: nn.Module, pca: PCA, meta: dict[str, Any]) -> Path:
    """Write ``model`` (merged), ``pca`` and ``meta`` (JSON-serialisable) to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.contiguous() for k, v in baked_state_dict(model).items()}
    tensors.update({f"pca.{k}": v for k, v in pca.state_dict().items()})
    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    return path


def load_bundle(path: Path, map_location: str = "cpu") -> tuple[nn.Module, PCA, dict]:
    """Read a bundle: returns ``(model in eval mode, pca, meta)``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights: no such file {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device=map_location) as f:
            raw_meta = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"weights: {str(path)!r} is not a readable safetensors file ({exc})") from exc
    if raw_meta is None:
        raise BundleError(f"weights: {str(path)!r} has no '{_META_KEY}' metadata; not an HSI bundle")
    meta = json.loads(raw_meta)
    model = build_architecture(meta)
    sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"weights: {str(path)!r} does not match its recorded architecture ({exc})") from exc
    pca = PCA.from_state_dict({k[len("pca."):]: v.numpy() for k, v in tensors.items() if k.startswith("pca.")})
    return model.eval(), pca, meta


def load_default_weights(model: nn.Module, variant: Optional[str] = None) -> nn.Module:
    """Load the shipped synthetic-default weights into ``model`` (timm ``pretrained=True``)."""
    if variant not in (None, "lola_specvit_tiny"):
        raise BundleError(f"pretrained: only lola_specvit_tiny ships weights, not {variant!r}")
    if not DEFAULT_WEIGHTS.exists():
        raise BundleError(f"pretrained: {str(DEFAULT_WEIGHTS)!r} is missing (run scripts/make_default_weights.py)")
    shipped, _, meta = load_bundle(DEFAULT_WEIGHTS)
    want = meta["model_cfg"]
    if getattr(model, "in_chans", None) != want["in_chans"] or getattr(model, "num_classes", None) != want["num_classes"]:
        raise BundleError(
            f"pretrained: the shipped weights need in_chans={want['in_chans']}, num_classes={want['num_classes']}; "
            f"got in_chans={getattr(model, 'in_chans', None)}, num_classes={getattr(model, 'num_classes', None)}"
        )
    model.load_state_dict(shipped.state_dict())
    return model
