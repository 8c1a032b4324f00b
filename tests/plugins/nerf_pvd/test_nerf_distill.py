"""PVD: density clipping, stage schedule, a tiny distillation that must raise the student's PSNR vs the teacher."""

import math
from dataclasses import replace

import pytest
import torch

from lowrank_vision.plugins.nerf_pvd.config import (PAPER_STAGE_FRACTIONS, SHORT_RUN_STAGE_FRACTIONS, DistillConfig, FieldConfig,
                                                    cpu_distill_config)
from lowrank_vision.plugins.nerf_pvd.fields import DenseSHGridField, HashGridField
from lowrank_vision.plugins.nerf_pvd.metrics import psnr
from lowrank_vision.plugins.nerf_pvd.model import CameraRig, random_poses
from lowrank_vision.plugins.nerf_pvd.recipes import _stage, clip_density_pair, distill, render_views
from lowrank_vision.plugins.nerf_pvd.render import RenderConfig

torch.set_num_threads(1)

RIG = CameraRig(width=16, height=16, intrinsics=(20.0, 20.0, 8.0, 8.0), radius_range=(2.8, 3.2), elevation_range=(10.0, 60.0),
                target=(0.0, 0.0, 0.0), background=1.0)
RENDER = RenderConfig(n_coarse=12, n_fine=12)


def _analytic_teacher() -> DenseSHGridField:
    """A dense-grid teacher set by hand: an opaque ball with a colour gradient (no training needed)."""
    t = DenseSHGridField(bound=1.0, resolution=24, sh_degree=1)
    ax = torch.linspace(-1, 1, 24)
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")  # grid_sample: last dim is x
    r = (x ** 2 + y ** 2 + z ** 2).sqrt()
    with torch.no_grad():
        t.density.copy_(torch.where(r < 0.6, 6.0, -8.0)[None, None])
        sh0 = torch.stack([3 * x, 3 * y, 3 * z - 1])  # DC term per channel -> colour varies across the ball
        t.sh.zero_()
        t.sh[0, [0, 4, 8]] = sh0 / 0.2820948
    return t.eval()


def test_density_clip_keeps_gradient_only_on_the_wrong_side():
    s = torch.tensor([-5.0, -5.0, 9.0, 3.0, 8.0], requires_grad=True)
    t = torch.tensor([-10.0, 3.0, 12.0, 1.0, 2.0])
    sc, tc = clip_density_pair(s, t, -2.0, 7.0)
    assert tc.tolist() == [-2.0, 3.0, 7.0, 1.0, 2.0]
    assert sc.tolist() == [-2.0, -5.0, 7.0, 3.0, 8.0]  # both empty / both saturated -> equal; wrong side kept
    (sc - tc).pow(2).sum().backward()
    assert s.grad.tolist() == [0.0, -16.0, 0.0, 4.0, 12.0]


def test_stage_schedule_paper_defaults_and_skip():
    cfg = DistillConfig()
    assert (cfg.stage1_iters, cfg.stage2_iters, cfg.train.max_steps, cfg.density_clip) == (2000, 5000, 30000, (-2.0, 7.0))
    assert (cfg.w_rgb, cfg.w_feature, cfg.w_colour, cfg.w_density) == (1.0, 0.002, 0.002, 0.002)
    assert [_stage(s, cfg, True) for s in (0, 1999, 2000, 4999, 5000)] == [1, 1, 2, 2, 3]
    assert _stage(0, cfg, False) == 2  # no intermediate feature on one side: stage 1 skipped


def test_random_poses_stay_within_the_rig():
    poses = random_poses(RIG, 64, torch.Generator().manual_seed(0))
    r = poses[:, :3, 3].norm(dim=-1)
    el = torch.rad2deg(torch.asin(poses[:, 2, 3] / r))
    assert r.min() >= 2.8 - 1e-4 and r.max() <= 3.2 + 1e-4 and el.min() >= 10 - 1e-3 and el.max() <= 60 + 1e-3
    axis = -poses[:, :3, 2]  # every camera looks at the target (origin)
    assert torch.allclose((axis * -poses[:, :3, 3] / r[:, None]).sum(-1), torch.ones(64), atol=1e-5)


