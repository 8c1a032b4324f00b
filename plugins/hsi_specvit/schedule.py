"""The cyclical LoRA-strength schedule of LoLA-SpecViT, as a trainer callback.

The paper's abstract: "a novel cyclical learning rate scheduler modulates LoRA adaptation
strength during training". Its public code only steps a CosineAnnealingWarmRestarts LR
schedule and calls a ``set_cycle_factor`` that no layer implements, so nothing modulates
the LoRA scale there. This module defines the modulation (our choice):

    scale_t = scale_0 * (f_min + (1 - f_min) * (1 - cos(pi * p_t)) / 2)

where ``p_t`` in [0, 1) is the position of step t inside its cycle, cycles last
``cycle_steps * cycle_mult**i`` steps (SGDR-style warm restarts, T_0 = cycle_steps,
T_mult = cycle_mult). Each cycle ramps the adapter from ``f_min`` of its nominal strength
back to full strength, so the adapter is re-learnt from a weakened state at every restart
(the cyclical "exploration" the paper credits for generalisation). Given the run length,
the last cycle is shortened to end at the last step, so training ends at the nominal scale
``alpha / rank`` that inference uses (``finish`` restores it exactly).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowrank_vision.core import adapter_layers

__all__ = ["cycle_factor", "CyclicalLoRAScale"]


def cycle_factor(step: int, cycle_steps: int, cycle_mult: float = 2.0, f_min: float = 0.25,
                 total_steps: int | None = None) -> float:
    """Multiplier of the nominal LoRA scale at optimizer step ``step`` (0-based).

    With ``total_steps`` the cycle that would run past the end is shortened to end exactly
    at ``total_steps``, so training finishes at full strength (factor 1), the scale used at
    inference.
    """
    if cycle_steps < 1:
        raise ValueError(f"cycle_steps must be >= 1, got {cycle_steps!r}")
    if cycle_mult < 1:
        raise ValueError(f"cycle_mult must be >= 1, got {cycle_mult!r}")
    if not 0.0 <= f_min <= 1.0:
        raise ValueError(f"f_min must be in [0, 1], got {f_min!r}")
    start, length = 0, float(cycle_steps)
    while step >= start + length:
        start += int(round(length))
        length *= cycle_mult
    if total_steps is not None and start + length > total_steps:
        length = max(float(total_steps - start), 1.0)
    phase = min((step - start) / length, 1.0)
    return f_min + (1.0 - f_min) * 0.5 * (1.0 - math.cos(math.pi * phase))


class CyclicalLoRAScale:
    """Callback ``cb(step, model, metrics)`` setting ``scale`` on every adapter layer of ``model``.

    Call :meth:`attach` before training (records each layer's nominal scale and sets the step-0
    factor) and :meth:`finish` after it (restores the nominal scales). The current factor is
    added to the trainer's metrics as ``lora_scale_factor``.
    """

    def __init__(self, cycle_steps: int = 50, cycle_mult: float = 2.0, f_min: float = 0.25,
                 total_steps: int | None = None):
        cycle_factor(0, cycle_steps, cycle_mult, f_min)  # validates
        self.cycle_steps, self.cycle_mult, self.f_min, self.total_steps = cycle_steps, cycle_mult, f_min, total_steps
        self.nominal: dict[str, float] = {}
        self.factors: list[float] = []

    def attach(self, model: nn.Module) -> "CyclicalLoRAScale":
        layers = adapter_layers(model)
        if not layers:
            raise ValueError("model: no adapter layer found; apply(model, 'lora', ...) before attaching the LoRA schedule")
        self.nominal = {n: float(m.scale) for n, m in layers.items()}
        self._set(model, self._factor(0))
        return self

    def set_factor(self, model: nn.Module, factor: float) -> None:
        """Set every adapter's scale to ``factor`` x its nominal scale, without recording it (e.g. to score val at 1x).

        The scale is a 0-d tensor on the adapter's device, filled in place, so a step captured as a CUDA graph reads
        each new value (a float, or a tensor on another device -- a CPU scalar is read once at capture -- would be
        frozen into the graph); the tensor is made anew only when the layer has moved (the trainer moves the model
        after :meth:`attach`)."""
        for n, m in adapter_layers(model).items():
            if n not in self.nominal:
                continue
            value, device = self.nominal[n] * factor, next(m.parameters()).device
            if isinstance(m.scale, torch.Tensor) and m.scale.device == device:
                m.scale.fill_(value)
            else:
                m.scale = torch.tensor(value, dtype=torch.float32, device=device)

    def _set(self, model: nn.Module, factor: float) -> None:
        self.set_factor(model, factor)
        self.factors.append(factor)

    def __call__(self, step: int, model: nn.Module, metrics: dict) -> None:
        # `step` optimizer steps are done; set the factor used by the next one
        factor = self._factor(step)
        self._set(model, factor)
        metrics["lora_scale_factor"] = factor

    def _factor(self, step: int) -> float:
        return cycle_factor(step, self.cycle_steps, self.cycle_mult, self.f_min, self.total_steps)

    def finish(self, model: nn.Module) -> None:
        """Back to each layer's nominal scale, as the float it was (what merge, export and inference read)."""
        self.factors.append(1.0)
        for n, m in adapter_layers(model).items():
            if n in self.nominal:
                m.scale = self.nominal[n]
