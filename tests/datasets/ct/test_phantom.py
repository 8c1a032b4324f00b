"""Realistic synthetic head CT (lowrank_vision.datasets.ct.phantom), small preset; real-size presets in slow tests."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lowrank_vision.datasets.ct.phantom import HEAD_PRESETS, HEMORRHAGE_TYPES, HeadCTConfig, synthesize_chest, synthesize_head

SMALL = HEAD_PRESETS["small"]


def test_small_preset_is_deterministic_fast_and_looks_like_a_head_ct():
    t0 = time.perf_counter()
    img, mask, info = synthesize_head("tbi", 3, seed=5)
    assert time.perf_counter() - t0 < 15.0
    img2, mask2, info2 = synthesize_head("tbi", 3, seed=5)
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2) and info == info2
    assert not np.array_equal(synthesize_head("tbi", 4, seed=5)[0], img)
    assert img.dtype == np.int16 and mask.dtype == np.uint8 and img.shape == SMALL.shape
    assert (img < -900).mean() > 0.2 and (img > 1000).mean() > 0.005  # air around the head, dense skull
    soft = img[(img > 15) & (img < 50) & (mask == 0)]
    assert 22 < np.median(soft) < 42  # parenchyma (white matter ~28 minus a few HU of cupping)
    assert ((img > -20) & (img < 15)).mean() > 0.005  # CSF spaces
    assert info["blood_ml"] == pytest.approx(mask.sum() * np.prod(SMALL.spacing) / 1000)


@pytest.mark.parametrize("kind", HEMORRHAGE_TYPES)
def test_every_hemorrhage_type_is_dense_and_where_it_belongs(kind):
    img, mask, info = synthesize_head("tbi" if kind != "subarachnoid" else "sah", 2, seed=1, kinds=[kind])
    assert info["lesions"] == [kind] and mask.sum() > 0
    assert 45 < np.median(img[mask > 0]) < 95
    cfg = SMALL
    idx = np.argwhere(mask > 0)
    world = idx * np.array(cfg.spacing) + cfg.affine[:3, 3]
    dist_from_centre = np.linalg.norm(world[:, :2], axis=1)
    if kind in ("epidural", "subdural"):
        assert np.median(dist_from_centre) > 45  # against the inner table
    if kind == "intraventricular":
        assert np.median(dist_from_centre) < 50


def test_domains_draw_their_types_and_volumes_span_an_order_of_magnitude():
    tbi = [synthesize_head("tbi", i, seed=0)[2] for i in range(4)]
    sah = [synthesize_head("sah", i, seed=0)[2] for i in range(4)]
    assert all("subarachnoid" not in c["lesions"] for c in tbi) and all("subarachnoid" in c["lesions"] for c in sah)
    assert {"epidural", "subdural", "intraparenchymal"} & {k for c in tbi for k in c["lesions"]}
    vols = np.array([c["blood_ml"] for c in tbi + sah])
    assert vols.min() > 0.1 and vols.max() / vols.min() > 8


def test_the_same_head_at_another_grid_and_a_flipped_axis():
    fine = HeadCTConfig(shape=(96, 108, 32), spacing=(2.0, 2.0, 5.0), flip=(False, True, False), subsample_mm=(2.0, 2.0, 2.5))
    a, ma, ia = synthesize_head("tbi", 3, seed=3, config=SMALL, kinds=["intraparenchymal"])
    b, mb, ib = synthesize_head("tbi", 3, seed=3, config=fine, kinds=["intraparenchymal"])
    assert ia["blood_ml"] > 10 and ib["blood_ml"] == pytest.approx(ia["blood_ml"], rel=0.2)
    assert fine.affine[1, 1] == -2.0  # stored posterior-to-anterior
    # the flipped grid holds the head upside down along y: unflipping gives a head centred like the RAS one
    com = lambda m, cfg: (np.argwhere(m > 0).mean(0) * np.abs(np.diag(cfg.affine)[:3]))  # noqa: E731
    assert abs(com(b[:, ::-1] > 0, fine)[1] - com(a > 0, SMALL)[1]) < 10


def test_chest_ct_is_wide_with_lungs():
    chest = synthesize_chest(0, HeadCTConfig(shape=(128, 128, 6), spacing=(2.8, 2.8, 5.0), centre_mm=(0, 0, 0)))
    assert ((chest > -950) & (chest < -700)).mean() > 0.1 and (chest > 300).mean() > 0.003


def test_bad_requests():
    with pytest.raises(ValueError, match="domain"):
        synthesize_head("chest", 0)
    with pytest.raises(ValueError, match="kinds"):
        synthesize_head("tbi", 0, kinds=["aneurysm"])
    with pytest.raises(ValueError, match="HeadCTConfig.spacing"):
        HeadCTConfig(spacing=(0.45, 0.0, 5.0))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["thick", "iso"])
def test_real_size_presets(preset):
    cfg = HEAD_PRESETS[preset]
    img, mask, info = synthesize_head("tbi", 0, seed=0, config=preset)
    assert img.shape == cfg.shape and mask.sum() > 0
    assert 45 < np.median(img[mask > 0]) < 95


def test_head_dataset_drawn_in_worker_processes_equals_the_sequential_one(tmp_path):
    """write_case_folder's spawned-process path writes the same cases as the sequential path."""
    import json

    import nibabel as nib
    import numpy as np

    from lowrank_vision.datasets.ct.phantom import write_head_dataset

    one = write_head_dataset(tmp_path / "one", "sah", 2, seed=3, config="small", progress=False, workers=1)
    two = write_head_dataset(tmp_path / "two", "sah", 2, seed=3, config="small", progress=False, workers=2)
    cases_one, cases_two = (json.loads((d / "dataset.json").read_text())["cases"] for d in (one, two))
    assert cases_one == cases_two and len(cases_one) == 2
    for case in cases_one:
        for key in ("image", "label"):
            np.testing.assert_array_equal(nib.load(one / case[key]).get_fdata(), nib.load(two / case[key]).get_fdata())
