"""Saving and loading adapters: our own format and the PEFT layout.

Our format (a directory): ``adapter_model.safetensors`` with one tensor per adapter
parameter keyed ``<original layer name>.<parameter>``, and ``adapter_config.json`` with the
method, rank, alpha, options, wrapped layers, library version and a fingerprint of the base
layers' weight shapes. Files are written to a temporary name and renamed, so a crash never
leaves a half-written adapter behind.

PEFT layout: ``export_peft`` writes what ``peft.PeftModel.from_pretrained(base, dir)`` reads
for LoRA/LoRA-C/DoRA on Linear and Conv layers; ``import_peft`` reads a PEFT LoRA/DoRA
adapter into our layers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .adapters import AdapterLayer
from .adapters.dora import DoRA
from .adapters.lora import LoRA
from .inject import _slots, adapter_layers, apply

__all__ = ["save", "load", "export_peft", "import_peft", "AdapterFileError", "WEIGHTS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "lowrank-vision-adapter"
PathLike = Union[str, os.PathLike]


class AdapterFileError(ValueError):
    """An adapter file is missing, corrupt, truncated, or was made for another model."""


# -- atomic writes ---------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, payload: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.write("\n")

    _atomic_write(path, write)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise AdapterFileError(f"{path} does not exist; expected an adapter directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{path} is corrupt or truncated (not valid JSON: {exc})") from exc


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AdapterFileError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterFileError(f"{path} is corrupt or truncated (safetensors could not read it: {exc})") from exc


# -- our format --------------------------------------------------------------------------------
def _layer_record(adapter: AdapterLayer) -> dict[str, Any]:
    root = adapter.root
    return {
        "type": type(root).__name__,
        "weight_shape": list(root.weight.shape),
        "method": adapter.method,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "dropout": adapter.config.dropout,
        "strategy": adapter.config.strategy,
        "options": dataclasses.asdict(adapter.options),
    }


def fingerprint(layers: dict[str, dict]) -> str:
    """SHA-256 over the wrapped layers' names, types and weight shapes."""
    text = json.dumps({k: [v["type"], v["weight_shape"]] for k, v in sorted(layers.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def save(model: nn.Module, directory: PathLike, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` of ``model`` to ``directory`` (created if needed)."""
    layers = adapter_layers(model, adapter_name)
    if not layers:
        raise ValueError(f"model has no adapter named {adapter_name!r} to save")
    directory = Path(directory)
    tensors = {f"{name}.{pname}": p for name, adapter in layers.items() for pname, p in adapter.adapter_parameters()}
    records = {name: _layer_record(adapter) for name, adapter in layers.items()}
    first = next(iter(records.values()))
    config = {
        "format": FORMAT,
        "library_version": __version__,
        "adapter_name": adapter_name,
        "method": first["method"],
        "rank": first["rank"],
        "alpha": first["alpha"],
        "dropout": first["dropout"],
        "options": first["options"],
        "targets": list(layers),
        "layers": records,
        "fingerprint": fingerprint(records),
    }
    _write_tensors(directory / WEIGHTS_NAME, tensors, metadata={"format": FORMAT})
    _write_json(directory / CONFIG_NAME, config)
    return directory


def _check_model_matches(model: nn.Module, records: dict[str, dict]) -> None:
    roots = {slot.name: slot.root for slot in _slots(model)}
    absent = [name for name in records if name not in roots]
    if absent:
        raise AdapterFileError(f"checkpoint layer {absent[0]!r} does not exist in this model (the adapter was made for another architecture)")
    for name, root in roots.items():  # model order, so "first" means first in the network
        record = records.get(name)
        if record is None:
            continue
        shape = list(getattr(root, "weight", torch.empty(0)).shape)
        if type(root).__name__ != record["type"] or shape != record["weight_shape"]:
            raise AdapterFileError(
                f"first mismatching layer {name!r}: checkpoint has {record['type']} with weight shape "
                f"{tuple(record['weight_shape'])}, model has {type(root).__name__} with {tuple(shape)}"
            )


def _ensure_adapters(model: nn.Module, records: dict[str, dict], adapter_name: str) -> None:
    existing = adapter_layers(model, adapter_name)
    groups: dict[str, list[str]] = {}
    for name, record in records.items():
        if name in existing:
            continue
        key = json.dumps({k: record[k] for k in ("method", "rank", "alpha", "dropout", "strategy", "options")}, sort_keys=True)
        groups.setdefault(key, []).append(name)
    for key, names in groups.items():
        spec = json.loads(key)
        with warnings.catch_warnings():  # an over-parameterised rank was already reported when it was trained
            warnings.filterwarnings("ignore", message="rank .* exceeds")
            apply(model, spec["method"], rank=spec["rank"], alpha=spec["alpha"], dropout=spec["dropout"],
              strategy=spec["strategy"], targets=names, adapter_name=adapter_name, **spec["options"])


def _copy_into(layers: dict[str, AdapterLayer], tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = {f"{name}.{pname}": p for name, adapter in layers.items() for pname, p in adapter.adapter_parameters()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(f"{source}: tensors do not match the adapter (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for key, param in expected.items():
            value = tensors[key]
            if value.shape != param.shape:
                raise AdapterFileError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, the adapter expects {tuple(param.shape)}")
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def load(model: nn.Module, directory: PathLike, adapter_name: Optional[str] = None) -> dict:
    """Load an adapter saved by :func:`save` into ``model`` (adding adapter layers if absent). Returns the config."""
    directory = Path(directory)
    config = _read_json(directory / CONFIG_NAME)
    if config.get("format") != FORMAT:
        raise AdapterFileError(f"{directory / CONFIG_NAME} is not a lowrank-vision adapter config (format={config.get('format')!r}); for PEFT adapters use import_peft")
    records = config["layers"]
    if fingerprint(records) != config.get("fingerprint"):
        raise AdapterFileError(f"{directory / CONFIG_NAME}: fingerprint does not match its layer list (file edited or corrupt)")
    tensors = _read_tensors(directory / WEIGHTS_NAME)
    _check_model_matches(model, records)
    adapter_name = adapter_name or config.get("adapter_name", "default")
    _ensure_adapters(model, records, adapter_name)
    _copy_into(adapter_layers(model, adapter_name), tensors, directory / WEIGHTS_NAME)
    return config


# -- PEFT layout -----------------------------------------------------------------------------------
PEFT_PREFIX = "base_model.model."


def _peft_exportable(name: str, adapter: AdapterLayer) -> None:
    if not isinstance(adapter, (LoRA, DoRA)):
        raise ValueError(f"layer {name!r} carries a {adapter.method} adapter; only lora/lora_c/dora export to the PEFT layout")
    if adapter.geometry.kind not in ("linear", "conv") or adapter.geometry.groups != 1:
        raise ValueError(f"layer {name!r} ({type(adapter.root).__name__}, groups={adapter.geometry.groups}) has no PEFT LoRA equivalent")


def export_peft(model: nn.Module, directory: PathLike, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` in the PEFT layout (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    layers = adapter_layers(model, adapter_name)
    if not layers:
        raise ValueError(f"model has no adapter named {adapter_name!r} to export")
    tensors: dict[str, torch.Tensor] = {}
    ranks, alphas, dropouts, use_dora = {}, {}, set(), set()
    for name, adapter in layers.items():
        _peft_exportable(name, adapter)
        geometry, rank = adapter.geometry, adapter.rank
        lora_a, lora_b = adapter.delta.lora_A, adapter.delta.lora_B
        key = PEFT_PREFIX + name
        if geometry.kind == "conv":
            lora_a = lora_a.reshape(rank, geometry.in_channels, *geometry.kernel_size)
            lora_b = lora_b.reshape(geometry.out_channels, rank, *([1] * geometry.ndim))
        tensors[f"{key}.lora_A.weight"] = lora_a
        tensors[f"{key}.lora_B.weight"] = lora_b
        if isinstance(adapter, DoRA):
            magnitude = adapter.magnitude
            if geometry.kind == "conv":
                magnitude = magnitude.reshape(1, -1, *([1] * geometry.ndim))
            tensors[f"{key}.lora_magnitude_vector"] = magnitude
        ranks[name], alphas[name] = rank, adapter.alpha
        dropouts.add(adapter.config.dropout)
        use_dora.add(isinstance(adapter, DoRA))
    if len(use_dora) > 1:
        raise ValueError("adapter mixes LoRA and DoRA layers; PEFT stores one use_dora flag per adapter")
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": max(dropouts),
        "target_modules": sorted(layers),
        "rank_pattern": {n: r for n, r in ranks.items() if r != rank},
        "alpha_pattern": {n: a for n, a in alphas.items() if a != alpha},
        "use_dora": use_dora.pop(),
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    directory = Path(directory)
    _write_tensors(directory / WEIGHTS_NAME, tensors, metadata={"format": "pt", "exported_by": f"lowrank-vision {__version__}"})
    _write_json(directory / CONFIG_NAME, config)
    return directory


def _pattern_value(name: str, patterns: dict, default):
    """PEFT rank/alpha pattern lookup: exact name or a key that ends the name."""
    for key, value in patterns.items():
        if name == key or name.endswith("." + key):
            return value
    return default


def import_peft(model: nn.Module, directory: PathLike, adapter_name: str = "default") -> dict:
    """Read a PEFT LoRA/DoRA adapter (as written by ``PeftModel.save_pretrained``) into ``model``."""
    directory = Path(directory)
    config = _read_json(directory / CONFIG_NAME)
    if config.get("peft_type") != "LORA":
        raise AdapterFileError(f"{directory / CONFIG_NAME}: peft_type={config.get('peft_type')!r}; only LORA adapters can be imported")
    tensors = _read_tensors(directory / WEIGHTS_NAME)
    names = sorted({k[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for k in tensors if k.startswith(PEFT_PREFIX) and ".lora_" in k})
    if not names:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME} holds no PEFT LoRA tensors (keys like 'base_model.model.<layer>.lora_A.weight')")
    use_dora = bool(config.get("use_dora", False))
    method = "dora" if use_dora else "lora"
    groups: dict[tuple[int, float], list[str]] = {}
    for name in names:
        rank = int(tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"].shape[0])
        alpha = float(_pattern_value(name, config.get("alpha_pattern") or {}, config.get("lora_alpha", rank)))
        if config.get("use_rslora"):
            alpha = alpha * math.sqrt(rank)  # PEFT's rsLoRA scale alpha/sqrt(r) expressed as alpha'/r
        groups.setdefault((rank, alpha), []).append(name)
    for (rank, alpha), group in groups.items():
        apply(model, method, rank=rank, alpha=alpha, targets=group, adapter_name=adapter_name)
    layers = adapter_layers(model, adapter_name)
    ours: dict[str, torch.Tensor] = {}
    for name in names:
        adapter = layers[name]
        key = PEFT_PREFIX + name
        ours[f"{name}.delta.lora_A"] = tensors[f"{key}.lora_A.weight"].reshape(adapter.delta.lora_A.shape)
        ours[f"{name}.delta.lora_B"] = tensors[f"{key}.lora_B.weight"].reshape(adapter.delta.lora_B.shape)
        if use_dora:
            ours[f"{name}.magnitude"] = tensors[f"{key}.lora_magnitude_vector"].reshape(-1)
    _copy_into(layers, ours, directory / WEIGHTS_NAME)
    return config
