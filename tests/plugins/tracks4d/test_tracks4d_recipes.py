"""Losses, tiny training, fine-tuning, the per-scene baseline and the metrics."""

import numpy as np
import pytest
import torch

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.datasets.tracks import SceneConfig, make_scene
from lowrank_vision.plugins.tracks4d import metrics
from lowrank_vision.plugins.tracks4d.config import BaselineConfig, FinetuneConfig, ModelConfig, TrainRunConfig
from lowrank_vision.plugins.tracks4d.model import TracksTo4DNet
from lowrank_vision.plugins.tracks4d.recipes import (finetune, loss_terms, optimise_scene, pool_batch, prepare, reconstruct,
                                                     train_model)

from .test_tracks4d_graph_capture import _stage_of_each_step

torch.set_num_threads(1)
SMALL = ModelConfig(width=16, depth=1, heads=2, mlp_ratio=2, octaves=4, num_basis=4, conv_kernel=5)
TINY_SCENE = SceneConfig(frames=8, points=24)


def test_tiny_training_lowers_the_loss_by_half_a_nat():
    # two scenes, one batch: the loop sees the same batch each step, so the loss must fall clearly
    cfg = TrainRunConfig(model=SMALL, scene=TINY_SCENE, train_scenes=2, val_scenes=1, batch_size=2, rigid_warmup_steps=0,
                         train=TrainConfig(max_steps=60, lr=3e-3, warmup_steps=5, log_every=1, progress=False, scheduler="constant"))
    model, history = train_model(cfg)
    first, last = history[0]["loss"], np.mean([h["loss"] for h in history[-5:]])
    assert last < first - 0.5, (first, last)
    assert "eval_reprojection_px" in history[-1]


def test_losses_at_the_ground_truth_beat_the_initial_state():
    ts = make_scene(11, TINY_SCENE).to_trackset()
    b = prepare([ts])
    init = TracksTo4DNet(SMALL)(b["tracks"], b["visible"], b["focal_known"])
    gt_points = torch.tensor(ts.gt["gt_points"], dtype=torch.float32)[None]
    truth = {"R": torch.tensor(ts.gt["gt_R"], dtype=torch.float32)[None], "t": torch.tensor(ts.gt["gt_t"], dtype=torch.float32)[None],
             "focal": torch.ones(1, 8), "points": gt_points, "basis": gt_points.mean(1)[:, :, None], "gamma": torch.full((1, 24), 1e-3),
             "coefficients": torch.ones(1, 8, 1)}
    loss_truth, terms = loss_terms(truth, b)
    loss_init, _ = loss_terms(init, b)
    assert terms["reprojection_px"] < 2.0  # noise is 0.5 px
    assert float(loss_truth) < float(loss_init.detach())


def test_finetune_full_and_lora_lower_the_loss():
    b = prepare([make_scene(12, TINY_SCENE).to_trackset()])
    net = TracksTo4DNet(SMALL)
    for method in ("full", "lora"):
        _, curve = finetune(net, b, FinetuneConfig(steps=25, lr=3e-3, method=method, rank=2))
        assert min(curve) < curve[0] - 0.1, (method, curve[0], min(curve))
    assert all(not hasattr(m, "adapter_parameters") for m in net.modules())  # the original stays untouched


def test_finetune_rigid_steps_fit_the_static_basis_first():
    b = prepare([make_scene(12, TINY_SCENE).to_trackset()])
    net = TracksTo4DNet(SMALL)
    _, curve = finetune(net, b, FinetuneConfig(steps=20, lr=3e-3, rigid_steps=8))
    assert len(curve) == 20 - 8 + 1  # the full loss is recorded (and the iterate picked) only after the rigid steps
    with pytest.raises(ValueError, match="FinetuneConfig.rigid_steps must be an int >= 0 and < steps"):
        FinetuneConfig(steps=10, rigid_steps=10)


def test_baseline_recovers_a_static_scene():
    ts = make_scene(200000, SceneConfig(frames=12, points=48, dynamic_fraction=0.0, noise_px=0.3)).to_trackset()
    b = prepare([ts])
    out, curve = optimise_scene(b, BaselineConfig(steps=500, lr=5e-3, num_basis=1, rigid_fraction=0.5))
    m = metrics.score(reconstruct(out, b), ts)
    assert m["depth_abs_rel"] < 0.10 and m["reprojection_px"] < 1.0, m
    with pytest.raises(ValueError, match="one scene at a time"):
        optimise_scene(prepare([ts, ts]))


