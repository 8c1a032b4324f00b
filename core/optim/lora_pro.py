"""LoRA-Pro optimizer over a model's LoRA adapters; math in ``core.functional.lora_pro``.

Each LoRA adapter (``lora`` / ``lora_c`` family: ``dW = s B A`` in the layer's logical
``[C_out, C_in * prod(k)]`` layout, so convolutions are covered) becomes one param group ``[A, B]``.
With ``full_rank_adam=True`` (the paper's Adam variant) the equivalent gradient ``g~`` is formed
in the full ``[m, n]`` space, Adam's moments are kept there (memory of full fine-tuning's optimizer
state for the adapted layers, as in the paper), and the factors move by the LoRA-Pro gradients that
best reproduce Adam's direction. With ``full_rank_adam=False`` the adjusted gradients are fed to
AdamW on ``A`` and ``B`` (no full-size state). Every other trainable parameter (a new head) gets AdamW.
Weight decay is decoupled and acts on ``A`` and ``B``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..adapters.lora import LoRADelta
from ..functional import lora_pro as F_pro
from ..inject import adapter_layers
from .galore import stateful_adam_direction

__all__ = ["LoRAPro"]


def _lora_pairs(model: nn.Module, adapter_name: Optional[str]) -> list[tuple[nn.Parameter, nn.Parameter, float]]:
    pairs = []
    for adapter in adapter_layers(model, adapter_name, unique=True).values():
        delta = getattr(adapter, "delta", None)
        if type(delta) is LoRADelta and delta.lora_A.requires_grad and delta.lora_B.requires_grad:
            pairs.append((delta.lora_A, delta.lora_B, adapter.scale))
    return pairs


class LoRAPro(torch.optim.Optimizer):
    """``LoRAPro(model, lr=...)``: the model must carry ``lora`` adapters (``core.apply(model, "lora", ...)``)."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, full_rank_adam: bool = True, damping: float = 1e-6, adapter_name: Optional[str] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"LoRAPro takes the model (an nn.Module carrying lora adapters), got {type(model).__name__}")
        pairs = _lora_pairs(model, adapter_name)
        if not pairs:
            raise ValueError("LoRAPro found no trainable lora adapter on the model; apply(model, 'lora', rank=...) first")
        paired = {id(p) for a, b, _ in pairs for p in (a, b)}
        groups = [{"params": [a, b], "lora_scale": s} for a, b, s in pairs]
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in paired]
        if others:
            groups.append({"params": list({id(p): p for p in others}.values())})
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, full_rank_adam=full_rank_adam, damping=damping)
        super().__init__(groups, defaults)

    def _adam(self, state: dict, key: str, grad: Tensor, step: int, group: dict) -> Tensor:
        return stateful_adam_direction(state, grad, step, group["betas"], group["eps"], key)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if "lora_scale" not in group:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    state["step"] = state.get("step", 0) + 1
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(self._adam(state, "", p.grad, state["step"], group), alpha=-lr)
                continue
            lora_a, lora_b = group["params"]
            if lora_a.grad is None and lora_b.grad is None:
                continue
            s = group["lora_scale"]
            grad_a = lora_a.grad if lora_a.grad is not None else torch.zeros_like(lora_a)
            grad_b = lora_b.grad if lora_b.grad is not None else torch.zeros_like(lora_b)
            state = self.state[lora_a]
            state["step"] = state.get("step", 0) + 1
            step = state["step"]
            # autograd gives grad_A = s B^T g and grad_B = s g A^T
            new_a, new_b = F_pro.adjusted_gradients(lora_a, lora_b, grad_a / s, grad_b / s, s, damping=group["damping"])
            if group["full_rank_adam"]:
                full = F_pro.equivalent_gradient(lora_a, lora_b, new_a, new_b, s)
                direction = self._adam(state, "", full, step, group)
                new_a, new_b = F_pro.adjusted_gradients(lora_a, lora_b, lora_b.t() @ direction, direction @ lora_a.t(), s,
                                                        damping=group["damping"])
            else:
                new_a = self._adam(state, "a_", new_a, step, group)
                new_b = self._adam(state, "b_", new_b, step, group)
            if wd:
                lora_a.mul_(1 - lr * wd)
                lora_b.mul_(1 - lr * wd)
            lora_a.add_(new_a, alpha=-lr)
            lora_b.add_(new_b, alpha=-lr)
        return loss
