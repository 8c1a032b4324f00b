"""Short fine-tuning runs: LoRA and CP-LoRA must reduce a loss by a stated margin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank_vision.core import apply


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 3, 3, padding=1),
    )


@pytest.mark.parametrize("method,rank", [("lora", 4), ("cp_lora", 8), ("dora", 4), ("conv_lora", 2)])
def test_fine_tuning_reduces_loss(method, rank):
    """A frozen net is adapted towards a target net whose middle kernel was perturbed by a rank-2 update."""
    torch.manual_seed(0)
    student = conv_net()
    teacher = conv_net()
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad():
        u, v = torch.randn(16, 2), torch.randn(2, 16 * 9)
        teacher[2].weight.add_(0.05 * (u @ v).view(16, 16, 3, 3))
    apply(student, method, rank=rank, alpha=rank)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    x = torch.randn(16, 3, 12, 12)
    with torch.no_grad():
        target = teacher(x)
    losses = []
    for _ in range(60):
        loss = nn.functional.mse_loss(student(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (method, losses[0], losses[-1])
