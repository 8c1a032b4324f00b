"""Configs of the nerf_pvd plugin: fields, training on images, PVD distillation, rendering and export.

Defaults of :class:`DistillConfig` are the paper's / reference code's (30k iterations, stage 1 until
2k, stage 2 until 5k, normL2 losses with weights rgb 1, feature/colour/density 0.002, the feature
weight decayed x0.995 per step, density clipped to [-2, 7], AdamW (0.9, 0.99, eps 1e-15), lr 1e-2
and x0.1 for an MLP student, L1 1e-4 on TensoRF density). :data:`CPU_PRESET` holds the small
values the app and the tests use on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Literal, Optional

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.core.validate import require

from .render import RenderConfig

__all__ = ["FieldKind", "FIELD_KINDS", "FieldConfig", "FitImagesConfig", "DistillConfig", "ExportConfig", "RenderConfig",
           "cpu_fit_config", "cpu_distill_config", "PAPER_STAGE_FRACTIONS", "SHORT_RUN_STAGE_FRACTIONS"]

FieldKind = Literal["hash", "mlp", "tensorf_vm", "grid"]
FIELD_KINDS: tuple[str, ...] = ("hash", "mlp", "tensorf_vm", "grid")



@dataclass(frozen=True)
class FieldConfig:
    """Which architecture and how large (options a kind does not use are ignored by that kind only)."""

    kind: FieldKind = "hash"
    """Architecture: hash (Instant-NGP), mlp (NeRF), tensorf_vm (TensoRF VM), grid (Plenoxels-style SH grid)."""
    bound: float = 1.0
    """Half side of the scene cube ``[-bound, bound]^3``."""
    geo_feat_dim: int = 15
    """Geometry-feature channels of the volume feature (PVD: 15; must match between teacher and student)."""
    mlp_width: int = 64
    """Hidden width of the NeRF MLP (paper 256)."""
    mlp_depth: int = 4
    """Hidden layers of the NeRF MLP (paper 8)."""
    hash_levels: int = 8
    """Hash-grid levels."""
    hash_log2_table: int = 15
    """log2 of each level's table size."""
    hash_max_res: int = 256
    """Finest hash-grid resolution."""
    tensorf_resolution: int = 64
    """TensoRF plane/line resolution (paper 300)."""
    tensorf_density_rank: int = 8
    """TensoRF density components per plane (paper 16)."""
    tensorf_app_rank: int = 16
    """TensoRF appearance components per plane (paper 48)."""
    grid_resolution: int = 48
    """Dense-grid resolution (paper 128)."""
    grid_sh_degree: int = 2
    """Spherical-harmonic degree of the dense grid (0..2; the paper uses 3)."""

    def __post_init__(self) -> None:
        require(self, "kind", self.kind in FIELD_KINDS, f"one of {FIELD_KINDS}")
        require(self, "bound", self.bound > 0, "> 0")
        for name in ("geo_feat_dim", "mlp_width", "mlp_depth", "hash_levels", "tensorf_resolution", "tensorf_density_rank",
                     "tensorf_app_rank", "grid_resolution"):
            v = getattr(self, name)
            require(self, name, isinstance(v, int) and v >= 1, "an int >= 1")
        require(self, "hash_log2_table", 10 <= self.hash_log2_table <= 24, "an int in [10, 24]")
        require(self, "grid_sh_degree", self.grid_sh_degree in (0, 1, 2), "0, 1 or 2")


def _train_default_fit() -> TrainConfig:
    return TrainConfig(max_steps=30000, lr=1e-2, scheduler="cosine", max_grad_norm=None, progress=True, log_every=100)


