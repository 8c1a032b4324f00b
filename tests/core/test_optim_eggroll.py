"""EGGROLL: the batched population forward is each member's perturbed model; ES raises a tiny classifier's accuracy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lowrank_vision.core.functional import eggroll as F_egg
from lowrank_vision.core.optim import EGGROLL

torch.set_num_threads(1)


def _classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _blobs(n=96, seed=0):
    """Three classes of 6x6 images: a bright stripe at the top, the bottom, or the left."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 6, 6, generator=g)
    x[y == 0, :, :2, :] += 1.0
    x[y == 1, :, 4:, :] += 1.0
    x[y == 2, :, :, :2] += 1.0
    return x, y


def test_population_forward_equals_each_member_with_its_dense_perturbation():
    model = _classifier()
    x, _ = _blobs(5)
    es = EGGROLL(model, population=4, rank=2, sigma=0.3, lr=0.1)
    captured = {}

    def closure(forward):
        captured["out"] = forward(x)
        captured["noise"] = es._noise
        return torch.zeros(4)

    es.step(closure)
    signs = F_egg.member_signs(4)
    for member in range(4):
        clone = copy.deepcopy(model)
        layers = [m for m in clone.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        with torch.no_grad():
            for layer, entry in zip(layers, captured["noise"]):
                h = member // 2
                dense = entry["a"][h] @ entry["b"][h].t() / math.sqrt(2)
                layer.weight.add_(signs[member] * 0.3 * dense.view_as(layer.weight))
                layer.bias.add_(signs[member] * 0.3 * entry["bias"][h])
            expected = clone(x)
        assert torch.allclose(captured["out"][member], expected, atol=1e-5)


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def test_eggroll_improves_accuracy_without_gradients():
    x, y = _blobs(96)
    model = _classifier()
    for p in model.parameters():
        p.requires_grad_(False)  # no autograd anywhere
    before = _accuracy(model, x, y)
    es = EGGROLL(model, population=32, rank=1, sigma=0.1, lr=0.2, seed=0)
    for _ in range(60):
        es.step(lambda forward: (forward(x).argmax(-1) == y).float().mean(dim=1))
    after = _accuracy(model, x, y)
    assert before < 0.5 and after > 0.85, (before, after)


def test_eggroll_state_dict_round_trip():
    x, y = _blobs(32)
    closure = lambda forward: (forward(x).argmax(-1) == y).float().mean(dim=1)  # noqa: E731
    model = _classifier()
    es = EGGROLL(model, population=8, rank=1, sigma=0.1, lr=0.1, seed=3)
    for _ in range(3):
        es.step(closure)
    saved_model, saved_es = copy.deepcopy(model.state_dict()), copy.deepcopy(es.state_dict())
    for _ in range(3):
        es.step(closure)
    resumed = _classifier(seed=9)
    resumed.load_state_dict(saved_model)
    es2 = EGGROLL(resumed, population=8, rank=1, sigma=0.1, lr=0.1, seed=3)
    es2.load_state_dict(saved_es)
    for _ in range(3):
        es2.step(closure)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_centered_ranks_and_bad_arguments():
    assert F_egg.centered_ranks(torch.tensor([0.2, 0.9, 0.2, 0.5])).tolist() == pytest.approx([-1 / 3, 0.5, -1 / 3, 1 / 6])
    with pytest.raises(ValueError, match="even"):
        EGGROLL(_classifier(), population=5)
    es = EGGROLL(_classifier(), population=4)
    with pytest.raises(ValueError, match="one fitness per member"):
        es.step(lambda forward: torch.zeros(3))
