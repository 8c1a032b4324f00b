"""Procedural captioned scenes: captions from the scene, deterministic disjoint splits, held-out texture."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_vision.datasets.diffusion.procedural import (NEW_TEXTURE, Scene, caption, make_split, render, vocabulary)


def test_caption_and_vocabulary():
    scene = Scene("triangle", "green", "top", "striped")
    assert caption(scene) == "a striped green triangle at the top"
    assert caption(Scene("circle", "red", "centre", "plain")) == "a plain red circle in the centre"
    words = set(vocabulary())
    for split in ("train", "concept_train"):
        _, captions, _ = make_split(split, 20)
        assert all(set(c.split()) <= words for c in captions)


def test_splits_deterministic_and_texture_held_out():
    a, ca, sa = make_split("train", 50)
    b, cb, _ = make_split("train", 50)
    assert np.array_equal(a, b) and ca == cb
    assert a.shape == (50, 3, 32, 32) and a.dtype == np.float32 and a.min() >= -1 and a.max() <= 1
    assert NEW_TEXTURE not in {s.texture for s in sa} and not any(NEW_TEXTURE in c for c in ca)
    _, concept, scenes = make_split("concept_train", 30)
    assert {s.texture for s in scenes} == {NEW_TEXTURE}
    _, val, _ = make_split("val", 50)
    assert not np.array_equal(a, make_split("val", 50)[0])
    assert len({s.texture for s in make_split("classifier_train", 80)[2]}) == 4


def test_textures_differ_inside_the_shape():
    images = [render(Scene("square", "blue", "centre", t), 32) for t in ("plain", "striped", "dotted", "checkered")]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(images[i] - images[j]).mean() > 0.01


def test_bad_split_and_n():
    with pytest.raises(ValueError, match="split must be one of"):
        make_split("tain", 4)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        make_split("train", 0)
