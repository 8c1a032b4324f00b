"""Canonical grid of CT volumes (lowrank_vision.datasets.ct.geometry): orientation, spacing, exact way back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_vision.datasets.ct.geometry import CanonicalGrid, axis_codes, from_canonical, to_canonical, voxel_spacing


def _rotation_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def _affines():
    """(name, affine) pairs: the same kind of head grid stored with other axis orders, flips, spacings, obliquity."""
    ras = np.diag([0.9, 0.9, 5.0, 1.0])
    ras[:3, 3] = [-20.0, 12.0, -40.0]
    lps = np.diag([-0.9, -0.9, 5.0, 1.0])
    lps[:3, 3] = [25.0, 30.0, -40.0]
    perm = np.array([[0, 0, -1.1, 30.0], [0.7, 0, 0, -10.0], [0, 2.5, 0, -35.0], [0, 0, 0, 1]])  # A, S, L axes
    oblique = _rotation_z(17.0) @ ras
    return [("ras", ras), ("lps", lps), ("permuted", perm), ("oblique", oblique)]


def _sphere(shape, affine, centre_mm, radius_mm) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(world - centre_mm, axis=1) <= radius_mm).reshape(shape).astype(np.float32)


def test_reorientation_alone_is_lossless_and_exactly_invertible():
    from nibabel.orientations import inv_ornt_aff

    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5, 6)).astype(np.float32)
    for name, aff in _affines():
        _, gm = to_canonical(a, aff, CanonicalGrid((1.0, 1.0, 1.0)))
        oriented_spacing = voxel_spacing(aff @ inv_ornt_aff(gm.to_ras, a.shape))
        x, gm = to_canonical(a, aff, CanonicalGrid(oriented_spacing))  # the model's spacing = the input's: no resampling
        assert sorted(x.flatten().tolist()) == sorted(a.flatten().tolist()), name  # the same voxels, only moved
        assert torch.equal(from_canonical(x, gm), torch.from_numpy(a)), name
        assert axis_codes(gm.canonical_affine) == "RAS", name


@pytest.mark.parametrize("name, affine", _affines())
def test_world_positions_survive_the_canonical_grid(name, affine):
    """A sphere at a known world position lies there on the canonical grid, whatever the input's axes."""
    shape = tuple(int(round(60.0 / s)) for s in voxel_spacing(affine))
    centre = affine[:3, :3] @ (np.array(shape) / 2.0) + affine[:3, 3] + [3.0, -4.0, 2.0]
    vol = _sphere(shape, affine, centre, 14.0)
    grid = CanonicalGrid((2.0, 2.0, 4.0))
    x, gm = to_canonical(vol, affine, grid)
    assert axis_codes(gm.canonical_affine) == "RAS"
    assert np.allclose(gm.canonical_spacing, grid.spacing, rtol=0.08)
    idx = np.argwhere(x.numpy() > 0.5).mean(0)
    found = gm.canonical_affine[:3, :3] @ idx + gm.canonical_affine[:3, 3]
    assert np.linalg.norm(found - centre) < 1.5, (name, found, centre)
    volume_ml = float(x.sum()) * np.prod(gm.canonical_spacing) / 1000
    assert volume_ml == pytest.approx(4 / 3 * np.pi * 14.0**3 / 1000, rel=0.08)
    back = from_canonical(x, gm).numpy() > 0.5
    assert back.shape == vol.shape
    dice = 2 * (back & (vol > 0)).sum() / (back.sum() + vol.sum())
    assert dice > 0.9, (name, dice)


def test_identical_grids_are_left_untouched_and_shapes_follow_the_extent():
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    x, gm = to_canonical(a, aff, CanonicalGrid((2.0, 2.0, 3.0)))
    assert torch.equal(x, torch.from_numpy(a)) and np.array_equal(gm.canonical_affine, aff)
    x, gm = to_canonical(np.zeros((512, 512, 40), np.float32), np.diag([0.45, 0.45, 5.0, 1.0]), CanonicalGrid((1.8, 1.8, 5.0)))
    assert gm.canonical_shape == (128, 128, 40) and np.allclose(gm.canonical_spacing, (1.8, 1.8, 5.0))


def test_geometry_errors():
    with pytest.raises(ValueError, match="singular"):
        to_canonical(np.zeros((4, 4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]), CanonicalGrid((1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="3-D"):
        to_canonical(np.zeros((4, 4)), np.eye(4), CanonicalGrid((1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="CanonicalGrid.spacing"):
        CanonicalGrid((1.0, -1.0, 1.0))
    _, gm = to_canonical(np.zeros((4, 4, 4)), np.eye(4), CanonicalGrid((2.0, 2.0, 2.0)))
    with pytest.raises(ValueError, match="canonical shape"):
        from_canonical(np.zeros((3, 3, 3)), gm)
