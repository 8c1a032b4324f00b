"""LoRA-GA through apply(init="lora_ga"): output unchanged, factors from the gradient's SVD, model state restored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply

torch.set_num_threads(1)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _batches(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def test_lora_ga_leaves_the_output_unchanged_and_uses_the_gradient_svd():
    model = _net().train()  # BatchNorm in train mode: the estimate must not move its running statistics
    reference = copy.deepcopy(model)
    x = torch.randn(4, 3, 6, 6)
    expected = reference.eval()(x)
    batches = _batches()
    report = apply(model, "lora", rank=2, alpha=4, targets=["0", "3", "7"], init="lora_ga", init_data=batches, init_loss=_loss)
    assert report.method == "lora" and len(report.wrapped) == 3
    assert torch.allclose(model.eval()(x), expected, atol=1e-5)
    assert torch.equal(model[1].running_mean, reference[1].running_mean)

    # B spans the top-2 left singular vectors of the mean full gradient (computed here independently)
    reference.train()
    weight = reference[3].weight
    grads = []
    for batch in batches:
        reference.zero_grad()
        _loss(reference, batch).backward()
        grads.append(weight.grad.reshape(8, -1).clone())
    u = torch.linalg.svd(torch.stack(grads).mean(0))[0][:, :2]
    lora_b = adapter_layers(model, "default")["3"].delta.lora_B.detach()
    lora_b = lora_b / lora_b.norm(dim=0, keepdim=True)
    assert torch.allclose((u.t() @ lora_b).abs(), torch.eye(2), atol=1e-4)
    a = adapter_layers(model, "default")["3"].delta.lora_A.detach()
    assert a.abs().sum() > 0 and lora_b.abs().sum() > 0
    # only the adapters train; no .grad left behind
    assert all(p.grad is None for p in model.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{i}.delta.lora_{f}" for i in ("0", "3", "7") for f in "AB"}


def test_lora_ga_first_steps_beat_plain_lora_on_the_same_batch():
    batches = _batches(2)
    losses = {}
    for init in (None, "lora_ga"):
        model = _net().eval()
        kwargs = {} if init is None else {"init": init, "init_data": batches, "init_loss": _loss}
        apply(model, "lora", rank=2, alpha=2, targets=["0", "3", "7"], **kwargs)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            loss = _loss(model, batches[0])
            loss.backward()
            opt.step()
        losses[init] = _loss(model, batches[0]).item()
    assert losses["lora_ga"] < losses[None], losses


def test_init_arguments_are_checked_and_a_failed_init_leaves_the_model_untouched():
    model = _net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="init_data"):
        apply(model, "lora", rank=2, init="lora_ga", init_loss=_loss)
    with pytest.raises(ValueError, match="needs method 'lora'"):
        apply(model, "cp_lora", rank=2, init="lora_ga", init_data=_batches(1), init_loss=_loss)
    with pytest.raises(ValueError, match="init must be one of"):
        apply(model, "lora", rank=2, init="pissa", init_data=_batches(1), init_loss=_loss)
    with pytest.raises(ValueError, match="scalar"):
        apply(model, "lora", rank=2, init="lora_ga", init_data=_batches(1), init_loss=lambda m, b: m(b[0]))
    assert not adapter_layers(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
