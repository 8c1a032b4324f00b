"""Maestro's hierarchical group lasso: trailing ranks shrink during training, so a threshold on the
learned group norms cuts the rank with no accuracy lost, where the unpenalised model cannot be cut."""

from __future__ import annotations

import copy

import pytest
import torch

from lowrank_vision.core import factorize
from lowrank_vision.core.functional import factorize as F_fact

from .test_factorize_ordered import CLASSES, D, mlp
from .toy_tasks import accuracy, train, vector_task

PENALTY = 5e-3  # chosen by bench/compress.py on a validation split (train[3072:]): the largest of 1e-3..1e-2 within 0.01 of no penalty


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    (x, y), test = vector_task(d=D, classes=CLASSES)
    torch.manual_seed(0)
    init = mlp()
    factorize.factorize_full_rank(init, exclude="4")
    plain = train(copy.deepcopy(init), x[:3072], y[:3072], 600).eval()
    penalised = train(copy.deepcopy(init), x[:3072], y[:3072], 600, penalty=PENALTY).eval()
    return plain, penalised, test


def test_group_lasso_learns_a_smaller_rank_at_the_same_accuracy(trained):
    plain, penalised, (x, y) = trained
    full_plain, full_penalised = accuracy(plain, x, y), accuracy(penalised, x, y)
    cut = copy.deepcopy(penalised)
    ranks = factorize.truncate(cut, threshold=0.03)
    assert ranks["0"] <= 18 and ranks["2"] <= 12  # of 24 and 64; measured 17 and 10
    assert factorize.truncate(copy.deepcopy(plain), threshold=0.03) == {"0": 24, "2": 64}  # nothing shrank without it
    cut_penalised = accuracy(cut, x, y)
    cut_plain = copy.deepcopy(plain)
    factorize.truncate(cut_plain, ranks)
    assert abs(cut_penalised - full_penalised) < 0.002  # the cut ranks had shrunk to (nearly) zero
    assert cut_penalised >= full_plain - 0.005  # measured 0.779 (and 0.779 before the cut) vs 0.763 at full rank
    assert cut_penalised - accuracy(cut_plain, x, y) > 0.15  # measured 0.779 vs 0.541 for the unpenalised model


def test_group_norms_and_penalty_math():
    down = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # [r=3, fan_in=2]
    up = torch.tensor([[0.0, 0.0, 2.0], [4.0, 0.0, 0.0]])  # [C_out=2, r=3]
    norms = F_fact.trailing_group_norms(down, up)
    torch.testing.assert_close(norms, torch.tensor([30.0, 5.0, 4.0]).sqrt())  # ranks hold 25, 1, 4
    assert float(F_fact.hierarchical_group_lasso(down, up)) == pytest.approx(30 ** 0.5 + 5 ** 0.5 + 2.0)
    assert F_fact.rank_for_group_threshold(norms, 0.4) == 2 and F_fact.rank_for_group_threshold(norms, 0.0) == 3
    assert F_fact.rank_for_group_threshold(norms, 0.99) == 1
    # nested groups: the same weight is pulled harder the later its rank
    d = torch.ones(3, 2, requires_grad=True)
    u = torch.ones(2, 3, requires_grad=True)
    F_fact.hierarchical_group_lasso(d, u).backward()
    pull = d.grad[:, 0]
    assert pull[0] < pull[1] < pull[2]
    conv_norms = F_fact.trailing_group_norms(torch.ones(3, 2, 3, 3), torch.ones(4, 3, 1, 1))  # conv layouts
    torch.testing.assert_close(conv_norms, torch.tensor([66.0, 44.0, 22.0]).sqrt())


def test_penalty_and_threshold_bad_input(trained):
    _, penalised, _ = trained
    model = copy.deepcopy(penalised)
    assert float(factorize.group_lasso_penalty(model).detach()) == pytest.approx(
        sum(float(n.sum()) for n in factorize.group_norms(model).values()))
    with pytest.raises(ValueError, match="give exactly one of ranks and threshold"):
        factorize.truncate(model, 4, threshold=0.1)
    with pytest.raises(ValueError, match="give exactly one of ranks and threshold"):
        factorize.truncate(model)
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\), got 1.0"):
        factorize.truncate(model, threshold=1.0)
    with pytest.raises(ValueError, match="no LowRankLayer"):
        factorize.group_lasso_penalty(mlp())
