"""Adapter weight builds run through ``torch.compile`` (the opt-in ``fused`` path, issue 17 item 3).

In the ``weight`` strategy an adapter builds ``W' = W + dW`` (DoRA: ``m * V / ||V||`` of it) every
step, in eager mode a chain of small kernels each way: the factor products (CP-LoRA: one per kernel
axis), the GEMM, casts, and for DoRA the norm, the division and the scaling. :func:`compiled_call`
runs such a pure build function (``lora_add_to_weight``, ``cp_add_to_weight``, ``dora_build``, ...)
through inductor instead, so forward and backward are one or two generated kernels around the GEMM.

Choices:
- ``dynamic=False``, ``fullgraph=True``; one compiled function per (build function, static arguments,
  input shapes / dtypes / devices / requires-grad flags, autocast state). Each gets its own copy of the
  wrapper's code object, so dynamo's per-code recompile limit never mixes the layers of a model.
- Only called with gradients enabled (the training step); ``merge`` and no-grad inference stay eager.
- ``scale`` is a compile-time constant (``addmm``'s ``alpha``, as in eager); a layer whose scale keeps changing (a
  schedule) compiles up to :data:`MAX_STATIC_VARIANTS` values per shape, then runs eagerly, saying so. A 0-d tensor
  scale (a schedule filled in place) runs eagerly.
- Falls back to the eager function, with the reason returned, where compiling fails (no C++ compiler
  for inductor's CPU backend, no Triton, an unsupported op), where the first call of a shape happens
  during CUDA-graph capture (it is compiled at a later, uncaptured call), and inside an outer
  ``torch.compile`` (the outer graph fuses the build itself). A failure is remembered per key.

Measured (one H200, small 3-D UNet row of ``docs/benchmarks_fused.md``, 3 interleaved rounds): in eager mode the
compiled build makes a step slower (LoRA 2.46x full fine-tuning's step against 1.53x unfused: each compiled call's
guards and launches cost more host time than the kernels it saves); under whole-step CUDA graphs, where host time
is gone, it saves a little GPU time (CP-LoRA 0.97x against 1.02x, DoRA 0.95x against 0.98x). Hence opt-in, meant
for ``TrainConfig(cuda_graph=True)``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

__all__ = ["compiled_call", "COMPILED", "clear_compiled"]

COMPILED: dict[tuple, Union[Callable[..., Tensor], str]] = {}
"""Compiled build per key, or the reason its compilation failed (then it runs eagerly)."""
MAX_STATIC_VARIANTS = 8
"""Distinct static-argument sets compiled per function and input shapes; past it (e.g. a scale schedule that changes
``scale`` every step) the build runs eagerly instead of compiling on every step."""
_variants: dict[tuple, set] = {}
_serial = itertools.count()


def clear_compiled() -> None:
    """Forget every compiled build and remembered failure (tests; after changing the compiler setup)."""
    COMPILED.clear()
    _variants.clear()


def _key(fn: Callable, args: tuple[Tensor, ...], static: dict[str, Any]) -> tuple:
    device_type = args[0].device.type
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    tensors = tuple((tuple(a.shape), a.dtype, str(a.device), a.requires_grad) for a in args)
    return (fn, tuple(sorted(static.items())), tensors, autocast)


def _specialised(fn: Callable[..., Tensor], static: dict[str, Any]) -> Callable[..., Tensor]:
    """``fn`` with ``static`` bound, under a code object of its own (its own dynamo cache and recompile count)."""

    def build(*args: Tensor) -> Tensor:
        return fn(*args, **static)

    name = f"{getattr(fn, '__name__', 'build')}_{next(_serial)}"
    names = {"co_name": name, **({"co_qualname": name} if hasattr(build.__code__, "co_qualname") else {})}  # 3.10 has no co_qualname
    build.__code__ = build.__code__.replace(**names)
    return build


def compiled_call(fn: Callable[..., Tensor], args: tuple[Tensor, ...], static: dict[str, Any]) -> tuple[Optional[Tensor], str]:
    """``(fn(*args, **static) from generated kernels, "compiled")``, or ``(None, "eager (fallback: <why>)")``.

    ``static`` holds the hashable non-tensor arguments (scale, geometry, flags, an inner build function);
    a new value of any of them compiles anew, as a new input shape does.
    """
    if torch.compiler.is_compiling():
        return None, "eager (fallback: inside an outer torch.compile, which fuses the build)"
    if tensors := sorted(k for k, v in static.items() if isinstance(v, Tensor)):
        return None, f"eager (fallback: {', '.join(tensors)} given as a tensor, e.g. a scale schedule filled in place)"
    key = _key(fn, args, static)
    entry = COMPILED.get(key)
    if isinstance(entry, str):
        return None, entry
    if entry is not None:
        return entry(*args), "compiled"
    if args[0].is_cuda and torch.cuda.is_current_stream_capturing():
        return None, "eager (fallback: first call of this shape inside CUDA-graph capture)"
    variants = _variants.setdefault((fn, key[2], key[3]), set())
    if len(variants) >= MAX_STATIC_VARIANTS:
        return None, (f"eager (fallback: {MAX_STATIC_VARIANTS} static-argument sets already compiled for this shape, "
                      f"e.g. a changing scale; this one has scale={static.get('scale')})")
    variants.add(key[1])
    try:
        compiled = torch.compile(_specialised(fn, static), dynamic=False, fullgraph=True)
        out = compiled(*args)
    except Exception as exc:  # no C++ compiler / Triton, an op inductor cannot lower, ...
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        COMPILED[key] = f"eager (fallback: torch.compile failed: {type(exc).__name__}: {first_line})"
        return None, COMPILED[key]
    COMPILED[key] = compiled
    return out, "compiled"
