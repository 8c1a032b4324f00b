"""Measured strategy choice: time each layer's execution strategies and keep the fastest.

``tune_strategies(model, example_input)`` runs one forward to record each adapter layer's input,
then times forward + backward of that layer alone under every strategy it can run (``weight``,
``activation``; median of ``repeats`` interleaved runs after two warm-ups) and sets ``layer.strategy`` to the
fastest. With ``whole_model=True`` it then also times whole training steps (forward + backward of
the model) under four assignments -- the per-layer winners, the shape cost model (``auto``), all
``weight``, all ``activation`` -- and keeps the fastest, for models where per-layer timing misleads
(cache and launch effects between layers). Choices are cached per (adapter class, layer geometry,
rank, input shape, dtype, device, autocast dtype), in memory and optionally in a JSON file, so a
model is measured once per shape.

Every tuned layer gets ``layer.strategy_choice``, a JSON-ready record of what was chosen and why:
``strategy``, ``source`` (``measured``, ``cached``, ``model`` -- the whole-model timing overruled
the per-layer one --, ``only_path`` -- one strategy possible --, or ``dropout`` -- adapter dropout
forces the activation path in training), ``cost_model`` (what ``auto`` picks for this input),
``cost_model_wrong``, ``times_s`` (median seconds per strategy), the input shape, dtype, device and
autocast dtype. :func:`strategy_choices` collects them; ``core.io.save`` writes them into the
adapter's config and ``core.io.load`` restores them. A ``timer(name, candidate) -> seconds`` can
replace the clock (tests): ``name`` is the layer name, or ``""`` for a whole-model step with
``candidate`` one of :data:`MODEL_CANDIDATES`; the cache is bypassed then.
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

__all__ = ["tune_strategies", "strategy_cache_key", "strategy_choices", "interleaved_medians", "MODEL_CANDIDATES"]

_CACHE: dict[str, Any] = {}
MODEL_CANDIDATES = ("per_layer", "cost_model", "weight", "activation")
"""Strategy assignments timed as whole steps when ``whole_model=True``."""

Timer = Callable[[str, str], float]


def strategy_cache_key(layer: AdapterLayer, x: Tensor, autocast_dtype: Optional[torch.dtype]) -> str:
    g = layer.geometry
    return "|".join(map(str, (type(layer).__name__, g.kind, g.logical_shape, g.groups, layer.rank, tuple(x.shape), x.dtype, x.device.type, autocast_dtype)))


def strategy_choices(model: nn.Module) -> dict[str, dict]:
    """``{layer name: strategy_choice record}`` of every adapter layer that was tuned (see the module docstring)."""
    return {name: dict(layer.strategy_choice) for name, layer in adapter_layers(model).items() if layer.strategy_choice}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(candidates: dict[str, tuple[Callable[[], None], Callable[[], None]]], device: torch.device,
                        repeats: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of each candidate's ``run``, timed interleaved: two warm-up runs each, then ``repeats`` rounds
    in which every candidate runs once, the order rotating by one each round (a slow spell of the machine then hits
    every candidate, not the one timed during it). ``candidates``: ``{label: (prepare, run)}``; ``prepare`` (e.g.
    setting the strategies) runs outside the clock."""
    labels = list(candidates)
    for label in labels:
        prepare, run = candidates[label]
        prepare()
        for _ in range(2):
            run()
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(repeats):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            prepare, run = candidates[label]
            prepare()
            _sync(device)
            start = clock()
            run()
            _sync(device)
            times[label].append(clock() - start)
    return {label: statistics.median(t) for label, t in times.items()}


@contextlib.contextmanager
def _gradients_kept(params: list[nn.Parameter]):
    """The timing backward passes must leave no gradient behind (a caller's gradients are put back)."""
    saved = [(p, p.grad) for p in params]
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


def _time_layer(layer: AdapterLayer, x: Tensor, strategies: tuple[str, ...], repeats: int, autocast: Callable[[], Any]) -> dict[str, float]:
    """Median seconds of forward + backward of ``layer`` alone under each strategy (interleaved)."""
    x = x.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)

    def run() -> None:
        with autocast():
            out = layer(x)
        out.float().square().mean().backward()

    def use(strategy: str) -> Callable[[], None]:
        return lambda: setattr(layer, "strategy", strategy)

    with _gradients_kept(list(layer.parameters())):
        return interleaved_medians({s: (use(s), run) for s in strategies}, x.device, repeats)


def _call(model: nn.Module, example_input: Any) -> Any:
    if callable(example_input) and not isinstance(example_input, (Tensor, nn.Module)):
        return example_input(model)
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def _as_scalar(out: Any) -> Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out.float().square().mean() if out.dim() else out.float()


def _cost_model_choice(layer: AdapterLayer, x: Tensor) -> str:
    """What ``auto`` runs for input ``x`` (the shape cost model, or the device rule)."""
    saved = layer.strategy
    layer.strategy = "auto"
    try:
        return layer._pick_strategy(x)
    finally:
        layer.strategy = saved


def _candidates(layer: AdapterLayer) -> tuple[str, ...]:
    if not layer.delta.has_thin_path() or layer.geometry.kind == "embedding" or layer.geometry.groups != 1:
        return ("weight",) if layer.geometry.kind != "embedding" else ("activation",)
    return tuple(s for s in ("weight", "activation") if s in type(layer).strategies)


