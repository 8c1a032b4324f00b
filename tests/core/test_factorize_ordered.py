"""Maestro-style ordered-rank training: ranks cut after training degrade gracefully; truncate == active_rank."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core import factorize

from .toy_tasks import accuracy, train, vector_task

D, CLASSES = 24, 8


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES))


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    (x, y), test = vector_task(d=D, classes=CLASSES)
    torch.manual_seed(0)
    init = mlp()
    plain = copy.deepcopy(init)
    factorize.factorize_full_rank(plain, exclude="4")  # the same factorised layers, trained without ordering
    train(plain, x, y, 600).eval()
    ordered = copy.deepcopy(init)
    names = factorize.factorize_full_rank(ordered, exclude="4")
    assert names == ["0", "2"]
    dropout = factorize.OrderedRankDropout(ordered, seed=0)
    train(ordered, x, y, 600, before_step=dropout.sample).eval()
    dropout.reset()
    return plain, ordered, test


def test_ordered_ranks_truncate_gracefully(models):
    plain, ordered, (x, y) = models
    full_plain, full_ordered = accuracy(plain, x, y), accuracy(ordered, x, y)
    assert full_plain > 0.75 and full_ordered > 0.75  # measured 0.792 / 0.782
    for fraction, margin in ((0.5, 0.15), (0.25, 0.2)):
        cut_plain, cut_ordered = copy.deepcopy(plain), copy.deepcopy(ordered)
        factorize.truncate(cut_plain, fraction)
        ranks = factorize.truncate(cut_ordered, fraction)
        assert ranks == {"0": round(24 * fraction), "2": round(64 * fraction)}
        a_plain, a_ordered = accuracy(cut_plain, x, y), accuracy(cut_ordered, x, y)
        assert a_ordered - a_plain > margin  # measured 0.783 vs 0.561 at 1/2, 0.647 vs 0.336 at 1/4
    half = copy.deepcopy(ordered)
    factorize.truncate(half, 0.5)
    assert full_ordered - accuracy(half, x, y) < 0.03


def test_truncate_equals_running_the_leading_ranks(models):
    _, ordered, (x, _) = models
    model = copy.deepcopy(ordered)
    model[2].active_rank = 7
    expected = model(x[:16])
    factorize.truncate(model, {"2": 7})
    assert model[2].rank == 7 and model[2].active_rank == 7
    torch.testing.assert_close(model(x[:16]), expected)
    assert sum(p.numel() for p in model[2].parameters()) == 7 * (64 + 64) + 64


def test_ordered_dropout_is_seeded_and_bounded(models):
    _, ordered, _ = models
    a = factorize.OrderedRankDropout(copy.deepcopy(ordered), min_fraction=0.5, seed=3)
    b = factorize.OrderedRankDropout(copy.deepcopy(ordered), min_fraction=0.5, seed=3)
    draws = [a.sample() for _ in range(50)]
    assert draws == [b.sample() for _ in range(50)]
    assert all(12 <= r0 <= 24 and 32 <= r1 <= 64 for r0, r1 in draws)
    assert len({tuple(d) for d in draws}) > 10
    a.reset()
    assert all(layer.active_rank == layer.rank for layer in a.layers)


def test_truncate_bad_input(models, tmp_path):
    _, ordered, (x, _) = models
    model = copy.deepcopy(ordered)
    with pytest.raises(ValueError, match=r"rank for '2' must be an integer in 1..64, got 65"):
        factorize.truncate(model, {"2": 65})
    with pytest.raises(ValueError, match="not LowRankLayers"):
        factorize.truncate(model, {"4": 2})
    with pytest.raises(ValueError, match="ranks must be a positive int"):
        factorize.truncate(model, 0)
    with pytest.raises(ValueError, match="no LowRankLayer"):
        factorize.truncate(mlp(), 2)
    factorize.truncate(model, 0.25)  # a truncated model saves and loads like a compressed one
    factorize.save(model, tmp_path / "t")
    fresh = mlp()
    factorize.load(fresh, tmp_path / "t")
    assert torch.equal(fresh(x[:8]), model(x[:8]))
