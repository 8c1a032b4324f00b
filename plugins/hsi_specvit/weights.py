"""Model bundles and the shipped weights: one safetensors file with the (adapter-merged) model, the PCA and a record.

A bundle holds everything ``predict`` needs: the architecture (variant + config), the
PCA fitted on the training pixels (``pca.*`` tensors), the patch size, class names, and
how it was made (recipe, command, metrics). LoRA models are saved merged: the adapters
are folded into the base weights, so a bundle loads into the plain architecture.

The shipped bundle :data:`DEFAULT_WEIGHTS` is made by the plugin's own command,
:data:`DEFAULT_WEIGHTS_COMMAND` (``lowrank-hsi train ... --weights-out``); that command also
writes the bundle's card (:func:`write_card`, ``<bundle>.md``) from the numbers it measured.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lowrank_vision.core import adapter_layers, count_parameters, remove
from lowrank_vision.core.files import atomic_path, write_text
from lowrank_vision.datasets.hsi.split import PCA

__all__ = ["save_bundle", "load_bundle", "baked_state_dict", "build_architecture", "write_card", "card_path",
           "DEFAULT_WEIGHTS", "DEFAULT_WEIGHTS_COMMAND", "load_default_weights", "BundleError"]

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "lola_specvit_tiny_synthetic.safetensors"
DEFAULT_WEIGHTS_COMMAND = ("lowrank-hsi train --method full --steps 300 "
                           "--weights-out plugins/hsi_specvit/weights/lola_specvit_tiny_synthetic.safetensors")
"""How :data:`DEFAULT_WEIGHTS` is made (CPU, a few minutes; the synthetic default, split seed 0)."""
_META_KEY = "lowrank_hsi"


class BundleError(ValueError):
    """A bundle file that is missing, corrupt, or made for another model."""


def baked_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the plain architecture: on a copy, adapters merged into the base weights and removed."""
    plain = copy.deepcopy(model).cpu()
    if adapter_layers(plain):
        remove(plain, keep_merged=True)
    return {k: v.detach().clone() for k, v in plain.state_dict().items()}


def build_architecture(meta: dict) -> nn.Module:
    """Rebuild the (adapter-free) architecture recorded in a bundle's metadata."""
    arch = meta.get("arch")
    if arch == "lola_specvit":
        from .model import LoLASpecViT, SpecViTConfig

        return LoLASpecViT(SpecViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model_cfg"].items()}))
    if arch == "hybridsn":
        from .model import HybridSN

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
    """Read a bundle: returns ``(model in eval mode on map_location, pca, meta)``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights: no such file {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
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
    return model.to(map_location).eval(), pca, meta


def load_default_weights(model: nn.Module, variant: Optional[str] = None) -> nn.Module:
    """Load the shipped synthetic-default weights into ``model`` (timm ``pretrained=True``)."""
    if variant not in (None, "lola_specvit_tiny"):
        raise BundleError(f"pretrained: only lola_specvit_tiny ships weights, not {variant!r}")
    if not DEFAULT_WEIGHTS.exists():
        raise BundleError(f"pretrained: {str(DEFAULT_WEIGHTS)!r} is missing; make it with `{DEFAULT_WEIGHTS_COMMAND}`")
    shipped, _, meta = load_bundle(DEFAULT_WEIGHTS)
    want = meta["model_cfg"]
    if getattr(model, "in_chans", None) != want["in_chans"] or getattr(model, "num_classes", None) != want["num_classes"]:
        raise BundleError(
            f"pretrained: the shipped weights need in_chans={want['in_chans']}, num_classes={want['num_classes']}; "
            f"got in_chans={getattr(model, 'in_chans', None)}, num_classes={getattr(model, 'num_classes', None)}"
        )
    model.load_state_dict(shipped.state_dict())
    return model


def card_path(bundle: Path) -> Path:
    """``<bundle>.md``: the card written beside a bundle by the command that made it."""
    return Path(bundle).with_suffix(".md")


def write_card(bundle: Path) -> Path:
    """Write ``<bundle>.md`` from the bundle's own record (every number comes from the run that made it)."""
    bundle = Path(bundle)
    model, pca, meta = load_bundle(bundle)
    _, params = count_parameters(model)
    recipe, data, test = meta.get("recipe", {}), meta.get("data", {}), meta.get("test") or {}
    cfg = meta.get("model_cfg", {})
    lines = [
        f"# `{bundle.name}`", "",
        "*Written by `lowrank_vision.plugins.hsi_specvit.weights.write_card` from the bundle's record; "
        "do not edit by hand.*", "",
        f"- architecture: {meta.get('arch')} ({recipe.get('model', '')}), {params:,} parameters, "
        f"{cfg.get('in_chans')} input bands, {cfg.get('num_classes')} classes, {meta.get('patch')}x{meta.get('patch')} patches",
        f"- training: method `{recipe.get('method')}` on `{meta.get('source')}`",
        f"- input: {pca.n_components} {str(data.get('reduction', 'pca')).upper()} components (whiten={data.get('whiten')}) "
        f"of {pca.in_bands} bands, fitted on the training pixels only",
        f"- split: `{data.get('split', 'blocks')}` (block {data.get('block')}, fractions train/val/test {data.get('fractions')}, "
        f"split seed {data.get('split_seed')}); neighbours of another split zeroed in each patch",
        f"- made with: `{meta.get('command')}`",
    ]
    if meta.get("environment"):
        lines.append("- environment: " + ", ".join(f"{k} {v}" for k, v in meta["environment"].items()))
    if test:
        n = f" ({test['n']:,} pixels)" if "n" in test else ""
        lines += ["", f"Test pixels of that split{n}: OA {test['OA']:.2f} %, AA {test['AA']:.2f} %, "
                      f"kappa {test['kappa']:.2f} (measured by the command above, right after training)."]
    lines += ["", "Use: `lowrank-hsi eval` / `lowrank-hsi predict CUBE` take this file by default (`--weights`);",
              f"`timm.create_model(\"{recipe.get('model', 'lola_specvit_tiny')}\", pretrained=True, "
              f"in_chans={cfg.get('in_chans')}, num_classes={cfg.get('num_classes')})` loads it after "
              "`import lowrank_vision.plugins.hsi_specvit`.", ""]
    return write_text(card_path(bundle), "\n".join(lines))