def tune_strategies(
    model: nn.Module,
    example_input: Union[Tensor, tuple, dict, Callable[[nn.Module], Any]],
    *,
    autocast_dtype: Optional[torch.dtype] = None,
    repeats: int = 5,
    cache_file: Optional[Union[str, os.PathLike]] = None,
    whole_model: bool = False,
    timer: Optional[Timer] = None,
) -> dict[str, str]:
    """Pick each adapter layer's strategy by measurement. Returns ``{layer name: strategy}``.

    ``example_input`` is a tensor, a tuple of positional inputs, a dict of keyword inputs, or a callable
    ``run(model)`` returning the loss or output (e.g. ``lambda m: loss_fn(m, batch)``). Each tuned layer's
    ``strategy_choice`` records the choice and its reasons (module docstring).
    """
    if repeats < 1:
        raise ValueError(f"tune_strategies repeats must be >= 1, got {repeats!r}")
    layers = {name: layer for name, layer in adapter_layers(model).items() if isinstance(layer, DeltaAdapter)}
    if cache_file and Path(cache_file).is_file() and timer is None:
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
            _call(model, example_input)
    finally:
        for hook in hooks:
            hook.remove()

    records: dict[str, dict] = {}
    for name, layer in layers.items():
        x = inputs.get(name)
        if x is None or not x.is_floating_point():
            continue
        record = {
            "cost_model": _cost_model_choice(layer, x), "input_shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch."),
            "device": x.device.type, "autocast": None if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
            "times_s": None,
        }
        candidates = _candidates(layer)
        if not isinstance(layer.dropout, nn.Identity):
            record.update(strategy="activation", source="dropout")
        elif len(candidates) == 1:
            record.update(strategy=candidates[0], source="only_path")
        elif timer is not None:
            times = {s: float(timer(name, s)) for s in candidates}
            record.update(strategy=min(times, key=times.get), source="measured", times_s=times, repeats=None)
        else:
            key = strategy_cache_key(layer, x, autocast_dtype)
            cached = _CACHE.get(key)
            if cached is None:
                times = _time_layer(layer, x, candidates, repeats, autocast)
                _CACHE[key] = {"strategy": min(times, key=times.get), "times_s": times}
                record.update(source="measured", repeats=repeats)
            else:
                record.update(source="cached")
            cached = _CACHE[key] if isinstance(_CACHE[key], dict) else {"strategy": _CACHE[key], "times_s": None}  # old files: strategy only
            record.update(strategy=cached["strategy"], times_s=cached["times_s"])
        record["cost_model_wrong"] = record["source"] in ("measured", "cached") and record["strategy"] != record["cost_model"] and bool(record["times_s"])
        layer.strategy = record["strategy"]
        records[name] = record

    if whole_model and records:
        _choose_whole_model(model, layers, records, example_input, autocast, repeats, timer)
    for name, record in records.items():
        layers[name].strategy_choice = record
    if cache_file and timer is None:
        write_json(cache_file, _CACHE, indent=1)
    return {name: record["strategy"] for name, record in records.items()}


def _choose_whole_model(model, layers, records, example_input, autocast, repeats, timer) -> None:
    """Time whole steps under :data:`MODEL_CANDIDATES` (in the model's current train/eval mode) and keep the fastest
    assignment (records updated in place; on a tie the earlier candidate, so the per-layer choice stands)."""
    per_layer = {name: r["strategy"] for name, r in records.items()}
    free = {name for name in records if len(_candidates(layers[name])) == 2 and records[name]["source"] != "dropout"}
    assignments = {
        "per_layer": per_layer,
        "cost_model": {n: (records[n]["cost_model"] if n in free else s) for n, s in per_layer.items()},
        "weight": {n: ("weight" if n in free else s) for n, s in per_layer.items()},
        "activation": {n: ("activation" if n in free else s) for n, s in per_layer.items()},
    }
    params = [p for p in model.parameters()]
    device = params[0].device

    def step() -> None:
        with autocast():
            loss = _as_scalar(_call(model, example_input))
        if loss.requires_grad:
            loss.backward()

    def use(assignment: dict[str, str]) -> Callable[[], None]:
        def prepare() -> None:
            for name, strategy in assignment.items():
                layers[name].strategy = strategy
        return prepare

    if timer is not None:
        times = {label: float(timer("", label)) for label in assignments}
    else:  # identical assignments are timed once, the distinct ones interleaved
        distinct = {tuple(sorted(a.items())): a for a in assignments.values()}
        with _gradients_kept(params):
            timed = interleaved_medians({str(key): (use(a), step) for key, a in distinct.items()}, device, repeats)
        times = {label: timed[str(tuple(sorted(a.items())))] for label, a in assignments.items()}
    best = min(times, key=times.get)
    for name, strategy in assignments[best].items():
        layers[name].strategy = strategy
        records[name]["model_times_s"] = times
        records[name]["model_choice"] = best
        if strategy != records[name]["strategy"]:
            records[name].update(strategy=strategy, source="model")
            records[name]["cost_model_wrong"] = strategy != records[name]["cost_model"]
