"""LoRA-Pro: the adjusted gradients give the best low-rank fit of the full gradient; training with it lowers the loss."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core import apply
from lowrank_vision.core.functional import lora_pro as F_pro
from lowrank_vision.core.optim import LoRAPro

from .cases import train_losses

torch.set_num_threads(1)


def test_equivalent_gradient_is_the_projection_of_the_full_gradient():
    torch.manual_seed(0)
    m, n, r, s = 12, 20, 3, 2.0
    a, b, g = torch.randn(r, n, dtype=torch.float64), torch.randn(m, r, dtype=torch.float64), torch.randn(m, n, dtype=torch.float64)
    grad_a, grad_b = F_pro.adjusted_gradients(a, b, b.t() @ g, g @ a.t(), s, damping=0.0)
    approx = F_pro.equivalent_gradient(a, b, grad_a, grad_b, s)
    p_b = b @ torch.linalg.solve(b.t() @ b, b.t())
    p_a = a.t() @ torch.linalg.solve(a @ a.t(), a)
    assert torch.allclose(approx, p_b @ g + (torch.eye(m, dtype=g.dtype) - p_b) @ g @ p_a, atol=1e-9)
    # residual is orthogonal to every B X + Y A, so no other factor gradient fits g better
    assert torch.allclose(b.t() @ (approx - g), torch.zeros(r, n, dtype=g.dtype), atol=1e-9)
    assert torch.allclose((approx - g) @ a.t(), torch.zeros(m, r, dtype=g.dtype), atol=1e-9)
    # the Sylvester choice of X is the closest to the plain LoRA gradients among all optimal pairs
    lora_a, lora_b = s * b.t() @ g, s * g @ a.t()
    best = (grad_a - lora_a).square().sum() + (grad_b - lora_b).square().sum()
    for _ in range(5):
        x = 0.1 * torch.randn(r, r, dtype=g.dtype)
        other = (grad_a + x @ a - lora_a).square().sum() + (grad_b - b @ x - lora_b).square().sum()
        assert best <= other


def _lora_net(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    apply(model, "lora", rank=4, targets=["0", "2"], trainable=["6"])
    return model


@pytest.mark.parametrize("full_rank_adam", [True, False])
def test_lora_pro_lowers_the_loss_on_a_conv_net(full_rank_adam):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    model = _lora_net()
    opt = LoRAPro(model, lr=2e-2, full_rank_adam=full_rank_adam)
    assert len(opt.param_groups) == 3  # two LoRA pairs + the head
    losses = train_losses(model, opt, x, y, 40)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_lora_pro_state_dict_round_trip():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    model = _lora_net()
    opt = LoRAPro(model, lr=1e-2)
    train_losses(model, opt, x, y, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train_losses(model, opt, x, y, 3)
    resumed = _lora_net(seed=3)
    resumed.load_state_dict(saved_model)
    opt2 = LoRAPro(resumed, lr=1e-2)
    opt2.load_state_dict(saved_opt)
    train_losses(resumed, opt2, x, y, 3)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_lora_pro_needs_lora_adapters():
    with pytest.raises(ValueError, match="no trainable lora adapter"):
        LoRAPro(nn.Linear(3, 3))