@pytest.mark.parametrize("buffer_batches,teacher_renders", [(0, 40), (5, 10)])
def test_tiny_distillation_raises_student_psnr_vs_teacher(buffer_batches, teacher_renders):
    """40 steps gain a stated +4 dB against the teacher's renders, with the teacher rendered every step (the paper) or
    from the teacher buffer (``teacher_cache_batches=5, teacher_cache_reuse=4``: 2 buffers of 5 steps' rays, 10 renders)."""
    teacher = _analytic_teacher()
    cfg = cpu_distill_config("tensorf_vm", steps=40)
    cfg = replace(cfg, student=FieldConfig(kind="tensorf_vm", tensorf_resolution=24, tensorf_density_rank=4, tensorf_app_rank=4),
                  render=RENDER, rays_per_step=256, poses_per_step=2, teacher_cache_batches=buffer_batches, teacher_cache_reuse=4,
                  train=replace(cfg.train, progress=False, lr=3e-2))
    poses = random_poses(RIG, 3, torch.Generator().manual_seed(99))
    ref = render_views(teacher, RIG, poses, RENDER)
    torch.manual_seed(cfg.train.seed)
    from lowrank_vision.plugins.nerf_pvd.model import build_field

    before = sum(psnr(s, t) for s, t in zip(render_views(build_field(cfg.student), RIG, poses, RENDER), ref)) / 3
    student, info = distill(teacher, RIG, cfg)
    after = sum(psnr(s, t) for s, t in zip(render_views(student, RIG, poses, RENDER), ref)) / 3
    assert info["stage1_skipped"] and set(info["stage_steps"]) == {2, 3}
    assert info["teacher_renders"] == teacher_renders and info["steps"] == 40
    assert after > before + 4.0, (before, after)  # stated margin: +4 dB vs the teacher's renders in 40 steps


def test_stage1_feature_loss_falls_between_feature_fields():
    torch.manual_seed(0)
    teacher = HashGridField(bound=1.0, levels=4, log2_table=12, max_res=32).eval()
    cfg = replace(cpu_distill_config("mlp", steps=24), student=FieldConfig(kind="mlp", mlp_width=32, mlp_depth=2),
                  render=RENDER, rays_per_step=128, poses_per_step=2, stage1_iters=24, stage2_iters=24, feature_decay=1.0)
    cfg = replace(cfg, train=replace(cfg.train, progress=False, log_every=4, lr=1e-2))
    _, info = distill(teacher, RIG, cfg)
    losses = [h["loss_feature"] for h in info["history"]]
    assert info["stage_steps"] == {1: 24} and losses[-1] < 0.7 * losses[0], losses
    assert all(math.isfinite(v) for v in losses)


def test_pvd_al_mixes_hard_views_and_rays_and_trains():
    teacher = _analytic_teacher()
    cfg = replace(cpu_distill_config("grid", steps=6, active_learning=True),
                  student=FieldConfig(kind="grid", grid_resolution=12, grid_sh_degree=1), render=RENDER, rays_per_step=64,
                  poses_per_step=2, hard_rays_ratio=0.5, hard_rays_pool=32, hard_poses_ratio=0.5, hard_poses_pool=4)
    cfg = replace(cfg, train=replace(cfg.train, progress=False, log_every=1))
    _, info = distill(teacher, RIG, cfg)
    assert info["steps"] == 6 and all(math.isfinite(h["loss"]) for h in info["history"])
    assert info["hard_poses_reused"] == 5  # from step 2 on, one of the two poses of every step is a hard one seen before
    plain = replace(cfg, active_learning=False)
    _, info_plain = distill(teacher, RIG, plain)
    assert info_plain["hard_poses_reused"] == 0
    # from step 2 on, half of each batch comes from the hard-ray pool (and hard points are up-weighted): losses differ
    assert info["history"][-1]["loss"] != info_plain["history"][-1]["loss"]