@dataclass(frozen=True)
class FitImagesConfig:
    """Training a field from scratch on the training images."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    """The architecture trained."""
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    """Sampling along rays."""
    rays_per_step: int = 4096
    """Rays per optimizer step (random over all training pixels)."""
    mlp_lr_scale: float = 0.05
    """Learning-rate multiplier for an MLP field (NeRF MLPs diverge at grid learning rates)."""
    train: TrainConfig = dataclasses.field(default_factory=_train_default_fit)
    """Shared trainer settings (steps, lr, schedule, checkpoints)."""

    def __post_init__(self) -> None:
        require(self, "rays_per_step", isinstance(self.rays_per_step, int) and self.rays_per_step >= 1, "an int >= 1")
        require(self, "mlp_lr_scale", self.mlp_lr_scale > 0, "> 0")


@dataclass(frozen=True)
class DistillConfig:
    """Progressive Volume Distillation of a teacher field into a student field (no training images)."""

    student: FieldConfig = dataclasses.field(default_factory=lambda: FieldConfig(kind="tensorf_vm"))
    """The student architecture."""
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    """Sampling along rays (the teacher picks the samples; the student is evaluated on the same ones)."""
    stage1_iters: int = 2000
    """Stage 1 (volume-feature loss only) runs for steps < stage1_iters (skipped when a side has no feature)."""
    stage2_iters: int = 5000
    """Stage 2 (+ density and colour losses) runs for steps < stage2_iters; stage 3 adds the rendered-RGB loss."""
    rays_per_step: int = 4096
    """Rays per step, from random poses."""
    poses_per_step: int = 4
    """Random camera poses per step (rays are drawn from their pixels)."""
    coarse_every: int = 1
    """Points shared by teacher and student on each ray: all the teacher's importance samples and every
    ``coarse_every``-th stratified one (1: all ``n_coarse + n_fine``). Larger values put the student's evaluations where
    the teacher's weights are, as the paper's occupancy-grid renderer does, at a lower cost per step (measured on the
    analytic-ball teacher, 12 + 12 samples, 3 vs 1: per step about 1 dB lower for tensorf_vm, within 0.7 dB either way for
    an MLP, at 24-65 % less CPU time per run). On the GPU scene (H200, 32 + 32 samples, 4096 rays, hash teacher; short runs
    of equal seconds scored on the val split, ``docs/results/nerf_pvd.md``) k = 4 beat 1 and 16 for both students (MLP
    19.59 vs 17.95 / 18.95 dB, TensoRF-VM 24.34 vs 24.13 / 23.55 dB) and its step cost about 0.8 of a scratch step. 1 stays
    the default, the paper's sharing of every sample, since the CPU measurement above goes the other way for TensoRF-VM;
    ``lowrank-nerf distill --coarse-every 4`` asks for it."""
    loss_type: Literal["norm_l2", "mse"] = "norm_l2"
    """PVD's ``normL2`` = un-normalised L2 norm of the difference, or the mean squared error."""
    w_rgb: float = 1.0
    """Weight of the rendered-RGB loss (stage 3)."""
    w_feature: float = 0.002
    """Weight of the volume-feature loss (decays by ``feature_decay`` every step)."""
    feature_decay: float = 0.995
    """Per-step multiplier of ``w_feature``."""
    w_colour: float = 0.002
    """Weight of the per-point colour loss (stage >= 2)."""
    w_density: float = 0.002
    """Weight of the per-point pre-activation density loss (stage >= 2)."""
    density_clip: tuple[float, float] = (-2.0, 7.0)
    """Pre-activation densities are distilled clipped to this range."""
    w_tensorf_l1: float = 1e-4
    """L1 on the density factors of a TensoRF student."""
    mlp_lr_scale: float = 0.1
    """Learning-rate multiplier for an MLP student (PVD: x0.1)."""
    mlp_colour_scale: float = 10.0
    """Multiplier of ``w_colour`` for an MLP student (not in the paper, whose weights are equal). With equal weights an
    MLP student's colour lags its density, presumably because one shared trunk computes both the density and the
    geometry feature that colours it; a grid-like student (separate density and appearance parameters, each scaled by
    Adam on its own) shows no such lag. Measured on the analytic-ball teacher of the tests (MLP 4 x 64, 120 / 200 steps):
    23.4 / 25.9 dB against the teacher's renders at x1, 24.7 / 29.2 at x3, 28.6 / 33.5 at x10, 31.3 / 32.6 at x30;
    a tensorf_vm student: 36.3 vs 36.5 dB at x1 vs x10 (120 steps). Not yet measured on a GPU scene."""
    teacher_cache_batches: int = 0
    """0 (the paper): the teacher renders every step's fresh random rays. N > 0: the teacher renders N steps' worth of
    random rays at once (same poses and ray draws as N steps would have, ``rays_per_step`` each), and each step takes its
    rays, samples and teacher outputs from that buffer; the buffer is rebuilt from new poses every
    ``N * teacher_cache_reuse`` steps. Not in the paper: a cost choice (the teacher's render was over half of a PVD step
    on the GPU scene), which shows each ray ``teacher_cache_reuse`` times instead of once. Not with ``active_learning``
    (its hard rays need the teacher on rays outside the buffer)."""
    teacher_cache_reuse: int = 4
    """With ``teacher_cache_batches``: how many times each buffered ray is used (each pass in a new random order)."""
    active_learning: bool = False
    """PVD-AL: re-visit the hardest poses, mix the hardest rays of earlier steps into each batch, up-weight the hardest points."""
    hard_poses_ratio: float = 0.25
    """PVD-AL: share of each step's camera poses taken from the pool of the hardest poses seen so far (rounded down:
    with 4 poses per step, 0.25 re-visits one)."""
    hard_poses_pool: int = 32
    """PVD-AL: size of the pool of hardest poses kept."""
    hard_rays_ratio: float = 0.1
    """PVD-AL: share of each batch taken from the hard-ray pool."""
    hard_rays_pool: int = 16384
    """PVD-AL: size of the pool of hardest rays kept."""
    hard_points_ratio: float = 0.1
    """PVD-AL: share of points (largest point loss) whose point losses get weight ``1 + hard_points_boost``."""
    hard_points_boost: float = 1.0
    """PVD-AL: extra weight of the hardest points."""
    train: TrainConfig = dataclasses.field(default_factory=_train_default_fit)
    """Shared trainer settings (PVD: 30k steps, lr 1e-2, cosine)."""

    def __post_init__(self) -> None:
        require(self, "stage1_iters", isinstance(self.stage1_iters, int) and self.stage1_iters >= 0, "an int >= 0")
        require(self, "stage2_iters", isinstance(self.stage2_iters, int) and self.stage2_iters >= self.stage1_iters, f"an int >= stage1_iters ({self.stage1_iters})")
        require(self, "rays_per_step", isinstance(self.rays_per_step, int) and self.rays_per_step >= 1, "an int >= 1")
        require(self, "poses_per_step", isinstance(self.poses_per_step, int) and self.poses_per_step >= 1, "an int >= 1")
        require(self, "coarse_every", isinstance(self.coarse_every, int) and self.coarse_every >= 1, "an int >= 1")
        require(self, "loss_type", self.loss_type in ("norm_l2", "mse"), "'norm_l2' or 'mse'")
        for name in ("w_rgb", "w_feature", "w_colour", "w_density", "w_tensorf_l1", "hard_points_boost"):
            require(self, name, getattr(self, name) >= 0, ">= 0")
        require(self, "feature_decay", 0 < self.feature_decay <= 1, "in (0, 1]")
        lo, hi = self.density_clip
        require(self, "density_clip", lo < hi, "(low, high) with low < high")
        require(self, "mlp_lr_scale", self.mlp_lr_scale > 0, "> 0")
        require(self, "mlp_colour_scale", self.mlp_colour_scale > 0, "> 0")
        require(self, "hard_rays_ratio", 0 <= self.hard_rays_ratio < 1, "in [0, 1)")
        require(self, "hard_poses_ratio", 0 <= self.hard_poses_ratio < 1, "in [0, 1)")
        require(self, "hard_poses_pool", isinstance(self.hard_poses_pool, int) and self.hard_poses_pool >= 1, "an int >= 1")
        require(self, "hard_points_ratio", 0 <= self.hard_points_ratio <= 1, "in [0, 1]")
        require(self, "hard_rays_pool", isinstance(self.hard_rays_pool, int) and self.hard_rays_pool >= 1, "an int >= 1")
        require(self, "teacher_cache_batches", isinstance(self.teacher_cache_batches, int) and self.teacher_cache_batches >= 0,
                "an int >= 0")
        require(self, "teacher_cache_reuse", isinstance(self.teacher_cache_reuse, int) and self.teacher_cache_reuse >= 1, "an int >= 1")
        require(self, "teacher_cache_batches", not (self.teacher_cache_batches and self.active_learning),
                "0 when active_learning is on (PVD-AL renders the teacher on its hard rays, which a buffer does not hold)")


    def colour_weight(self) -> float:
        """Weight of the per-point colour loss for this student (``w_colour``, times ``mlp_colour_scale`` for an MLP)."""
        return self.w_colour * (self.mlp_colour_scale if self.student.kind == "mlp" else 1.0)


