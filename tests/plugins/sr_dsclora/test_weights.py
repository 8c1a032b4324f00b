"""Weights: deployed checkpoints round-trip, adapters and bad files are refused, the card matches the metadata."""

import copy

import pytest
import torch

from lowrank_vision.plugins.sr_dsclora.distill import attach_dsclora, fold_dsclora
from lowrank_vision.plugins.sr_dsclora.model import build_span, reparameterize
from lowrank_vision.plugins.sr_dsclora.weights import (
    WEIGHTS_DIR,
    checkpoint_extra,
    default_weights,
    load_span,
    render_card,
    save_span,
)

torch.set_num_threads(1)


def _deployed(seed=0):
    torch.manual_seed(seed)
    return reparameterize(build_span(2, 8)).eval()


def test_save_load_round_trip_keeps_outputs_and_metadata(tmp_path):
    model = _deployed()
    path = save_span(model, tmp_path / "m.safetensors", extra={"eval_psnr": 30.5, "command": "test"})
    loaded = load_span(path)
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert checkpoint_extra(path) == {"eval_psnr": 30.5, "command": "test"}
    assert loaded.config == model.config


def test_save_refuses_adapters_and_training_form(tmp_path):
    student = copy.deepcopy(_deployed())
    attach_dsclora(student)
    with pytest.raises(ValueError, match="adapters"):
        save_span(student, tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="re-parameterised"):
        save_span(build_span(2, 8), tmp_path / "t.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    save_span(fold_dsclora(student), tmp_path / "s.safetensors")  # folded: a plain SPAN again
    assert (tmp_path / "s.safetensors").is_file()


def test_bad_checkpoints_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_span(tmp_path / "nope.safetensors")
    (tmp_path / "bogus.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_span(tmp_path / "bogus.safetensors")
    with pytest.raises(ValueError, match="kind"):
        default_weights("teacher", 4)
    with pytest.raises(FileNotFoundError, match="shipped"):
        default_weights("span", 3)


def test_shipped_card_is_written_from_the_checkpoints():
    card = (WEIGHTS_DIR / "README.md").read_text()
    assert card == render_card(), "weights/README.md is stale: run weights.write_card()"
    for kind in ("span", "dsclora"):
        extra = checkpoint_extra(default_weights(kind, 4))
        assert f"{extra['eval_psnr']:.3f}" in card and extra["command"] in card