def test_short_runs_distil_better_with_longer_point_stages():
    """The GPU bench's stage ends (10 % / 50 %) beat the paper's 2k/30k, 5k/30k in a 60-step run (measured 25.2 vs 23.0 dB)."""
    teacher = _analytic_teacher()
    poses = random_poses(RIG, 3, torch.Generator().manual_seed(99))
    ref = render_views(teacher, RIG, poses, RENDER)
    scores = {}
    for name, fractions in (("paper", PAPER_STAGE_FRACTIONS), ("short", SHORT_RUN_STAGE_FRACTIONS)):
        cfg = cpu_distill_config("tensorf_vm", steps=60, stage_fractions=fractions)
        cfg = replace(cfg, student=FieldConfig(kind="tensorf_vm", tensorf_resolution=24, tensorf_density_rank=4, tensorf_app_rank=4),
                      render=RENDER, rays_per_step=256, poses_per_step=2, train=replace(cfg.train, progress=False, lr=3e-2))
        student, info = distill(teacher, RIG, cfg)
        assert info["stage_steps"] == {2: cfg.stage2_iters, 3: 60 - cfg.stage2_iters}
        scores[name] = sum(psnr(s, t) for s, t in zip(render_views(student, RIG, poses, RENDER), ref)) / 3
    assert scores["short"] > scores["paper"] + 1.0, scores


@pytest.mark.slow
def test_distilled_student_reproduces_the_teacher_given_enough_steps():
    """Correctness of the whole PVD loop: 160 steps turn the analytic-ball teacher into a TensoRF student whose renders
    match the teacher's to > 35 dB on poses it never saw (measured 37.3 dB; the untrained student is ~10 dB)."""
    teacher = _analytic_teacher()
    poses = random_poses(RIG, 3, torch.Generator().manual_seed(99))
    ref = render_views(teacher, RIG, poses, RENDER)
    cfg = cpu_distill_config("tensorf_vm", steps=160, stage_fractions=SHORT_RUN_STAGE_FRACTIONS)
    cfg = replace(cfg, student=FieldConfig(kind="tensorf_vm", tensorf_resolution=24, tensorf_density_rank=4, tensorf_app_rank=4),
                  render=RENDER, rays_per_step=256, poses_per_step=2, train=replace(cfg.train, progress=False, lr=3e-2))
    student, _ = distill(teacher, RIG, cfg)
    after = sum(psnr(s, t) for s, t in zip(render_views(student, RIG, poses, RENDER), ref)) / 3
    assert after > 35.0, after


def test_render_teacher_matches_sampling_then_compositing_with_fewer_evaluations():
    from lowrank_vision.plugins.nerf_pvd.render import camera_rays, composite, render_teacher, sample_along_rays

    torch.manual_seed(0)
    teacher = HashGridField(bound=1.0, levels=4, log2_table=12, max_res=32).eval().requires_grad_(False)
    with torch.no_grad():  # a non-trivial density so that the importance samples cluster somewhere
        teacher.embeddings.normal_(0, 1)
    o, d = camera_rays(random_poses(RIG, 1, torch.Generator().manual_seed(3))[0], 16, 16, *RIG.intrinsics)
    seen, volume_feature = [], teacher.volume_feature
    teacher.volume_feature = lambda x: seen.append(x.shape[0]) or volume_feature(x)  # every evaluation, density-only too
    torch.manual_seed(5)
    with torch.no_grad():
        ref_samples = sample_along_rays(teacher, o, d, RENDER, training=True)
        ref = composite(teacher, o, d, ref_samples, 1.0)
    n_two_calls = sum(seen)
    seen.clear()
    torch.manual_seed(5)
    samples, out = render_teacher(teacher, o, d, RENDER, training=True)
    assert torch.equal(samples["t"], ref_samples["t"])
    for k in ("rgb", "sigma_pre", "point_rgb", "feature", "weights"):
        assert torch.allclose(out[k], ref[k], atol=1e-5), k
    assert (n_two_calls, sum(seen)) == (256 * (12 + 24), 256 * 24)  # 12 coarse + 12 fine samples on 256 rays


