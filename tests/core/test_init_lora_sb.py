"""LoRA-SB through apply(init="lora_sb"): LoRA-XS adapters, only R trains, s B R A = rank-r SVD of the first update."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, load, save
from lowrank_vision.core.init import LoRASBInit

torch.set_num_threads(1)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def _loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_lora_sb_initialises_lora_xs_with_the_truncated_first_update(tmp_path):
    model, reference = _net(), _net()
    batches = _batches()
    eta = 0.05
    report = apply(model, "lora", rank=3, alpha=6, targets=["0", "2"], init=LoRASBInit(step_size=eta), init_data=batches, init_loss=_loss)
    assert report.method == "lora_xs"
    assert report.trainable_params == 2 * 3 * 3
    grads = []
    for batch in batches:
        reference.zero_grad()
        _loss(reference, batch).backward()
        grads.append(reference[2].weight.grad.reshape(8, -1).clone())
    u, s, vh = torch.linalg.svd(-eta * torch.stack(grads).mean(0), full_matrices=False)
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    adapter = adapter_layers(model, "default")["2"]
    assert torch.allclose(adapter.delta_weight().reshape(8, -1), best, atol=1e-6)
    # the model starts at W + (rank-3 approximation of the first full step): a lower loss than the original
    assert _loss(model, batches[0]).item() < _loss(reference, batches[0]).item()
    # A and B are frozen: after a backward only R has a gradient
    _loss(model, batches[0]).backward()
    assert adapter.delta.lora_R.grad is not None
    assert adapter.delta.lora_A.grad is None and adapter.delta.lora_B.grad is None
    # save / load keeps the frozen factors
    save(model, tmp_path / "sb")
    fresh = _net(seed=7)
    fresh.load_state_dict(reference.state_dict())
    load(fresh, tmp_path / "sb")
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(fresh(x), model(x), atol=1e-6)


def test_lora_sb_only_accepts_lora():
    with pytest.raises(ValueError, match="LoRA-XS"):
        apply(_net(), "dora", rank=2, init="lora_sb", init_data=_batches(1), init_loss=_loss)


def test_lora_xs_without_init_keeps_the_output():
    model, reference = _net(), _net()
    report = apply(model, "lora_xs", rank=2)
    assert report.trainable_params == 3 * 2 * 2  # only R of each of the 3 layers
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(model(x), reference(x)) or torch.allclose(model(x), reference(x), atol=1e-6)
    clone = copy.deepcopy(model)
    assert torch.allclose(clone(x), model(x)) and not any(p.requires_grad for n, p in clone.named_parameters() if "lora_A" in n)
