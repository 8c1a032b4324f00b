"""Synthetic head CT generator and CT readers (lowrank_vision.datasets.ct.synthetic / .readers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lowrank_vision.datasets.ct.readers import (
    CTSegmentationDataset, HUWindowd, blood_volume_ml, find_image_mask_pairs, load_nifti, save_mask_like, save_nifti, window_hu,
)
from lowrank_vision.datasets.ct.synthetic import SyntheticCTConfig, synthesize_case, write_synthetic_dataset
from tests.datasets.ct.dicom import write_ct_series

SMALL = SyntheticCTConfig(shape=(32, 32, 16), spacing=(5.6, 5.6, 10.5))


@pytest.mark.parametrize("domain", ["tbi", "sah"])
def test_case_is_deterministic_and_has_head_ct_intensities(domain):
    img, mask, info = synthesize_case(domain, 3, seed=5)
    img2, mask2, info2 = synthesize_case(domain, 3, seed=5)
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2) and info == info2
    assert not np.array_equal(synthesize_case(domain, 4, seed=5)[0], img)
    assert img.dtype == np.int16 and mask.dtype == np.uint8 and img.shape == mask.shape == (64, 64, 24)
    assert (img < -900).mean() > 0.05  # air around the head
    assert img.max() > 800  # skull
    blood = img[mask > 0].astype(float)
    assert 30 < np.median(blood) < 90
    assert info["blood_ml"] == pytest.approx(blood_volume_ml(mask, (2.8, 2.8, 7.0)))


def test_brain_csf_and_blood_are_separated():
    img, mask, _ = synthesize_case("tbi", 0)
    soft = img[(img > 15) & (img < 50) & (mask == 0)]
    assert 30 < np.median(soft) < 42  # parenchyma
    assert np.median(img[mask > 0]) - np.median(soft) > 15


@pytest.mark.parametrize("domain, lo, hi", [("tbi", 0.5, 300.0), ("sah", 0.5, 300.0)])
def test_volumes_span_an_order_of_magnitude(domain, lo, hi):
    vols = np.array([synthesize_case(domain, i)[2]["blood_ml"] for i in range(18)])
    assert vols.min() > lo and vols.max() < hi
    q1, q3 = np.percentile(vols, [16, 84])
    assert q3 / q1 > 3.0


def test_sah_blood_is_thinner_than_tbi_blood():
    from scipy.ndimage import binary_erosion

    def core_fraction(domain):
        fr = []
        for i in range(8):
            m = synthesize_case(domain, i)[1].astype(bool)
            fr.append(binary_erosion(m).sum() / max(1, m.sum()))
        return float(np.mean(fr))

    assert core_fraction("sah") < 0.5 * core_fraction("tbi")


def test_write_and_read_back_with_monai(tmp_path):
    root = write_synthetic_dataset(tmp_path / "sah", "sah", 3, seed=1, config=SMALL, progress=False)
    meta = json.loads((root / "dataset.json").read_text())
    assert len(meta["cases"]) == 3
    pairs = find_image_mask_pairs(root)
    assert [p["name"] for p in pairs] == ["sah_000", "sah_001", "sah_002"]
    arr, affine, _ = load_nifti(pairs[0]["image"])
    assert np.allclose(np.abs(np.diag(affine))[:3], SMALL.spacing)
    assert np.array_equal(arr, synthesize_case("sah", 0, 1, SMALL)[0].astype(np.float32))
    ds = CTSegmentationDataset(pairs, windows=("brain", "subdural", "bone"))
    item = ds[0]
    assert item["image"].shape == (3, 32, 32, 16) and item["label"].shape == (1, 32, 32, 16)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert torch.allclose(item["spacing"], torch.tensor(SMALL.spacing))
    assert float(item["label"].sum()) == pytest.approx(meta["cases"][0]["blood_ml"] * 1000 / np.prod(SMALL.spacing))
    # rewriting the same request reuses the folder
    mtime = (root / "imagesTr" / "sah_000.nii.gz").stat().st_mtime_ns
    write_synthetic_dataset(tmp_path / "sah", "sah", 3, seed=1, config=SMALL, progress=False)
    assert (root / "imagesTr" / "sah_000.nii.gz").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "hu, window, expected",
    [(40.0, "brain", 0.5), (0.0, "brain", 0.0), (80.0, "brain", 1.0), (-500.0, "brain", 0.0),
     (80.0, "subdural", 0.5), (1000.0, "bone", (1000 - 600 + 1400) / 2800)],
)
def test_window_table(hu, window, expected):
    assert float(window_hu(torch.tensor([hu]), [window])[0, 0]) == pytest.approx(expected)


def test_blood_volume_ml():
    assert blood_volume_ml(np.ones((10, 10, 10)), (1.0, 1.0, 2.0)) == pytest.approx(2.0)
    assert blood_volume_ml(np.zeros((4, 4, 4)), (3.0, 3.0, 3.0)) == 0.0


def test_hu_window_transform_keeps_meta_and_binarises_the_label():
    from monai.data import MetaTensor

    affine = torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0]))
    img = MetaTensor(torch.tensor([40.0, 80.0, 1000.0]).reshape(1, 3, 1, 1), affine=affine)
    out = HUWindowd(["image"], ["brain", "subdural"], label_key="label")({"image": img, "label": np.array([[[[0]], [[3]], [[1]]]])})
    assert out["image"].shape == (2, 3, 1, 1) and torch.equal(out["image"].affine, affine)
    assert out["image"][0, :, 0, 0].tolist() == [0.5, 1.0, 1.0] and out["image"][1, :, 0, 0].tolist() == pytest.approx([0.3, 0.5, 1.0])
    assert out["label"].dtype == torch.float32 and out["label"].flatten().tolist() == [0.0, 1.0, 1.0]
    plain = HUWindowd("image", ["bone"])({"image": np.full((1, 2, 2, 2), 600.0)})
    assert plain["image"].shape == (1, 2, 2, 2) and float(plain["image"].max()) == 0.5 and "label" not in plain


def test_save_nifti_is_atomic_and_checks_the_name(tmp_path):
    import nibabel as nib

    p = save_nifti(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([2.0, 2.0, 5.0, 1.0]), tmp_path / "v.nii.gz")
    back = nib.load(str(p))
    assert np.array_equal(np.asarray(back.dataobj), np.arange(24).reshape(2, 3, 4)) and back.header.get_xyzt_units()[0] == "mm"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["v.nii.gz"]  # no temporary file left
    with pytest.raises(ValueError, match="NIfTI"):
        save_nifti(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "v.png")


def test_layouts_of_public_datasets(tmp_path):
    import nibabel as nib

    for img_dir, mask_dir in [("ct_scans", "masks"), ("data", "label"), ("images", "ground truths")]:
        root = tmp_path / img_dir
        (root / img_dir).mkdir(parents=True)
        (root / mask_dir).mkdir()
        for name in ("049", "050"):
            nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(root / img_dir / f"{name}.nii"))
            nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), str(root / mask_dir / f"{name}.nii"))
        assert [p["name"] for p in find_image_mask_pairs(root)] == ["049", "050"]


def _make_layout(tmp_path, img_shape=(8, 8, 4), mask_shape=(8, 8, 4), img_name="a.nii.gz"):
    import nibabel as nib

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    if img_name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(np.zeros(img_shape, np.int16), np.eye(4)), str(tmp_path / "imagesTr" / img_name))
    else:
        (tmp_path / "imagesTr" / img_name).write_text("not an image")
    nib.save(nib.Nifti1Image(np.zeros(mask_shape, np.uint8), np.eye(4)), str(tmp_path / "labelsTr" / "a.nii.gz"))
    return tmp_path


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mask_shape": (8, 8, 5)}, ValueError, "shape"),
        ({"img_name": "a.png"}, ValueError, "not NIfTI"),
    ],
)
def test_bad_data_folders(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        find_image_mask_pairs(_make_layout(tmp_path, **kwargs))


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    with pytest.raises(ValueError, match="empty"):
        find_image_mask_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder"):
        find_image_mask_pairs(tmp_path / "imagesTr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_image_mask_pairs(tmp_path / "nope")


def test_corrupt_nifti_is_named(tmp_path):
    p = tmp_path / "x.nii.gz"
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        load_nifti(p)


def test_saved_mask_keeps_affine(tmp_path):
    import nibabel as nib

    affine = np.array([[0.0, -0.5, 0, 10], [0.45, 0, 0, -3], [0, 0, 5.0, 7], [0, 0, 0, 1]])
    ref = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine)
    out = save_mask_like(np.ones((6, 5, 4)), ref.header, affine, tmp_path / "m.nii.gz")
    back = nib.load(str(out))
    assert np.allclose(back.affine, affine) and back.get_fdata().sum() == 120
    with pytest.raises(ValueError, match="NIfTI"):
        save_mask_like(np.ones((2, 2, 2)), None, np.eye(4), tmp_path / "m.png")


def test_dicom_series_reader(tmp_path):
    pytest.importorskip("pydicom")
    from lowrank_vision.datasets.ct.readers import load_dicom_series

    vol = (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 50).astype(np.int16)  # (slice, row, col)
    write_ct_series(tmp_path, vol, [0.5, 0.5], 5.0, [[0.0, 0.0, 5.0 * k] for k in range(4)], [1, 0, 0, 0, 1, 0])
    arr, affine = load_dicom_series(tmp_path)
    assert arr.shape == (5, 6, 4)
    assert float(arr.min()) == -1024.0 and float(arr.max()) == 49 - 1024
    assert np.allclose(np.abs(np.diag(affine))[:3], [0.5, 0.5, 5.0])
