"""Save and load a compressed model: its full state dict plus the rank structure that rebuilds it.

A folder with ``model.safetensors`` (every parameter and buffer of the compressed model) and
``compression.json`` (format, the spec of every factorised layer: format, ranks, and the type and
weight shape of the dense layer it replaced). :func:`load` takes a model of the *original*
architecture, swaps in empty factorised layers of the saved ranks and loads the weights strictly;
both files are written through ``core.files.atomic_dir``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__
from ..files import atomic_dir, write_json
from .compress import factorized_layers, replace_modules
from .layers import rebuild

__all__ = ["save", "load", "WEIGHTS_NAME", "STRUCTURE_NAME", "CompressedFileError"]

WEIGHTS_NAME = "model.safetensors"
STRUCTURE_NAME = "compression.json"
FORMAT = "lowrank-vision-compressed"


class CompressedFileError(ValueError):
    """A compressed-model folder is missing, corrupt, or was made from another architecture."""


def save(model: nn.Module, directory: Union[str, os.PathLike]) -> Path:
    """Write ``model`` (after :func:`compress` / :func:`truncate`) to ``directory``."""
    layers = factorized_layers(model)
    if not layers:
        raise ValueError("model has no factorised layer; compress it first (core.factorize.compress)")
    structure = {"format": FORMAT, "library_version": __version__, "layers": {name: m.spec() for name, m in layers.items()}}
    tensors, seen = {}, {}
    for key, value in model.state_dict(keep_vars=False).items():
        ptr = (value.data_ptr(), value.shape, value.dtype)
        tensors[key] = value.detach().to("cpu").clone().contiguous() if ptr in seen else value.detach().to("cpu").contiguous()
        seen[ptr] = key
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        write_json(tmp / STRUCTURE_NAME, structure)
    return directory


def load(model: nn.Module, directory: Union[str, os.PathLike]) -> dict:
    """Rebuild the factorised layers saved in ``directory`` inside ``model`` (original architecture) and load the weights.

    The model is changed only when everything checks out (layer names, types and shapes, every tensor).
    Returns the structure record.
    """
    directory = Path(directory)
    path = directory / STRUCTURE_NAME
    if not path.is_file():
        raise CompressedFileError(f"{path} does not exist; expected a folder written by core.factorize.save")
    try:
        structure = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompressedFileError(f"{path} is corrupt (not valid JSON: {exc})") from exc
    if structure.get("format") != FORMAT:
        raise CompressedFileError(f"{path} is not a compressed-model record (format={structure.get('format')!r})")
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CompressedFileError(f"{directory / WEIGHTS_NAME} could not be read: {exc}") from exc
    modules = dict(model.named_modules())
    replacements = {}
    for name, spec in structure["layers"].items():
        if name not in modules:
            raise CompressedFileError(f"compressed layer {name!r} does not exist in this model (saved from another architecture)")
        try:
            replacements[id(modules[name])] = rebuild(modules[name], spec)
        except (ValueError, TypeError) as exc:
            raise CompressedFileError(f"layer {name!r}: {exc}") from exc
    originals = {id(m): m for m in modules.values()}
    replace_modules(model, replacements)
    try:
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise CompressedFileError(f"{directory / WEIGHTS_NAME}: tensors do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
        bad = [k for k in own if own[k].shape != tensors[k].shape]
        if bad:
            raise CompressedFileError(f"{directory / WEIGHTS_NAME}: tensor {bad[0]!r} has shape {tuple(tensors[bad[0]].shape)}, the model expects {tuple(own[bad[0]].shape)}")
        with torch.no_grad():
            model.load_state_dict(tensors, strict=True)
    except BaseException:
        replace_modules(model, {id(new): originals[old] for old, new in replacements.items()})
        raise
    return structure
