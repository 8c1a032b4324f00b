"""Saving and loading adapters: our own format and the PEFT layout.

Our format (a directory): ``adapter_model.safetensors`` with one tensor per adapter
parameter keyed ``<original layer name>.<parameter>``, and ``adapter_config.json`` with the
method, rank, alpha, options, wrapped layers (with each tuned layer's ``strategy_choice``, see
``core.tune``), library version and a fingerprint of the base layers' weight shapes. Both files
are written into a temporary folder that then replaces the target folder (``core.files.atomic_dir``),
so a crash never leaves a half-written adapter or new weights beside an old config. A layer reached under several names is saved once; its other
names are listed under ``aliases`` and get the same adapter back on load.

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
from .files import atomic_dir, write_json
from .inject import adapter_layers, apply, iter_slots, module_aliases, rollback_on_error

__all__ = ["save", "load", "export_peft", "import_peft", "AdapterFileError", "WEIGHTS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "lowrank-vision-adapter"
PathLike = Union[str, os.PathLike]


class AdapterFileError(ValueError):
    """An adapter file is missing, corrupt, truncated, or was made for another model."""


# -- writing and reading the folder ------------------------------------------------------------
def _write_adapter_dir(directory: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: dict) -> Path:
    """Weights and config written into a temporary folder that then replaces ``directory`` as a whole,
    so a reader never sees new weights beside an old config. A folder holding anything else is refused."""
    if directory.exists():
        if not directory.is_dir():
            raise ValueError(f"adapter folder {directory} is a file; give a folder path")
        other = sorted(p.name for p in directory.iterdir() if p.name not in (WEIGHTS_NAME, CONFIG_NAME))
        if other:
            raise ValueError(f"adapter folder {directory} also holds {other[:5]}; save an adapter into a folder of its own")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        write_json(tmp / CONFIG_NAME, config)
    return directory


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
        "scale": float(adapter.scale),  # a schedule may hold it as a 0-d tensor
        "dropout": adapter.config.dropout,
        "strategy": adapter.config.strategy,
        "options": dataclasses.asdict(adapter.options),
        **({"strategy_choice": dict(choice)} if (choice := adapter.strategy_choice) else {}),
    }


def fingerprint(layers: dict[str, dict]) -> str:
    """SHA-256 over the wrapped layers' names, types and weight shapes."""
    text = json.dumps({k: [v["type"], v["weight_shape"]] for k, v in sorted(layers.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def _adapter_aliases(model: nn.Module, adapter_name: str) -> dict[str, str]:
    """``{alias: first name}`` of the layers carrying adapter ``adapter_name`` under several names."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, adapter in adapter_layers(model, adapter_name).items():
        if id(adapter) in first:
            aliases[name] = first[id(adapter)]
        else:
            first[id(adapter)] = name
    return aliases


def save(model: nn.Module, directory: PathLike, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` of ``model`` to ``directory`` (a folder of its own, created if needed).

    Each adapter is written once; a layer reached under several names is recorded under its first name,
    its other names go to the config's ``aliases``.
    """
    layers = adapter_layers(model, adapter_name, unique=True)
    if not layers:
        raise ValueError(f"model has no adapter named {adapter_name!r} to save")
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
        "aliases": _adapter_aliases(model, adapter_name),
        "layers": records,
        "fingerprint": fingerprint(records),
    }
    return _write_adapter_dir(Path(directory), tensors, {"format": FORMAT}, config)


def _check_model_matches(model: nn.Module, records: dict[str, dict], aliases: dict[str, str]) -> None:
    roots = {slot.name: slot.root for slot in iter_slots(model)}
    absent = [name for name in [*records, *aliases] if name not in roots]
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
    model_aliases = module_aliases(model)
    for alias, primary in aliases.items():
        if model_aliases.get(alias) != primary:
            raise AdapterFileError(
                f"the adapter was saved from a model where {alias!r} is the same layer as {primary!r}; "
                f"in this model {alias!r} is a layer of its own"
            )
    for name in records:
        if name in model_aliases:
            raise AdapterFileError(
                f"in this model {name!r} is the same layer as {model_aliases[name]!r}, but the adapter holds separate weights for them"
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
    """Copy every adapter parameter from ``tensors``; all keys and shapes are checked before the first copy."""
    expected = {f"{name}.{pname}": p for name, adapter in layers.items() for pname, p in adapter.adapter_parameters()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(f"{source}: tensors do not match the adapter (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, param in expected.items():
        if tensors[key].shape != param.shape:
            raise AdapterFileError(f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)}, the adapter expects {tuple(param.shape)}")
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(tensors[key].to(device=param.device, dtype=param.dtype))


def _restore_strategy_choice(layer: AdapterLayer, choice: Optional[dict]) -> None:
    """A tuned choice (``core.tune``) comes back as ``layer.strategy_choice``; its strategy is used again on the
    device type it was measured on (on another device the layer keeps its configured strategy)."""
    if not choice:
        return
    layer.strategy_choice = dict(choice)
    root_weight = getattr(layer.root, "weight", None)
    if root_weight is not None and choice.get("device") == root_weight.device.type and choice.get("strategy") in ("weight", "activation"):
        layer.strategy = choice["strategy"]


def load(model: nn.Module, directory: PathLike, adapter_name: Optional[str] = None) -> dict:
    """Load an adapter saved by :func:`save` into ``model`` (adding adapter layers if absent). Returns the config.

    On any error the model is left exactly as it was.
    """
    directory = Path(directory)
    config = _read_json(directory / CONFIG_NAME)
    if config.get("format") != FORMAT:
        raise AdapterFileError(f"{directory / CONFIG_NAME} is not a lowrank-vision adapter config (format={config.get('format')!r}); for PEFT adapters use import_peft")
    records = config["layers"]
    if fingerprint(records) != config.get("fingerprint"):
        raise AdapterFileError(f"{directory / CONFIG_NAME}: fingerprint does not match its layer list (file edited or corrupt)")
    tensors = _read_tensors(directory / WEIGHTS_NAME)
    _check_model_matches(model, records, config.get("aliases") or {})
    adapter_name = adapter_name or config.get("adapter_name", "default")
    with rollback_on_error(model):
        _ensure_adapters(model, records, adapter_name)
        layers = adapter_layers(model, adapter_name, unique=True)
        _copy_into(layers, tensors, directory / WEIGHTS_NAME)
        for name, record in records.items():
            if "scale" in record:  # files from before 0.1.x have no scale: it is config.scale
                layers[name].scale = float(record["scale"])
            _restore_strategy_choice(layers[name], record.get("strategy_choice"))
    return config


# -- PEFT layout -----------------------------------------------------------------------------------
PEFT_PREFIX = "base_model.model."


def _peft_exportable(name: str, adapter: AdapterLayer) -> None:
    if not isinstance(adapter, (LoRA, DoRA)):
        raise ValueError(f"layer {name!r} carries a {adapter.method} adapter; only lora/lora_c/dora export to the PEFT layout")
    if isinstance(adapter, DoRA) and adapter.geometry.kind == "embedding":
        raise ValueError(f"layer {name!r}: DoRA on an Embedding has no PEFT equivalent here")
    if adapter.geometry.kind not in ("linear", "conv", "embedding") or adapter.geometry.groups != 1:
        raise ValueError(f"layer {name!r} ({type(adapter.root).__name__}, groups={adapter.geometry.groups}) has no PEFT LoRA equivalent")
    if adapter.scale != adapter.config.scale:
        raise ValueError(f"layer {name!r} runs at scale {adapter.scale:g}, not alpha/rank = {adapter.config.scale:g}; PEFT stores alpha only")


def export_peft(model: nn.Module, directory: PathLike, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` in the PEFT layout (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    layers = adapter_layers(model, adapter_name, unique=True)
    if not layers:
        raise ValueError(f"model has no adapter named {adapter_name!r} to export")
    positions = {slot.name: (id(slot.parent), slot.attr) for slot in iter_slots(model)}
    for alias, primary in _adapter_aliases(model, adapter_name).items():
        if positions[alias] != positions[primary]:
            raise ValueError(
                f"layer {alias!r} is the same module as {primary!r} under another attribute; PEFT would adapt it "
                f"under one name only (different outputs), so it has no PEFT equivalent"
            )
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
        a_key, b_key = _PEFT_FACTOR_KEYS[geometry.kind == "embedding"]
        tensors[f"{key}.{a_key}"] = lora_a
        tensors[f"{key}.{b_key}"] = lora_b
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
    if len(dropouts) > 1:
        raise ValueError(f"adapter layers use different dropout values {sorted(dropouts)}; PEFT stores one lora_dropout per adapter")
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropouts.pop(),
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
    metadata = {"format": "pt", "exported_by": f"lowrank-vision {__version__}"}
    return _write_adapter_dir(Path(directory), tensors, metadata, config)


def _pattern_value(name: str, patterns: dict, default):
    """PEFT rank/alpha pattern lookup: exact name or a key that ends the name."""
    for key, value in patterns.items():
        if name == key or name.endswith("." + key):
            return value
    return default


_PEFT_FACTOR_KEYS = {False: ("lora_A.weight", "lora_B.weight"), True: ("lora_embedding_A", "lora_embedding_B")}
"""PEFT's names of ``A`` and ``B`` (same shapes as ours): Linear/Conv layers, and embeddings."""

_PEFT_REFUSED = {
    "lora_bias": "a bias on lora_B",
    "fan_in_fan_out": "transposed (Conv1D-style) weights",
    "layer_replication": "replicated layers",
}


def _base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own parameters and persistent buffers by their names without adapter ``base_layer`` hops."""
    adapter_params = {id(p) for m in model.modules() if isinstance(m, AdapterLayer) for _, p in m.adapter_parameters()}
    return {k.replace(".base_layer", ""): v for k, v in model.state_dict(keep_vars=True).items() if id(v) not in adapter_params}


def import_peft(model: nn.Module, directory: PathLike, adapter_name: str = "default") -> dict:
    """Read a PEFT LoRA/DoRA adapter (as written by ``PeftModel.save_pretrained``) into ``model``.

    What PEFT saves beside the LoRA factors is kept as PEFT keeps it: biases trained with ``bias="all"`` /
    ``"lora_only"`` and the modules of ``modules_to_save`` are copied into the model's own layers (they
    overwrite the base values, as ``PeftModel.from_pretrained`` does) and stay trainable. ``lora_dropout``
    becomes the adapters' dropout. Options this reader cannot reproduce are refused. On any error the
    model is left exactly as it was.
    """
    directory = Path(directory)
    config = _read_json(directory / CONFIG_NAME)
    if config.get("peft_type") != "LORA":
        raise AdapterFileError(f"{directory / CONFIG_NAME}: peft_type={config.get('peft_type')!r}; only LORA adapters can be imported")
    for option, what in _PEFT_REFUSED.items():
        if config.get(option):
            raise AdapterFileError(f"{directory / CONFIG_NAME}: {option}={config[option]!r} ({what}) has no equivalent here; it cannot be imported")
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        raise AdapterFileError(f"{directory / CONFIG_NAME}: bias must be 'none', 'all' or 'lora_only', got {config.get('bias')!r}")
    tensors = _read_tensors(directory / WEIGHTS_NAME)
    outside = sorted(k for k in tensors if not k.startswith(PEFT_PREFIX))
    if outside:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME}: keys {outside[:3]} are not under {PEFT_PREFIX!r}")
    lora_keys = {k for k in tensors if ".lora_" in k}
    names = sorted({k[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for k in lora_keys})
    if not names:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME} holds no PEFT LoRA tensors (keys like 'base_model.model.<layer>.lora_A.weight')")
    use_dora = bool(config.get("use_dora", False))
    needed: dict[str, list[str]] = {}
    for name in names:
        embedding = f"{PEFT_PREFIX}{name}.lora_embedding_A" in tensors
        if embedding and use_dora:
            raise AdapterFileError(f"{directory / WEIGHTS_NAME}: layer {name!r}: DoRA on an Embedding cannot be imported")
        needed[name] = list(_PEFT_FACTOR_KEYS[embedding]) + (["lora_magnitude_vector"] if use_dora else [])
        for suffix in needed[name]:
            if f"{PEFT_PREFIX}{name}.{suffix}" not in tensors:
                raise AdapterFileError(f"{directory / WEIGHTS_NAME}: layer {name!r} has no {suffix!r} tensor")
    known = {f"{PEFT_PREFIX}{name}.{suffix}" for name in names for suffix in needed[name]}
    if lora_keys - known:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME}: tensors {sorted(lora_keys - known)[:3]} have no equivalent here")
    # base tensors PEFT trained (bias, modules_to_save): resolve and check them all before changing anything
    # (a modules_to_save layer's ".original_module" copy is not what PeftModel runs: skipped)
    own = _base_tensors(model)
    values: dict[str, torch.Tensor] = {}
    for key in sorted(set(tensors) - lora_keys):
        if ".original_module." in key:
            continue
        name = key[len(PEFT_PREFIX):].replace(".base_layer", "").replace(".modules_to_save", "")
        target = own.get(name)
        if target is None:
            raise AdapterFileError(f"{directory / WEIGHTS_NAME}: tensor {key!r} names {name!r}, which this model does not have")
        if target.shape != tensors[key].shape:
            raise AdapterFileError(f"{directory / WEIGHTS_NAME}: tensor {key!r} has shape {tuple(tensors[key].shape)}, the model's {name!r} has {tuple(target.shape)}")
        if name in values and not torch.equal(values[name], tensors[key]):
            raise AdapterFileError(f"{directory / WEIGHTS_NAME}: two different tensors for {name!r}")
        values[name] = tensors[key]
    kept = [(own[name], value) for name, value in values.items()]

    method = "dora" if use_dora else "lora"
    dropout = float(config.get("lora_dropout") or 0.0)
    groups: dict[tuple[int, float], list[str]] = {}
    for name in names:
        rank = int(tensors[f"{PEFT_PREFIX}{name}.{needed[name][0]}"].shape[0])
        alpha = float(_pattern_value(name, config.get("alpha_pattern") or {}, config.get("lora_alpha", rank)))
        if config.get("use_rslora"):
            alpha = alpha * math.sqrt(rank)  # PEFT's rsLoRA scale alpha/sqrt(r) expressed as alpha'/r
        groups.setdefault((rank, alpha), []).append(name)
    with rollback_on_error(model):
        base_values = [(t, t.detach().clone()) for t, _ in kept]
        try:
            for (rank, alpha), group in groups.items():
                apply(model, method, rank=rank, alpha=alpha, dropout=dropout, targets=group, adapter_name=adapter_name)
            layers = adapter_layers(model, adapter_name, unique=True)
            ours: dict[str, torch.Tensor] = {}
            for name in names:
                adapter = layers[name]
                key = PEFT_PREFIX + name
                a_key, b_key = needed[name][:2]
                ours[f"{name}.delta.lora_A"] = tensors[f"{key}.{a_key}"].reshape(adapter.delta.lora_A.shape)
                ours[f"{name}.delta.lora_B"] = tensors[f"{key}.{b_key}"].reshape(adapter.delta.lora_B.shape)
                if use_dora:
                    ours[f"{name}.magnitude"] = tensors[f"{key}.lora_magnitude_vector"].reshape(-1)
            _copy_into(layers, ours, directory / WEIGHTS_NAME)
            with torch.no_grad():
                for target, value in kept:
                    target.copy_(value.to(device=target.device, dtype=target.dtype))
                    if isinstance(target, nn.Parameter):
                        target.requires_grad_(True)
        except BaseException:
            with torch.no_grad():
                for target, value in base_values:
                    target.copy_(value)
            raise
    return config
