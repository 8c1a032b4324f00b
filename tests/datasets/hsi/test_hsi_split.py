"""Split protocols: disjoint splits whose patches never see another split's pixels, every coverable class covered,
uncoverable classes left out with a warning, clear errors only where the ground truth admits no split."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_vision.datasets.hsi.split import (SPLITS, make_split, masked_patches, pad_assignment, pad_cube)


def _real_like_gt(seed: int = 0) -> np.ndarray:
    """145x145, 16 classes of 20 to 2,455 pixels in 1-5 rectangular fields each (the size range of an AVIRIS scene),
    packed in shuffled order on shelves 10 pixels high with 1-pixel unlabelled gaps."""
    rng = np.random.default_rng(seed)
    sizes = [20, 28, 90, 240, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1455]
    fields = [(c, len(p)) for c, n in enumerate(sizes, 1) for p in np.array_split(np.arange(n), 1 if n < 100 else 1 + c % 5)]
    gt = np.zeros((145, 145), np.int64)
    y = x = 0
    for i in rng.permutation(len(fields)):
        c, n = fields[i]
        height = 10 if n >= 40 else 4
        width = -(-n // height)
        if x + width > 145:
            y, x = y + 11, 0
        flat = np.zeros(height * width, bool)
        flat[:n] = True
        gt[y : y + height, x : x + width][flat.reshape(width, height).T] = c
        x += width + 1
    assert [int((gt == c).sum()) for c in range(1, 17)] == sizes
    return gt


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return _real_like_gt()


def _check_leak_free(gt: np.ndarray, split, patch: int) -> None:
    """No pixel of another split inside any sample's patch: give every pixel a unique value and look for it."""
    h, w = gt.shape
    ids = np.arange(1, h * w + 1, dtype=np.float32).reshape(h, w, 1)
    padded, pa = pad_cube(ids, patch), pad_assignment(split.assignment, patch)
    for i, name in enumerate(SPLITS):
        rc = split.coords[name]
        if not len(rc):
            continue
        seen = masked_patches(padded, pa, rc, patch, i).reshape(-1).numpy()
        seen = seen[seen > 0].astype(np.int64) - 1
        assert np.all(split.assignment.reshape(-1)[seen] == i), f"{name} patches contain pixels of another split"
        assert np.all(split.assignment[rc[:, 0], rc[:, 1]] == i)
    sets = [set(map(tuple, split.coords[s])) for s in SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_regions_cover_every_class_keep_every_label_and_never_leak(gt):
    s = make_split(gt, "regions", (0.3, 0.1, 0.6), block=16, seed=0)
    summary = s.summary(gt)
    for name in SPLITS:
        assert min(summary[name]) >= 1, f"a class has no {name} pixel: {summary[name]}"
    assert summary["train"][0] >= 4 and summary["test"][0] >= 8  # the 20-pixel class: its share of each split
    assert summary["labelled_used_fraction"] == 1.0 and not s.excluded
    counts = np.bincount(gt.reshape(-1))[1:]
    train_share = np.array(summary["train"]) / counts
    assert np.all(np.abs(train_share[counts > 200] - 0.3) < 0.12)  # stratified: each large class near 30 % train
    _check_leak_free(gt, s, 9)
    assert np.array_equal(s.coords["test"], make_split(gt, "regions", seed=0).coords["test"])  # deterministic
    assert not np.array_equal(s.assignment, make_split(gt, "regions", seed=1).assignment)


def test_checkerboard_29_cells_and_val_carved_from_train(gt):
    s = make_split(gt, "checkerboard", block=29, seed=0)
    rows, cols = np.mgrid[0:145, 0:145]
    colour = (rows // 29 + cols // 29) % 2
    labelled = gt > 0
    assert np.all(colour[labelled & (s.assignment == 2)] == 1)
    assert np.all(colour[labelled & (s.assignment < 2)] == 0)  # train and val both come from the train cells
    assert len(s.coords["val"]) > 0.1 * (len(s.coords["train"]) + len(s.coords["val"]))
    _check_leak_free(gt, s, 9)
    assert s.summary(gt)["labelled_used_fraction"] + sum(1 for c in s.excluded) * 0 <= 1.0
    for c in s.excluded:  # a class whose pixels all fall into test cells cannot be learnt: left out, named
        assert not (labelled & (gt == c) & (colour == 0)).any()


def test_masks_protocol_and_overlap_error(gt):
    rows = np.mgrid[0:145, 0:145][0]
    train = np.where(rows < 60, gt, 0)
    test = np.where(rows >= 60, gt, 0)
    s = make_split(None, "masks", train_mask=train, test_mask=test, val_fraction=0.2)
    assert np.all(rows[s.coords["test"][:, 0], s.coords["test"][:, 1]] >= 60)
    assert np.all(rows[s.coords["train"][:, 0], s.coords["train"][:, 1]] < 60)
    present_in_train = set(np.unique(train[train > 0]))
    assert set(s.excluded) == set(np.unique(gt[gt > 0])) - present_in_train
    _check_leak_free(gt, s, 7)
    with pytest.raises(ValueError, match="masks must be disjoint"):
        make_split(gt, "masks", train_mask=train, test_mask=gt)
    with pytest.raises(ValueError, match="needs a train mask"):
        make_split(gt, "masks")


def test_uncoverable_class_is_left_out_with_a_warning_not_a_crash():
    gt = np.zeros((40, 40), np.int64)
    gt[2:20, 2:20], gt[22:38, 22:38], gt[30, 5:7] = 1, 2, 3  # class 3: two pixels, cannot cover three splits
    with pytest.warns(UserWarning, match=r"class\(es\) \[3\] left out"):
        s = make_split(gt, "regions", block=8)
    assert 3 in s.excluded and "2 pixel" in s.excluded[3]
    assert all(not np.any(gt[s.coords[n][:, 0], s.coords[n][:, 1]] == 3) for n in SPLITS)
    assert s.summary(gt)["labelled_used_fraction"] == pytest.approx(1 - 2 / (gt > 0).sum(), abs=1e-4)


def test_impossible_splits_fail_clearly():
    with pytest.raises(ValueError, match="no labelled pixel"):
        make_split(np.zeros((16, 16), int))
    with pytest.raises(ValueError, match="no class can be covered"):
        make_split(np.pad(np.ones((1, 2), int), 3))  # a single 2-pixel class
    with pytest.raises(ValueError, match="fractions"):
        make_split(np.ones((8, 8), int), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="both colours"):
        make_split(np.ones((8, 8), int), "checkerboard", block=8)
    with pytest.raises(ValueError, match="expected one of"):
        make_split(np.ones((8, 8), int), "random")
