"""MTLoRA: a task-agnostic low-rank update shared by every task plus one task-specific update per task.

"MTLoRA: A Low-Rank Adaptation Approach for Efficient Multi-Task Learning" (CVPR 2024):
Task-Agnostic (TA-LoRA) and Task-Specific (TS-LoRA) low-rank modules split the update into what
the tasks share and what each task needs, ``dW_t = scale * (B_s A_s + B_t A_t)``.

Choices stated here: the paper runs its TS-LoRA modules side by side in the last stage of each
hierarchical-transformer stage and feeds every task's features to its own decoder in one pass;
this library selects one task at a time (``core.adapters.mtlora.set_task``), so ``dW_t`` is a
plain LoRA update with the factors stacked, ``A = [A_s; A_t]``, ``B = [B_s, B_t]``, and merges
exactly for the selected task. Every factor starts as LoRA's (``A`` Kaiming-uniform, ``B`` zero).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import LayerGeometry

__all__ = ["stacked_factors", "mtlora_param_count"]


def stacked_factors(shared_a: Tensor, shared_b: Tensor, task_a: Tensor | None = None, task_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``A = [A_s; A_t]`` (``[r + r_t, fan_in]``) and ``B = [B_s, B_t]`` (``[C_out, r + r_t]``); the shared pair alone without a task."""
    if task_a is None:
        return shared_a, shared_b
    return torch.cat([shared_a, task_a], dim=0), torch.cat([shared_b, task_b], dim=1)


def mtlora_param_count(geometry: LayerGeometry, rank: int, task_rank: int, num_tasks: int) -> int:
    """``(r + T * r_t) * (C_out + C_in * prod(k))``."""
    return (rank + num_tasks * task_rank) * (geometry.out_channels + geometry.fan_in)
