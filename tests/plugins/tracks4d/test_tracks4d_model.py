"""The encoder: point-order equivariance, the rigid K = 1 case, shapes and config errors."""

import pytest
import torch

from lowrank_vision.datasets.tracks import SceneConfig, make_scene
from lowrank_vision.plugins.tracks4d.config import ModelConfig
from lowrank_vision.plugins.tracks4d.model import SceneParameters, TracksTo4DNet, rotation_from_6d
from lowrank_vision.plugins.tracks4d.recipes import prepare

torch.set_num_threads(1)
SMALL = ModelConfig(width=16, depth=1, heads=2, mlp_ratio=2, octaves=4, num_basis=4, conv_kernel=5)


def _batch(points=24, frames=8, seeds=(1, 2)):
    return prepare([make_scene(s, SceneConfig(frames=frames, points=points)).to_trackset() for s in seeds])


def _perturbed(cfg):
    torch.manual_seed(0)
    net = TracksTo4DNet(cfg).eval()
    with torch.no_grad():  # make the heads' outputs large enough to compare
        net.frame_head.weight.mul_(100)
        net.point_head.weight.mul_(100)
    return net


def test_permuting_points_permutes_outputs_identically():
    net = _perturbed(SMALL)
    b = _batch()
    perm = torch.randperm(b["tracks"].shape[2], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = net(b["tracks"], b["visible"], b["focal_known"])
        outp = net(b["tracks"][:, :, perm], b["visible"][:, :, perm], b["focal_known"])
    for key in ("R", "t", "focal", "coefficients"):  # per-frame outputs do not depend on the order
        torch.testing.assert_close(outp[key], out[key], atol=1e-5, rtol=1e-5)
    for key in ("basis", "gamma"):  # per-point outputs follow it
        torch.testing.assert_close(outp[key], out[key][:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outp["points"], out["points"][:, :, perm], atol=1e-5, rtol=1e-5)
    assert out["basis"][:, :, 1:].abs().max() > 1e-3 and (out["R"] - torch.eye(3)).abs().max() > 1e-3


def test_one_basis_point_gives_a_rigid_scene():
    cfg = ModelConfig(width=16, depth=1, heads=2, mlp_ratio=2, octaves=4, num_basis=1, conv_kernel=5)
    b = _batch()
    out = _perturbed(cfg)(b["tracks"], b["visible"], b["focal_known"])
    assert out["coefficients"].shape[-1] == 1 and torch.equal(out["coefficients"], torch.ones_like(out["coefficients"]))
    assert torch.equal(out["points"], out["points"][:, :1].expand_as(out["points"]))
    scene = SceneParameters(8, 24, cfg)(b["tracks"][:1], b["visible"][:1])
    assert torch.equal(scene["points"], scene["points"][:, :1].expand_as(scene["points"]))


def test_shapes_rotations_and_first_coefficient():
    b = _batch(points=10, frames=6)
    out = TracksTo4DNet(SMALL)(b["tracks"], b["visible"], b["focal_known"])
    assert out["points"].shape == (2, 6, 10, 3) and out["basis"].shape == (2, 10, 4, 3) and out["gamma"].shape == (2, 10)
    R = out["R"]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(2, 6), atol=1e-5, rtol=0)
    assert torch.equal(out["coefficients"][..., 0], torch.ones(2, 6)) and (out["gamma"] > 0).all()
    torch.testing.assert_close(rotation_from_6d(torch.tensor([1.0, 0, 0, 0, 1, 0])), torch.eye(3))


def test_bad_inputs_and_configs_are_named():
    net = TracksTo4DNet(SMALL)
    with pytest.raises(ValueError, match=r"tracks must have shape \[B, T, N, 2\]"):
        net(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="ModelConfig.width must be divisible by heads=3"):
        ModelConfig(width=16, heads=3)
    with pytest.raises(ValueError, match="ModelConfig.num_basis must be an int >= 1"):
        ModelConfig(num_basis=0)
