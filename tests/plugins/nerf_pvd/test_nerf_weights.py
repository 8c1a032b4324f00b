"""Shipped weights: they load, their card and metadata carry the numbers the making command wrote."""

import json

import pytest

from lowrank_vision.plugins.nerf_pvd.model import load_field
from lowrank_vision.plugins.nerf_pvd.weights import WEIGHTS_DIR, shipped_checkpoint


def test_shipped_teacher_and_student_load_with_their_numbers():
    card = json.loads((WEIGHTS_DIR / "weights.json").read_text())
    for role, kind in (("teacher", "hash"), ("student", "tensorf_vm")):
        field, cfg, rig, info = load_field(shipped_checkpoint(role))
        assert cfg.kind == kind and (rig.width, rig.height) == (64, 64)
        assert sum(p.numel() for p in field.parameters()) == card[role]["params"] == info["params"]
        assert info["test_psnr"] == card[role]["test_psnr"] and info["command"] == card["command"]
    assert card["teacher"]["test_psnr"] > 15.0 and card["student"]["test_psnr"] > 12.0  # floors, far below what was measured
    assert card["command"] in (WEIGHTS_DIR / "README.md").read_text()


def test_unknown_role_is_an_error():
    with pytest.raises(ValueError, match="role must be one of"):
        shipped_checkpoint("pupil")
