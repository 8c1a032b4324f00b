"""core.watermark (Hot-Swap MarkBoard): verify the right signature, reject wrong ones, swap without retraining, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core import AdapterLayer, count_parameters, watermark
from lowrank_vision.core.functional import watermark as F_wm

from .toy_tasks import accuracy, make_task, train

N_BITS = 8


def classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def marked():
    torch.set_num_threads(1)
    (x, y), (x_test, y_test) = make_task()
    x, x_test = x.flatten(1), x_test.flatten(1)
    torch.manual_seed(0)
    base = train(classifier(), x, y, steps=300).eval()
    model = copy.deepcopy(base)
    config = watermark.MarkBoardConfig(n_bits=N_BITS, rank=4, steps=400, fidelity_weight=5.0)
    board = watermark.embed(model, x, config)
    return base, model, board, (x_test, y_test)


def signatures(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2, (N_BITS,), generator=g).tolist() for _ in range(n)]


def test_right_signature_verifies_and_wrong_ones_are_rejected(marked):
    base, model, board, _ = marked
    decisions, bits_right = [], 0
    for k, bits in enumerate(signatures(20)):
        board.set_signature(model, bits)
        right = board.verify(model, bits)
        bits_right += sum(d == b for d, b in zip(right.decoded, bits))
        wrong = list(bits)
        wrong[k % N_BITS] ^= 1  # one flipped bit: the closest wrong claim
        decisions += [right.verified, not board.verify(model, wrong).verified]
        decisions.append(not board.verify(model, [1 - b for b in bits]).verified)
    assert bits_right / (20 * N_BITS) >= 0.99  # measured 1.0
    assert sum(decisions) / len(decisions) >= 0.99  # measured 1.0 (60 decisions)
    board.set_signature(model, None)
    decoded, _ = board.read(base)
    assert sum(d == -1 for d in decoded) >= N_BITS - 1  # the unmarked base carries no signature (measured: all undecided)
    assert not board.verify(base, signatures(1, seed=7)[0]).verified


def test_clean_accuracy_stays_close_to_the_base(marked):
    base, model, board, (x, y) = marked
    reference = accuracy(base, x, y)
    for bits in signatures(3, seed=2):
        board.set_signature(model, bits)
        assert reference - accuracy(model, x, y) < 0.06  # measured 0.935 -> 0.89 to 0.91
    board.set_signature(model, None)
    assert accuracy(model, x, y) == reference  # no branch active: the base model exactly


def test_hot_swap_changes_the_signature_without_touching_weights(marked):
    _, model, board, _ = marked
    first, second = signatures(2, seed=3)
    board.set_signature(model, first)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert board.verify(model, first).verified
    board.set_signature(model, second)
    assert board.verify(model, second).verified and not board.verify(model, first).verified
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_distributed_copy_is_plain_and_verifies_black_box(marked):
    base, model, board, (x, _) = marked
    first, second = signatures(2, seed=4)
    shipped = board.distribute(model, first)
    assert not any(isinstance(m, AdapterLayer) for m in shipped.modules())
    assert count_parameters(shipped)[1] == count_parameters(base)[1]
    black_box = lambda inputs: shipped(inputs).detach()  # noqa: E731 - outputs only
    assert board.verify(black_box, first).verified
    board.reissue(model, shipped, first, second)  # hot swap on a merged copy
    assert board.verify(shipped, second).verified
    torch.testing.assert_close(shipped(x[:64]), board.distribute(model, second)(x[:64]), atol=1e-5, rtol=1e-4)


def test_save_load_round_trip(marked, tmp_path):
    base, model, board, (x, _) = marked
    watermark.save(model, board, tmp_path / "mb")
    fresh = copy.deepcopy(base)
    loaded = watermark.load(fresh, tmp_path / "mb")
    assert torch.equal(loaded.verify_inputs, board.verify_inputs) and torch.equal(loaded.targets, board.targets)
    assert loaded.config == board.config
    bits = signatures(1, seed=5)[0]
    board.set_signature(model, bits)
    loaded.set_signature(fresh, bits)
    assert torch.equal(fresh(x[:64]), model(x[:64]))
    assert loaded.verify(fresh, bits).verified


def test_bad_input(marked, tmp_path):
    _, model, board, _ = marked
    with pytest.raises(ValueError, match="signature must be 8 bits of 0/1"):
        board.set_signature(model, [1, 0])
    with pytest.raises(ValueError, match="MarkBoardConfig.n_bits must be a positive integer, got 0"):
        watermark.MarkBoardConfig(n_bits=0)
    with pytest.raises(ValueError, match="MarkBoardConfig.min_rate must be a number in"):
        watermark.MarkBoardConfig(min_rate=1.5)
    with pytest.raises(ValueError, match="already carries MarkBoard branches"):
        watermark.embed(model, torch.randn(100, 144))
    with pytest.raises(ValueError, match="lacks MarkBoard branches"):
        board.set_signature(classifier(), [0] * N_BITS)
    with pytest.raises(watermark.MarkBoardFileError, match="does not exist"):
        watermark.load(classifier(), tmp_path / "none")


@pytest.mark.parametrize("shape", [(3, 12, 12), (2, 8, 8, 8)])
def test_patch_triggers_are_one_window_over_all_channels(shape):
    g = torch.Generator().manual_seed(0)
    masks, patterns = F_wm.make_trigger_key(shape, 4, fraction=0.25, strength=2.0, generator=g, kind="patch")
    assert masks.shape == (4, *shape) and set(patterns.abs().unique().tolist()) == {2.0}
    for mask in masks:
        assert torch.equal(mask, mask[:1].expand_as(mask))  # every channel
        spatial = mask[0]
        side = round(shape[1] * 0.25 ** (1 / (len(shape) - 1)))
        assert int(spatial.sum()) == side ** (len(shape) - 1)
        ranges = [spatial.nonzero()[:, d] for d in range(spatial.dim())]
        assert all(int(r.max() - r.min()) + 1 == side for r in ranges)  # one contiguous window
    with pytest.raises(ValueError, match="patch triggers need inputs"):
        F_wm.make_trigger_key((144,), 2, fraction=0.1, strength=1.0, generator=g, kind="patch")
