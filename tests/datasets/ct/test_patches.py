"""Foreground-aware random patches (lowrank_vision.datasets.ct.patches) and the plugin's whole-volume/patch choice."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lowrank_vision.datasets.ct.patches import RandomPatches, crop_or_pad


class _Cases(torch.utils.data.Dataset):
    def __init__(self, shapes, blob=True):
        self.items = []
        for k, shape in enumerate(shapes):
            img = torch.rand((2, *shape), generator=torch.Generator().manual_seed(k))
            lab = torch.zeros((1, *shape))
            if blob:
                lab[0, 2:5, 3:6, 1:3] = 1.0
            self.items.append({"image": img, "label": lab})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_crop_or_pad():
    x = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3)
    assert torch.equal(crop_or_pad(x, (1, 0, 0), (2, 5, 3)), x[:, 1:3])
    padded = crop_or_pad(x, (-1, 0, 0), (6, 5, 3))
    assert padded.shape == (2, 6, 5, 3) and torch.equal(padded[:, 1:5], x) and padded[:, 0].abs().sum() == 0


def test_positive_crops_hold_foreground_and_items_are_deterministic():
    ds = _Cases([(40, 40, 12), (36, 44, 10)])
    pos_only = RandomPatches(ds, (16, 16, 8), samples_per_case=10, pos=1.0, neg=0.0, seed=3)
    assert len(pos_only) == 20
    assert all(pos_only[i]["label"].sum() > 0 for i in range(len(pos_only)))
    assert all(pos_only[i]["image"].shape == (2, 16, 16, 8) and pos_only[i]["label"].shape == (1, 16, 16, 8) for i in range(4))
    again = RandomPatches(ds, (16, 16, 8), samples_per_case=10, pos=1.0, neg=0.0, seed=3)
    assert torch.equal(pos_only[7]["image"], again[7]["image"])
    balanced = RandomPatches(ds, (16, 16, 8), samples_per_case=40, seed=3)
    hits = sum(float(balanced[i]["label"].sum() > 0) for i in range(len(balanced))) / len(balanced)
    assert 0.4 < hits < 0.9  # half the centres on blood, and some random ones that still catch it


def test_small_volumes_are_padded_and_errors():
    p = RandomPatches(_Cases([(6, 7, 3)]), (8, 8, 8), samples_per_case=2)
    assert p[0]["image"].shape == (2, 8, 8, 8) and p[0]["label"].sum() == 18
    with pytest.raises(ValueError, match="roi"):
        RandomPatches(_Cases([(6, 7, 3)]), (8, 8))
    with pytest.raises(ValueError, match="samples_per_case"):
        RandomPatches(_Cases([(6, 7, 3)]), (8, 8, 8), samples_per_case=0)


def test_plugin_trains_small_equal_volumes_whole_and_others_on_patches():
    from lowrank_vision.plugins.hemorrhage_seg.config import PRESETS
    from lowrank_vision.plugins.hemorrhage_seg.recipes import training_set

    cfg = PRESETS["tiny"]
    data, how = training_set(_Cases([(32, 32, 16)] * 3), [0, 2], cfg)
    assert how == "whole volumes" and len(data) == 2
    data, how = training_set(_Cases([(120, 130, 30), (100, 96, 28)]), [0, 1], cfg)
    assert how == "patches" and len(data) == 2 * cfg.samples_per_case and data[0]["image"].shape == (2, 96, 96, 32)
    data, how = training_set(_Cases([(30, 33, 13), (31, 33, 13)]), [0, 1], cfg)  # small but unequal: one crop covers each
    assert how == "patches" and data[0]["image"].shape == (2, 32, 40, 16)
    with pytest.raises(ValueError, match="patch"):
        replace(cfg, patch=(90, 96, 32))


def test_thick_slice_augmentation_blurs_slices_only_and_keeps_labels():
    from lowrank_vision.datasets.ct.patches import thick_slices

    x = torch.zeros(2, 8, 8, 12)
    x[:, :, :, 5] = 1.0  # one bright slice
    t = thick_slices(x, 2)
    assert t.shape == x.shape
    assert torch.allclose(t.sum(-1), x.sum(-1), atol=0.3)  # about the same signal, spread along z
    assert 0.2 < float(t[0, 0, 0, 5]) < 0.8 and float(t[0, 0, 0, 4] + t[0, 0, 0, 6]) > 0.2
    assert torch.allclose(thick_slices(torch.full((1, 4, 4, 8), 0.7), 2), torch.full((1, 4, 4, 8), 0.7))
    ds = _Cases([(24, 24, 12)])
    plain = RandomPatches(ds, (16, 16, 8), samples_per_case=6, seed=1)
    always = RandomPatches(ds, (16, 16, 8), samples_per_case=6, seed=1, thick_slice_prob=1.0)
    for i in range(6):  # same crops, same labels; every image smoother along z than the plain crop
        a, b = plain[i], always[i]
        assert torch.equal(a["label"], b["label"])
        assert (b["image"].diff(dim=-1).abs().mean() < 0.8 * a["image"].diff(dim=-1).abs().mean())
    with pytest.raises(ValueError, match="thick_slice_prob"):
        RandomPatches(ds, (16, 16, 8), thick_slice_prob=1.5)
    with pytest.raises(ValueError, match="thick_slice_factor"):
        RandomPatches(ds, (16, 16, 8), thick_slice_prob=0.5, thick_slice_factor=1)