@dataclass(frozen=True)
class ExportConfig:
    """Export of the field's geometry from its density sampled on a grid: a point cloud or a mesh."""

    resolution: int = 96
    """Grid points per axis inside the scene cube."""
    density_threshold: float = 5.0
    """Keep grid points whose density ``trunc_exp(sigma_pre)`` exceeds this."""
    max_points: Optional[int] = 200000
    """Keep at most this many points (the densest); ``None``: all."""
    kind: Literal["points", "mesh"] = "points"
    """``points``: the grid points above the threshold; ``mesh``: the iso-surface at the threshold (marching cubes)."""

    def __post_init__(self) -> None:
        require(self, "resolution", isinstance(self.resolution, int) and 4 <= self.resolution <= 512, "an int in [4, 512]")
        require(self, "density_threshold", self.density_threshold > 0, "> 0")
        require(self, "max_points", self.max_points is None or self.max_points >= 1, "None or >= 1")
        require(self, "kind", self.kind in ("points", "mesh"), "'points' or 'mesh'")


def cpu_fit_config(kind: str = "hash", steps: int = 600, seed: int = 0, output_dir: Optional[str] = None) -> FitImagesConfig:
    """Small settings for a CPU run (the app's and the tests' default)."""
    return FitImagesConfig(field=FieldConfig(kind=kind), render=RenderConfig(n_coarse=24, n_fine=24), rays_per_step=1024,
                           train=replace(_train_default_fit(), max_steps=steps, seed=seed, log_every=50, output_dir=output_dir))


