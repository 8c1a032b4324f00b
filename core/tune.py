"""Measured strategy choice: time both execution strategies once per layer and keep the faster.

``tune_strategies(model, example_input)`` runs one forward to record each adapter layer's input,
then times forward + backward of that layer alone under ``weight`` and ``activation``, and sets
``layer.strategy`` to the faster one. Choices are cached per (adapter class, layer geometry,
rank, input shape, dtype, device, autocast dtype), in memory and optionally in a JSON file, so a
model is measured once per shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .adapters.base import AdapterLayer, DeltaAdapter
from .files import write_json
from .inject import adapter_layers

__all__ = ["tune_strategies", "strategy_cache_key"]

_CACHE: dict[str, str] = {}


def strategy_cache_key(layer: AdapterLayer, x: Tensor, autocast_dtype: Optional[torch.dtype]) -> str:
    g = layer.geometry
    return "|".join(map(str, (type(layer).__name__, g.kind, g.logical_shape, g.groups, layer.rank, tuple(x.shape), x.dtype, x.device.type, autocast_dtype)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_layer(layer: AdapterLayer, x: Tensor, strategy: str, repeats: int, autocast: Callable[[], Any]) -> float:
    layer.strategy = strategy
    saved = [(p, p.grad) for p in layer.parameters()]  # the timing backward passes must leave no gradient behind
    x = x.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)
    times = []
    for i in range(repeats + 2):
        _sync(x.device)
        start = time.perf_counter()
        with autocast():
            out = layer(x)
        out.float().square().mean().backward()
        _sync(x.device)
        if i >= 2:  # two warm-up runs
            times.append(time.perf_counter() - start)
    for p, grad in saved:
        p.grad = grad
    return statistics.median(times)


def tune_strategies(
    model: nn.Module,
    example_input: Union[Tensor, tuple, dict],
    *,
    autocast_dtype: Optional[torch.dtype] = None,
    repeats: int = 5,
    cache_file: Optional[Union[str, os.PathLike]] = None,
) -> dict[str, str]:
    """Pick each adapter layer's strategy by measurement. Returns ``{layer name: strategy}``."""
    layers = {name: layer for name, layer in adapter_layers(model).items() if isinstance(layer, DeltaAdapter)}
    if cache_file and Path(cache_file).is_file():
        _CACHE.update(json.loads(Path(cache_file).read_text()))
    inputs: dict[str, Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args[0].detach()))
        for name, layer in layers.items()
    ]
    device = next(model.parameters()).device

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    try:
        with torch.no_grad(), autocast():
            if isinstance(example_input, dict):
                model(**example_input)
            elif isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    chosen: dict[str, str] = {}
    for name, layer in layers.items():
        x = inputs.get(name)
        if x is None or not x.is_floating_point():
            continue
        key = strategy_cache_key(layer, x, autocast_dtype)
        if key not in _CACHE:
            timings = {s: _time_layer(layer, x, s, repeats, autocast) for s in ("weight", "activation")}
            _CACHE[key] = min(timings, key=timings.get)
        layer.strategy = _CACHE[key]
        chosen[name] = layer.strategy
    if cache_file:
        write_json(cache_file, _CACHE, indent=1)
    return chosen