def test_render_teacher_coarse_every_keeps_fine_samples_and_the_render():
    from lowrank_vision.plugins.nerf_pvd.render import camera_rays, render_teacher

    teacher = _analytic_teacher()
    o, d = camera_rays(random_poses(RIG, 1, torch.Generator().manual_seed(3))[0], 16, 16, *RIG.intrinsics)
    torch.manual_seed(5)
    full_samples, full = render_teacher(teacher, o, d, RENDER)
    torch.manual_seed(5)
    samples, sub = render_teacher(teacher, o, d, RENDER, coarse_every=3)
    assert samples["t"].shape == (256, 12 // 3 + 12) and bool((samples["t"].diff(dim=-1) >= 0).all())
    assert full_samples["t"].shape == (256, 24) and torch.isin(samples["t"], full_samples["t"]).all()  # a subset of them
    # the ball's render barely changes (measured 0.0009 mean |diff|, against 0.13 between the render and a white image): the
    # fine samples are where its weights are
    assert (sub["rgb"] - full["rgb"]).abs().mean() < 0.02, (sub["rgb"] - full["rgb"]).abs().mean()


def test_mlp_student_learns_colour_faster_with_its_larger_colour_weight():
    """The default ``mlp_colour_scale`` (x10) against the paper's equal weights (x1): measured 28.6 vs 23.4 dB, 120 steps."""
    teacher = _analytic_teacher()
    poses = random_poses(RIG, 3, torch.Generator().manual_seed(99))
    ref = render_views(teacher, RIG, poses, RENDER)
    scores = {}
    for scale in (1.0, DistillConfig().mlp_colour_scale):
        cfg = cpu_distill_config("mlp", steps=120, stage_fractions=SHORT_RUN_STAGE_FRACTIONS)
        cfg = replace(cfg, student=FieldConfig(kind="mlp", mlp_width=64, mlp_depth=4), mlp_colour_scale=scale, render=RENDER,
                      rays_per_step=256, poses_per_step=2, train=replace(cfg.train, progress=False, lr=3e-2))
        student, _ = distill(teacher, RIG, cfg)
        scores[scale] = sum(psnr(s, t) for s, t in zip(render_views(student, RIG, poses, RENDER), ref)) / 3
    assert DistillConfig().mlp_colour_scale == 10.0 and scores[10.0] > scores[1.0] + 3.0, scores


def test_teacher_buffer_holds_each_batch_as_the_teacher_renders_it():
    teacher = _analytic_teacher()
    g = torch.Generator().manual_seed(0)
    rays = [(torch.randn(7, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0]), -torch.nn.functional.normalize(
        torch.randn(7, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)) for _ in range(2)]
    from lowrank_vision.plugins.nerf_pvd.recipes import TEACHER_BUFFER_KEYS, teacher_buffer
    from lowrank_vision.plugins.nerf_pvd.render import render_teacher

    eval_render = replace(RENDER, perturb=False)  # no random draws: the same samples on every call
    buf = teacher_buffer(teacher, rays, eval_render, coarse_every=1)
    assert set(buf) == set(TEACHER_BUFFER_KEYS) and buf["o"].shape == (14, 3) and buf["feature"] is None
    samples, out = render_teacher(teacher, *rays[1], eval_render, training=True)
    torch.testing.assert_close(buf["t"][7:], samples["t"])
    torch.testing.assert_close(buf["rgb"][7:], out["rgb"])
    torch.testing.assert_close(buf["sigma_pre"][7:], out["sigma_pre"])
    _, first = render_teacher(teacher, *rays[0], eval_render, training=True)
    torch.testing.assert_close(buf["point_rgb"][:7], first["point_rgb"])
    assert (buf["rgb"] < 0.95).any()  # some rays hit the ball (background is white)


def test_teacher_buffer_is_refused_with_active_learning():
    with pytest.raises(ValueError, match=r"DistillConfig.teacher_cache_batches must be 0 when active_learning"):
        DistillConfig(teacher_cache_batches=4, active_learning=True)
    with pytest.raises(ValueError, match=r"DistillConfig.teacher_cache_reuse must be an int >= 1"):
        DistillConfig(teacher_cache_batches=4, teacher_cache_reuse=0)
