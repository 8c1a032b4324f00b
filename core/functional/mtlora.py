"""MTLoRA: a task-agnostic low-rank update shared by every task plus one task-specific update per task.

"MTLoRA: A Low-Rank Adaptation Approach for Efficient Multi-Task Learning" (CVPR 2024):
Task-Agnostic (TA-LoRA) and Task-Specific (TS-LoRA) low-rank modules split the update into what
the tasks share and what each task needs, ``dW_t = scale * (B_s A_s + B_t A_t)``.

Two modes (``core.adapters.mtlora.set_task``):

- one task (``set_task(model, t)``): every layer runs ``dW_t``, a plain LoRA update with the
  factors stacked, ``A = [A_s; A_t]``, ``B = [B_s, B_t]``; it merges exactly for that task.
- all tasks in one pass (``set_task(model, "all")``, the paper's form): the network runs the
  task-agnostic path ``y_s = op(x, W + scale * B_s A_s)``, and each layer also emits, from the same
  input ``x``, one feature per task ``y_t = y_s + scale * B_t(A_t x)`` (:func:`task_branch_outputs`)
  for that task's head. Shared per layer: ``op(x, W)``, the shared update and ``x`` itself (all
  upstream computation); per task: only the rank-``r_t`` branch ``B_t A_t x``.

Choice stated here: in the paper the TS-LoRA modules sit in the last block of each stage, and the
task features are carried through the rest of that block; here a task branch always reads its
layer's shared input and task features are not carried into later layers (the network continues on
the shared path). So ``y_t`` of a layer equals its output in one-task mode exactly when no MTLoRA
layer runs before it in the forward, e.g. MTLoRA on the layers that feed the heads and plain LoRA
(the task-agnostic path) on the backbone. Every factor starts as LoRA's (``A`` Kaiming-uniform,
``B`` zero).
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch import nn

from .layout import LayerGeometry, layer_forward, logical_to_weight
from .lora import lora_bypass, lora_bypass_supported, lora_delta

__all__ = ["stacked_factors", "mtlora_param_count", "task_branch_outputs"]


def stacked_factors(shared_a: Tensor, shared_b: Tensor, task_a: Tensor | None = None, task_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``A = [A_s; A_t]`` (``[r + r_t, fan_in]``) and ``B = [B_s, B_t]`` (``[C_out, r + r_t]``); the shared pair alone without a task."""
    if task_a is None:
        return shared_a, shared_b
    return torch.cat([shared_a, task_a], dim=0), torch.cat([shared_b, task_b], dim=1)


def mtlora_param_count(geometry: LayerGeometry, rank: int, task_rank: int, num_tasks: int) -> int:
    """``(r + T * r_t) * (C_out + C_in * prod(k))``."""
    return (rank + num_tasks * task_rank) * (geometry.out_channels + geometry.fan_in)


def task_branch_outputs(
    layer: nn.Module, x: Tensor, shared_out: Tensor, task_factors: dict[str, tuple[Tensor, Tensor]],
    geometry: LayerGeometry, scale: float, **kw,
) -> dict[str, Tensor]:
    """``{t: shared_out + scale * B_t(A_t x)}``: each task's feature from the shared output and input of one layer.

    ``layer`` is the root layer (its op, stride, padding...); grouped convolutions take the dense
    ``B_t A_t`` through the layer's op instead of the two-op path.
    """
    outputs = {}
    for task, (task_a, task_b) in task_factors.items():
        if lora_bypass_supported(geometry):
            branch = lora_bypass(layer, x, task_a, task_b, geometry, scale, **kw)
        else:
            branch = layer_forward(layer, x, logical_to_weight(lora_delta(task_a, task_b, geometry, scale), geometry), None, **kw)
        outputs[task] = shared_out + branch.to(shared_out.dtype)
    return outputs
