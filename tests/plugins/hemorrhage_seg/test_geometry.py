"""`predict` at real CT geometry: masks come back on the input's exact grid and affine, whatever its axis order,
flips, obliquity, spacing or file format (NIfTI or a DICOM series written here with pydicom)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from lowrank_vision.datasets.ct.geometry import CanonicalGrid  # noqa: E402
from lowrank_vision.datasets.ct.readers import save_nifti  # noqa: E402
from lowrank_vision.datasets.ct.synthetic import synthesize_case  # noqa: E402
from lowrank_vision.plugins.hemorrhage_seg.config import PRESETS, UNetConfig  # noqa: E402
from lowrank_vision.plugins.hemorrhage_seg.metrics import dice  # noqa: E402
from lowrank_vision.plugins.hemorrhage_seg.recipes import segment_file  # noqa: E402
from lowrank_vision.plugins.hemorrhage_seg.weights import load_model  # noqa: E402
from tests.datasets.ct.dicom import write_ct_series  # noqa: E402

NATIVE = PRESETS["cpu"].data


class BloodWindow(torch.nn.Module):
    """A stand-in network whose answer is known: logit > 0 where the subdural-window value is blood-like (45-95 HU)."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        hu = x[:, 1:2] * 200.0 - 20.0
        return torch.minimum(hu - 45.0, 95.0 - hu) + self.offset


def _variants(image: np.ndarray, affine: np.ndarray):
    """(name, array, affine, undo): the same volume in world space stored with other axis orders/flips/obliquity;
    ``undo`` brings an array on that grid back onto the original one."""
    n = np.array(image.shape)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = n[:2] - 1  # voxel i -> n - 1 - i along x and y
    t = np.deg2rad(20.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    perm = np.zeros((4, 4))
    perm[[1, 2, 0], [0, 1, 2]] = 1.0  # new axes (y, z, x)
    perm[3, 3] = 1.0
    return [
        ("lps", image[::-1, ::-1], affine @ flip, lambda a: a[::-1, ::-1]),
        ("permuted", image.transpose(1, 2, 0), affine @ perm, lambda a: a.transpose(2, 0, 1)),
        ("oblique", image, rot @ affine, lambda a: a),
    ]


@pytest.fixture(scope="module")
def shipped():
    return load_model()


@pytest.mark.parametrize("variant", ["lps", "permuted", "oblique"])
def test_predicted_mask_lies_on_the_input_grid_exactly(tmp_path, shipped, variant):
    model, arch, windows, grid = shipped
    image, _, _ = synthesize_case("tbi", 2, 11, NATIVE)
    save_nifti(image, NATIVE.affine, tmp_path / "ref.nii.gz")
    segment_file(tmp_path / "ref.nii.gz", tmp_path / "ref_mask.nii.gz", model, arch, windows, grid)
    ref = np.asarray(nib.load(str(tmp_path / "ref_mask.nii.gz")).dataobj)
    assert ref.sum() > 20
    name, arr, aff, undo = next(v for v in _variants(image, NATIVE.affine) if v[0] == variant)
    save_nifti(np.ascontiguousarray(arr), aff, tmp_path / "in.nii.gz")
    res = segment_file(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", model, arch, windows, grid)
    src, out = nib.load(str(tmp_path / "in.nii.gz")), nib.load(str(tmp_path / "out.nii.gz"))
    assert out.shape == src.shape and np.array_equal(out.affine, src.affine)
    assert np.array_equal(out.header.get_zooms(), src.header.get_zooms()) and out.get_data_dtype() == np.uint8
    assert np.array_equal(undo(np.asarray(out.dataobj)), ref)  # the same voxels in world space, exactly
    assert res["orientation"] == {"lps": "LPS", "permuted": "ASR", "oblique": "RAS"}[name]
    assert res["model_grid"] == {"orientation": "RAS", "spacing_mm": list(NATIVE.spacing)}


@pytest.mark.parametrize("spacing, flip_z", [((0.45, 0.45, 5.0), False), ((1.0, 1.0, 1.0), True)])
def test_anisotropic_and_isotropic_inputs_are_resampled_and_mapped_back(tmp_path, spacing, flip_z):
    """Finer grids than the model's (0.45 mm pixels with 5 mm slices; 1 mm isotropic with a flipped axis): the mask of
    a network with a known answer (blood-like HU) comes back aligned with an off-centre blood ball on the input grid."""
    shape = tuple(int(round(e / s)) for e, s in zip((120.0, 110.0, 80.0), spacing))
    affine = np.diag([*spacing, 1.0])
    if flip_z:
        affine[2, 2], affine[2, 3] = -spacing[2], (shape[2] - 1) * spacing[2]
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    truth = np.linalg.norm(world - np.array([40.0, 65.0, 18.0], np.float32), axis=-1) <= 16.0
    image = np.where(truth, 70, 30).astype(np.int16)
    save_nifti(image, affine, tmp_path / "in.nii.gz")
    res = segment_file(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", BloodWindow(), UNetConfig(), ("brain", "subdural"),
                       CanonicalGrid(NATIVE.spacing))
    out = nib.load(str(tmp_path / "out.nii.gz"))
    mask = np.asarray(out.dataobj) > 0
    assert mask.shape == image.shape and np.array_equal(out.affine, nib.load(str(tmp_path / "in.nii.gz")).affine)
    assert dice(mask, truth) > 0.85
    assert dice(mask, truth[:, :, ::-1]) < 0.5 and dice(mask, truth[::-1]) < 0.5  # a flipped mask would not fit
    assert res["spacing_mm"] == pytest.approx(list(spacing))


def _write_dicom_series(folder, image: np.ndarray, spacing, origin_ras):
    """Write ``image`` (x, y, z) in RAS with voxel size ``spacing`` as an axial DICOM CT series (LPS patient frame):
    rows run along RAS +y (LPS -y), columns along RAS +x (LPS -x)."""
    sx, sy, sz = spacing
    stored = (np.moveaxis(image, 2, 0).transpose(0, 2, 1).astype(np.int32) + 1024).astype(np.int16)  # (slice, row = y, column = x)
    positions = [[-origin_ras[0], -origin_ras[1], origin_ras[2] + sz * k] for k in range(image.shape[2])]
    write_ct_series(folder, stored, [sy, sx], sz, positions, [-1, 0, 0, 0, -1, 0])


def test_dicom_series_input_gives_the_same_mask_in_world_space(tmp_path, shipped):
    pytest.importorskip("pydicom")
    model, arch, windows, grid = shipped
    image, _, _ = synthesize_case("tbi", 2, 11, NATIVE)
    _write_dicom_series(tmp_path / "series", image, NATIVE.spacing, NATIVE.affine[:3, 3])
    save_nifti(image, NATIVE.affine, tmp_path / "ref.nii.gz")
    segment_file(tmp_path / "ref.nii.gz", tmp_path / "ref_mask.nii.gz", model, arch, windows, grid)
    res = segment_file(tmp_path / "series", tmp_path / "dcm_mask.nii.gz", model, arch, windows, grid)
    ref = nib.as_closest_canonical(nib.load(str(tmp_path / "ref_mask.nii.gz")))
    got = nib.as_closest_canonical(nib.load(str(tmp_path / "dcm_mask.nii.gz")))
    assert np.allclose(got.affine, ref.affine, atol=1e-3)
    assert np.asarray(ref.dataobj).sum() > 20 and np.array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj))
    assert res["shape"] == list(image.shape) and res["spacing_mm"] == pytest.approx(list(NATIVE.spacing), abs=1e-4)