PAPER_STAGE_FRACTIONS: tuple[float, float] = (2000 / 30000, 5000 / 30000)
"""Ends of stage 1 and stage 2 as fractions of the run: the paper's 2k and 5k of 30k iterations."""
SHORT_RUN_STAGE_FRACTIONS: tuple[float, float] = (0.1, 0.5)
"""Ends of stage 1 and 2 for runs of a few hundred steps (the GPU bench's): with the paper's fractions such a run gets a
dozen point-level steps and spends the rest on the rendered-RGB loss; on the analytic-ball teacher of the tests, 60 / 80
steps of tensorf_vm distillation reach 25.2 / 30.8 dB against the teacher's renders with these, 23.0 / 26.5 dB with the
paper's (``tests/plugins/nerf_pvd/test_nerf_distill.py`` asserts the gap)."""


def cpu_distill_config(student: str = "tensorf_vm", steps: int = 400, seed: int = 0, output_dir: Optional[str] = None,
                       active_learning: bool = False,
                       stage_fractions: tuple[float, float] = PAPER_STAGE_FRACTIONS) -> DistillConfig:
    """PVD on a CPU: stage ends at ``stage_fractions`` of ``steps`` (default the paper's 2k/30k, 5k/30k), rounded;
    fewer rays per step."""
    return DistillConfig(student=FieldConfig(kind=student), render=RenderConfig(n_coarse=24, n_fine=24),
                         stage1_iters=max(1, round(steps * stage_fractions[0])),
                         stage2_iters=max(1, round(steps * stage_fractions[1])),
                         rays_per_step=1024, poses_per_step=4, active_learning=active_learning,
                         train=replace(_train_default_fit(), max_steps=steps, seed=seed, log_every=50, output_dir=output_dir))