def test_metrics_are_zero_on_the_truth_and_invariant_to_similarity():
    s = make_scene(4, TINY_SCENE)
    assert metrics.depth_metrics(3.0 * s.depth, s.depth, s.visible)["abs_rel"] < 1e-12
    assert metrics.depth_correlation(3.0 * s.depth, s.depth, s.visible) > 0.999
    assert metrics.depth_correlation(20.0 - s.depth, s.depth, s.visible) < -0.999  # reversed ordering
    a = 0.4
    Q = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    # the same cameras in a world rotated by Q, moved and scaled by 2: x_cam = R Qᵀ (x'/2 - d) + t
    d = np.array([1.0, -2.0, 0.5])
    R2 = np.einsum("tij,jk->tik", s.R, Q.T)
    t2 = 2.0 * (s.t - np.einsum("tij,j->ti", R2, d))
    pm = metrics.pose_metrics(R2, t2, s.R, s.t)
    assert pm["ate"] < 1e-9 and pm["rpe_trans"] < 1e-9 and pm["rpe_rot_deg"] < 1e-4
    moved = metrics.pose_metrics(s.R, s.t + np.array([0.3, 0, 0]) * np.arange(len(s.t))[:, None] / len(s.t), s.R, s.t)
    assert moved["ate"] > 1e-3 and moved["rpe_trans"] > 1e-3


def test_rigid_warmup_uses_the_static_l1_loss_first():
    cfg = TrainRunConfig(model=SMALL, scene=TINY_SCENE, train_scenes=2, val_scenes=1, batch_size=2, rigid_warmup_steps=3,
                         train=TrainConfig(max_steps=5, lr=1e-3, log_every=1, progress=False))
    _, history = train_model(cfg)
    # every step logs every term (a captured step's metrics are fixed); the logged loss says which loss was trained
    assert _stage_of_each_step(history, cfg.loss) == ["rigid", "rigid", "rigid", "full", "full"]
    with pytest.raises(ValueError, match="TrainRunConfig.rigid_warmup_steps must be an int >= 0"):
        TrainRunConfig(rigid_warmup_steps=-1)


def test_pool_batch_keeps_whole_tracks_and_mirrors_x_only():
    pool = prepare([make_scene(i, SceneConfig(frames=6, points=40)).to_trackset() for i in (1, 2, 3)])
    torch.manual_seed(0)
    b = pool_batch(pool, torch.tensor([2, 0]), points=24, flip_x=True)
    assert b["tracks"].shape == (2, 6, 24, 2) and b["visible"].shape == (2, 6, 24)
    for j, i in enumerate((2, 0)):
        src = torch.cat([pool["tracks"][i], pool["visible"][i, ..., None].float()], -1).transpose(0, 1).reshape(40, -1)
        for sign in (1.0, -1.0):  # every sampled track is one of the scene's tracks, mirrored or not (same sign per scene)
            got = torch.cat([b["tracks"][j] * torch.tensor([sign, 1.0]), b["visible"][j, ..., None].float()], -1).transpose(0, 1).reshape(24, -1)
            if all(((src - g).abs().sum(1) < 1e-6).any() for g in got):
                break
        else:
            raise AssertionError(f"scene {i}: sampled tracks are not whole tracks of the scene")


def test_training_from_a_pool_lowers_the_loss():
    pool = prepare([make_scene(i, SceneConfig(frames=8, points=32)).to_trackset() for i in range(4)])
    cfg = TrainRunConfig(model=SMALL, scene=TINY_SCENE, val_scenes=1, batch_size=2, rigid_warmup_steps=0,
                         train=TrainConfig(max_steps=60, lr=1e-3, warmup_steps=5, log_every=1, progress=False, scheduler="constant"))
    _, history = train_model(cfg, pool=pool, pool_points=24)
    # batches differ every step (random scenes, track subsets, mirroring): compare means of the first and last ten
    first, last = np.mean([h["loss"] for h in history[:10]]), np.mean([h["loss"] for h in history[-10:]])
    assert last < first - 0.5, (first, last)