def test_predict_warns_on_a_chest_ct_and_not_on_a_head_ct(tmp_path, shipped):
    import warnings

    from lowrank_vision.datasets.ct.phantom import HEAD_PRESETS, HeadCTConfig, synthesize_chest, synthesize_head
    from lowrank_vision.plugins.hemorrhage_seg.recipes import NotHeadCTWarning

    model, arch, windows, grid = shipped
    chest_cfg = HeadCTConfig(shape=(128, 128, 6), spacing=(2.8, 2.8, 5.0), centre_mm=(0.0, 0.0, 0.0))
    save_nifti(synthesize_chest(0, chest_cfg), chest_cfg.affine, tmp_path / "chest.nii.gz")
    with pytest.warns(NotHeadCTWarning, match="does not look like a head CT"):
        res = segment_file(tmp_path / "chest.nii.gz", tmp_path / "chest_mask.nii.gz", model, arch, windows, grid)
    assert any("body width" in w for w in res["warnings"]) and res["input_check"]["width_mm"] > 300
    head, _, _ = synthesize_head("sah", 0, seed=4)
    save_nifti(head, HEAD_PRESETS["small"].affine, tmp_path / "head.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotHeadCTWarning)
        res = segment_file(tmp_path / "head.nii.gz", tmp_path / "head_mask.nii.gz", model, arch, windows, grid)
    assert res["warnings"] == [] and res["input_check"]["width_mm"] < 200


def test_implausible_blood_volume_warns(tmp_path):
    """A network that calls everything brain-like blood: the head passes the input check, the volume does not."""
    from lowrank_vision.datasets.ct.phantom import HEAD_PRESETS, synthesize_head
    from lowrank_vision.plugins.hemorrhage_seg.recipes import NotHeadCTWarning

    class Everything(BloodWindow):
        def forward(self, x):
            return (x[:, 0:1] - 0.2) * 50 + self.offset

    head, _, _ = synthesize_head("tbi", 0, seed=4)
    save_nifti(head, HEAD_PRESETS["small"].affine, tmp_path / "head.nii.gz")
    with pytest.warns(NotHeadCTWarning, match="implausible"):
        res = segment_file(tmp_path / "head.nii.gz", tmp_path / "m.nii.gz", Everything(), UNetConfig(), ("brain", "subdural"), None)
    assert res["blood_ml"] > 150 and len(res["warnings"]) == 1
