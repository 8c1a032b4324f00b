"""Estimate the full-weight gradient of adapted layers on a few batches (the input of LoRA-GA and LoRA-SB)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ..adapters import AdapterLayer
from ..functional.layout import weight_to_logical

__all__ = ["estimate_weight_gradients"]


def estimate_weight_gradients(
    model: nn.Module, adapters: list[AdapterLayer], data: Iterable[Any], loss_fn: Callable[[nn.Module, Any], Tensor]
) -> list[Tensor]:
    """Mean gradient of ``loss_fn(model, batch)`` over ``data`` w.r.t. each adapter's root weight, as the logical
    matrix ``[C_out, C_in * prod(k)]`` (float32).

    The model is left as it was: ``requires_grad`` flags, ``.grad`` fields and buffers (BatchNorm running
    statistics) are restored, so estimating changes nothing but the returned tensors.
    """
    roots = [adapter.root for adapter in adapters]
    params = list({id(p): p for p in model.parameters()}.values())
    flags = [(p, p.requires_grad) for p in params]
    grads = [(p, p.grad) for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    sums = [torch.zeros(root.weight.shape, dtype=torch.float32, device=root.weight.device) for root in roots]
    batches = 0
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for root in roots:
            root.weight.requires_grad_(True)
        for batch in data:
            loss = loss_fn(model, batch)
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ValueError(f"init_loss(model, batch) must return a scalar tensor, got {type(loss).__name__} "
                                 f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}")
            loss.backward()
            for total, root in zip(sums, roots):
                if root.weight.grad is not None:
                    total.add_(root.weight.grad.float())
                    root.weight.grad = None
            batches += 1
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for p, grad in grads:
            p.grad = grad
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)
    if batches == 0:
        raise ValueError("init_data gave no batch; pass an iterable of at least one batch")
    return [weight_to_logical(total / batches, adapter.geometry).reshape(adapter.geometry.out_channels, -1)
            for total, adapter in zip(sums, adapters)]
