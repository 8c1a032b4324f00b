"""Head-CT plausibility checks (lowrank_vision.datasets.ct.checks)."""

from __future__ import annotations

import numpy as np

from lowrank_vision.datasets.ct.checks import blood_volume_check, head_ct_check
from lowrank_vision.datasets.ct.phantom import HEAD_PRESETS, HeadCTConfig, synthesize_chest, synthesize_head

CHEST = HeadCTConfig(shape=(128, 128, 6), spacing=(2.8, 2.8, 5.0), centre_mm=(0.0, 0.0, 0.0))


def test_a_generated_head_passes_and_its_measures_are_head_sized():
    img, _, _ = synthesize_head("sah", 0, seed=2)
    r = head_ct_check(img, HEAD_PRESETS["small"].affine)
    assert r["looks_like_head_ct"] and r["reasons"] == []
    m = r["measures"]
    assert 120 < m["width_mm"] < 200 and 150 < m["length_mm"] < 230 and 0.1 < m["bone_fraction"] < 0.4 and m["air_fraction"] < 0.05


def test_a_chest_fails_and_says_why():
    r = head_ct_check(synthesize_chest(0, CHEST), CHEST.affine)
    assert not r["looks_like_head_ct"]
    text = " ".join(r["reasons"])
    assert "body width (left-right) is 3" in text and "air/lung" in text and "field of view" in text


def test_the_check_does_not_depend_on_axis_order():
    img, _, _ = synthesize_head("tbi", 1, seed=2)
    aff = HEAD_PRESETS["small"].affine
    perm = np.zeros((4, 4))
    perm[[1, 0, 2], [0, 1, 2]] = 1.0
    perm[3, 3] = 1.0
    a = head_ct_check(img, aff)["measures"]
    b = head_ct_check(np.ascontiguousarray(img.transpose(1, 0, 2)), aff @ perm)["measures"]
    assert a == b


def test_empty_volume_and_blood_volume():
    r = head_ct_check(np.full((8, 8, 4), -1000, np.int16), np.eye(4))
    assert not r["looks_like_head_ct"] and "no body" in r["reasons"][0]
    assert blood_volume_check(20.0) == [] and "implausible" in blood_volume_check(757.0)[0]
