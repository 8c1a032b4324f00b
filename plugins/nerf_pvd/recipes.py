"""Training a field on images, Progressive Volume Distillation, evaluation, orbit renders and point export.

Both training loops run on :func:`lowrank_vision.core.train.fit`. Images: the loader yields random
batches of training rays. PVD (Fang et al. 2023, arXiv 2211.15977): the loader yields step indices;
each index seeds the random camera poses of that step (drawn within the teacher's camera rig, so no
training image is read) and therefore the stage, which keeps a resumed run identical.

PVD choices the paper leaves open, made here:

* shared samples: the teacher chooses them (stratified + importance from *its* weights) and both
  fields are evaluated on exactly those points;
* density clipping to ``[lo, hi]`` = [-2, 7]: the teacher's pre-activation density is clipped; the
  student's is clipped only where it lies beyond the same bound as the target (a student already
  "more empty" than -2 where the teacher is empty gets no gradient, one on the wrong side keeps it).
  This renderer has no occupancy grid to cull densities below ``exp(-2)`` as the paper's does, so a
  student held at -2 in empty space could render haze; measured on the analytic-ball teacher of the
  tests, it does not: the rendered-RGB loss of stage 3 pushes empty space lower (tensorf_vm, 80 steps:
  30.8 dB against the teacher's renders with [-2, 7], 28.6 dB with [-8, 7]; 160 steps: 37.3 vs 37.4);
* stage boundaries: the paper's 2k and 5k of 30k iterations by default; runs of a few hundred steps
  are better served by ending stage 1 at 10 % and stage 2 at 50 % (``config.SHORT_RUN_STAGE_FRACTIONS``,
  which the GPU bench uses; the measurement is in its docstring);
* point losses: the volume feature and the density on every point of rays that cross the scene cube;
  the colour only on points the teacher finds occupied (clipped density > lo), since colour in empty
  space never reaches an image. Every point counts the same: weighting the point losses by the teacher's
  transmittance (so that points behind a surface or inside an object, which no render of that ray sees,
  cost the student nothing) was tried and measured worse, on the analytic ball with random densities and
  colours inside it: MLP student 16.0 / 20.2 dB against the teacher's renders after 60 / 120 steps vs
  20.3 / 23.1 dB uniform, tensorf_vm 22.3 / 31.0 vs 25.1 / 32.7 dB;
* PVD-AL (arXiv 2304.04012): three-level active learning, the levels being hard views (images /
  poses), hard rays and hard points; how each is chosen is this module's choice. Views: a pool of the
  ``hard_poses_pool`` camera poses with the largest mean RGB error (over their own rays) supplies
  ``hard_poses_ratio`` of every step's poses (their pixels are drawn anew). Rays: a pool of the
  hardest rays (largest RGB error seen so far) supplies ``hard_rays_ratio`` of every batch.
  Points: the ``hard_points_ratio`` points with the largest point loss are weighted
  ``1 + hard_points_boost``. The pools live in memory (a resumed run starts them empty).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable, Optional

import torch
from torch import Tensor

from lowrank_vision.core import count_parameters
from lowrank_vision.core.train import fit
from lowrank_vision.datasets.nerf import PosedImages, camera_rays

from .config import DistillConfig, ExportConfig, FitImagesConfig
from .fields import RadianceField, trunc_exp
from .metrics import psnr, ssim
from .model import CameraRig, build_field, random_poses, rig_from_cameras
from .render import RenderConfig, composite, render_image, render_rays, render_teacher

__all__ = ["dataset_rays", "fit_images", "distill", "evaluate", "render_views", "density_grid", "export_points", "export_mesh",
           "count_params"]


def count_params(field: RadianceField) -> int:
    """Total parameters of a field (the core's count, each tensor once)."""
    return count_parameters(field)[1]


def _on_cpu(train, device: str):
    return replace(train, cpu=torch.device(device).type == "cpu")


def _param_groups(field: RadianceField, lr: float) -> list[dict]:
    return [{"params": [p for p in field.parameters() if p.requires_grad], "lr": lr, "betas": (0.9, 0.99), "eps": 1e-15}]


def dataset_rays(data: PosedImages) -> tuple[Tensor, Tensor, Tensor]:
    """Origins, directions and colours of every pixel of every image: ``[N*H*W, 3]`` each."""
    os_, ds = [], []
    for m in data.c2w:
        o, d = camera_rays(torch.as_tensor(m), data.height, data.width, *data.intrinsics)
        os_.append(o)
        ds.append(d)
    return torch.cat(os_), torch.cat(ds), torch.as_tensor(data.images).reshape(-1, 3)


class RayBatches(torch.utils.data.Dataset):
    """All training rays; ``__getitems__`` gathers a whole batch with one index op (no per-ray collation)."""

    def __init__(self, o: Tensor, d: Tensor, rgb: Tensor):
        self.o, self.d, self.rgb = o, d, rgb

    def __len__(self) -> int:
        return self.o.shape[0]

    def __getitem__(self, i):
        return self.o[i], self.d[i], self.rgb[i]

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return self.o[idx], self.d[idx], self.rgb[idx]


def _batch_as_is(batch):
    return batch


def fit_images(data: PosedImages, cfg: FitImagesConfig, device: str = "cpu", background: float = 1.0,
               eval_fn: Optional[Callable] = None, callbacks=()) -> tuple[RadianceField, dict]:
    """Train ``cfg.field`` from scratch on the images (MSE on random ray batches); returns ``(field, info)``."""
    o, d, rgb = dataset_rays(data)
    if o.shape[0] < cfg.rays_per_step:
        raise ValueError(f"FitImagesConfig.rays_per_step={cfg.rays_per_step} exceeds the {o.shape[0]} training rays")
    torch.manual_seed(cfg.train.seed)
    field = build_field(cfg.field)
    render = replace(cfg.render, background=background)
    loader = torch.utils.data.DataLoader(RayBatches(o, d, rgb), batch_size=cfg.rays_per_step, shuffle=True, drop_last=True,
                                         collate_fn=_batch_as_is)

    def loss_fn(model, batch):
        bo, bd, brgb = batch
        out = render_rays(model, bo, bd, render, training=True)
        loss = torch.nn.functional.mse_loss(out["rgb"], brgb)
        return loss, {"psnr": -10 * math.log10(max(loss.item(), 1e-10))}

    lr = cfg.train.lr * (cfg.mlp_lr_scale if cfg.field.kind == "mlp" else 1.0)
    start = time.perf_counter()
    res = fit(field, loader, loss_fn, _on_cpu(cfg.train, device), param_groups=_param_groups(field, lr), eval_fn=eval_fn,
              callbacks=callbacks)
    rig = rig_from_cameras(data.c2w, data.width, data.height, data.intrinsics, background)
    return res.model.eval(), {"seconds": time.perf_counter() - start, "steps": res.steps, "final_loss": res.final_loss,
                              "params": count_params(res.model), "rig": rig, "history": res.history}


def _norm_loss(diff: Tensor, kind: str, weight: Optional[Tensor] = None) -> Tensor:
    if diff.numel() == 0:
        return diff.sum()
    sq = diff.pow(2)
    if weight is not None:
        sq = sq * weight
    return sq.sum().clamp(min=1e-12).sqrt() if kind == "norm_l2" else sq.mean()


def clip_density_pair(student: Tensor, teacher: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Teacher clipped to ``[lo, hi]``; student clipped only where it is beyond the same bound (see module doc)."""
    target = teacher.clamp(lo, hi)
    s = torch.where((target <= lo) & (student < lo), torch.full_like(student, lo), student)
    s = torch.where((target >= hi) & (s > hi), torch.full_like(s, hi), s)
    return s, target


def _stage(step: int, cfg: DistillConfig, both_features: bool) -> int:
    if step < cfg.stage1_iters and both_features:
        return 1
    return 2 if step < cfg.stage2_iters else 3


TEACHER_BUFFER_KEYS = ("o", "d", "t", "near", "far", "hit", "rgb", "sigma_pre", "point_rgb", "feature")
"""What PVD's losses read of a teacher render, kept per ray by :func:`teacher_buffer`."""


@torch.no_grad()
def teacher_buffer(teacher: RadianceField, rays: list[tuple[Tensor, Tensor]], render: RenderConfig, coarse_every: int) -> dict:
    """The teacher's samples and outputs for several batches of rays ``(o, d)``, concatenated along the ray axis
    (``DistillConfig.teacher_cache_batches``); each batch rendered as :func:`distill` renders one step's."""
    parts = []
    for o, d in rays:
        samples, out = render_teacher(teacher, o, d, render, training=True, coarse_every=coarse_every)
        parts.append({"o": o, "d": d, **samples, **out})
    return {k: None if parts[0][k] is None else torch.cat([p[k] for p in parts]) for k in TEACHER_BUFFER_KEYS}


class TeacherBuffer:
    """``DistillConfig.teacher_cache_batches = N``: the teacher's renders of N steps' rays, rebuilt every
    ``N * teacher_cache_reuse`` steps from the rays those steps would have drawn (``make_rays(step, device)``); each
    pass over the buffer takes its rays in a new random order, ``rays_per_step`` per step."""

    def __init__(self, teacher: RadianceField, cfg: DistillConfig, render: RenderConfig, make_rays: Callable):
        self.teacher, self.cfg, self.render, self.make_rays = teacher, cfg, render, make_rays
        self.renders = 0
        """Teacher renders so far (one per batch of ``rays_per_step`` rays)."""
        self._data: dict = {}
        self._epoch = self._pass = None
        self._order: Optional[Tensor] = None

    def batch(self, step: int, device) -> tuple[Tensor, Tensor, dict, dict]:
        """``(o, d, samples, teacher outputs)`` of ``step``, as :func:`distill`'s loss reads them."""
        n, cfg = self.cfg.teacher_cache_batches, self.cfg
        period = n * cfg.teacher_cache_reuse
        epoch, within = divmod(step, period)
        if epoch != self._epoch:
            rays = [self.make_rays(epoch * period + b, device)[:2] for b in range(n)]
            self._data, self._epoch, self._pass = teacher_buffer(self.teacher, rays, self.render, cfg.coarse_every), epoch, None
            self.renders += n
        pass_index, position = divmod(within, n)
        if pass_index != self._pass:
            g = torch.Generator().manual_seed(cfg.train.seed * 7_919 + epoch * 1_009 + pass_index)
            self._order, self._pass = torch.randperm(self._data["o"].shape[0], generator=g).to(device), pass_index
        idx = self._order[position * cfg.rays_per_step:(position + 1) * cfg.rays_per_step]
        pick = {k: None if v is None else v[idx] for k, v in self._data.items()}
        samples = {k: pick[k] for k in ("t", "near", "far", "hit")}
        return pick["o"], pick["d"], samples, {k: pick[k] for k in ("rgb", "sigma_pre", "point_rgb", "feature")}


def distill(teacher: RadianceField, rig: CameraRig, cfg: DistillConfig, device: str = "cpu",
            eval_fn: Optional[Callable] = None, callbacks=()) -> tuple[RadianceField, dict]:
    """PVD: train ``cfg.student`` to reproduce ``teacher`` from random poses; returns ``(student, info)``."""
    teacher = teacher.to(device).eval().requires_grad_(False)
    if cfg.student.geo_feat_dim != teacher.geo_feat_dim:
        raise ValueError(f"DistillConfig.student.geo_feat_dim must equal the teacher's ({teacher.geo_feat_dim}), "
                         f"got {cfg.student.geo_feat_dim!r}")
    torch.manual_seed(cfg.train.seed)
    student = build_field(replace(cfg.student, bound=teacher.bound))
    both = teacher.has_feature and student.has_feature
    render = replace(cfg.render, background=rig.background)
    lo, hi = cfg.density_clip
    per_pose = math.ceil(cfg.rays_per_step / cfg.poses_per_step)
    pool: dict[str, Tensor] = {}
    stages_seen: dict[int, int] = {}

    n_hard_poses = int(cfg.hard_poses_ratio * cfg.poses_per_step) if cfg.active_learning else 0
    reused_poses = [0]

    def make_rays(step: int, dev) -> tuple[Tensor, Tensor, Tensor, int]:
        """Rays of this step, their poses, and how many leading rays came from the hard-ray pool."""
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
        poses = random_poses(rig, cfg.poses_per_step, g)
        if n_hard_poses and "poses" in pool:
            pick = torch.randperm(pool["poses"].shape[0], generator=g)[:n_hard_poses]
            poses[: len(pick)] = pool["poses"][pick]
            reused_poses[0] += len(pick)
        o_all, d_all = [], []
        for m in poses:
            o, d = camera_rays(m, rig.height, rig.width, *rig.intrinsics)
            pick = torch.randint(0, o.shape[0], (per_pose,), generator=g)
            o_all.append(o[pick])
            d_all.append(d[pick])
        o, d = torch.cat(o_all)[: cfg.rays_per_step], torch.cat(d_all)[: cfg.rays_per_step]
        k = 0
        if cfg.active_learning and "o" in pool:
            k = min(int(cfg.hard_rays_ratio * o.shape[0]), pool["o"].shape[0])
            pick = torch.randperm(pool["o"].shape[0], generator=g)[:k]
            o[:k], d[:k] = pool["o"][pick].cpu(), pool["d"][pick].cpu()
        return o.to(dev), d.to(dev), poses, k

    buffer = TeacherBuffer(teacher, cfg, render, make_rays) if cfg.teacher_cache_batches else None

    def loss_fn(model, batch):
        step = int(batch[0])
        dev = next(model.parameters()).device
        stage = _stage(step, cfg, both)
        stages_seen[stage] = stages_seen.get(stage, 0) + 1
        if buffer is not None:
            o, d, samples, t_out = buffer.batch(step, dev)
            poses, n_pool_rays = None, 0
        else:
            o, d, poses, n_pool_rays = make_rays(step, dev)
            samples, t_out = render_teacher(teacher, o, d, render, training=True, coarse_every=cfg.coarse_every)  # no grad
        s_out = composite(model, o, d, samples, render.background)
        hit = samples["hit"]
        s_sig, t_sig = clip_density_pair(s_out["sigma_pre"][hit], t_out["sigma_pre"][hit], lo, hi)
        point_err = (s_sig - t_sig).pow(2)
        point_w = None
        if cfg.active_learning and cfg.hard_points_ratio > 0 and point_err.numel():
            k = max(1, int(cfg.hard_points_ratio * point_err.numel()))
            thresh = point_err.detach().flatten().topk(k).values[-1]
            point_w = 1.0 + cfg.hard_points_boost * (point_err.detach() >= thresh).float()
        parts: dict[str, Tensor] = {}
        if stage == 1:
            diff = s_out["feature"][hit] - torch.cat([t_sig[..., None], t_out["feature"][hit][..., 1:]], -1)
            parts["feature"] = cfg.w_feature * cfg.feature_decay ** step * _norm_loss(
                diff, cfg.loss_type, None if point_w is None else point_w[..., None])
        else:
            parts["density"] = cfg.w_density * _norm_loss(s_sig - t_sig, cfg.loss_type, point_w)
            occupied = t_sig > lo
            parts["colour"] = cfg.colour_weight() * _norm_loss(s_out["point_rgb"][hit][occupied] - t_out["point_rgb"][hit][occupied],
                                                        cfg.loss_type)
        ray_err = (s_out["rgb"] - t_out["rgb"]).pow(2).sum(-1)
        if stage == 3:
            parts["rgb"] = cfg.w_rgb * _norm_loss(s_out["rgb"] - t_out["rgb"], cfg.loss_type)
        if cfg.w_tensorf_l1 and cfg.student.kind == "tensorf_vm":
            parts["l1"] = cfg.w_tensorf_l1 * model.density_regulariser()
        if cfg.active_learning:
            with torch.no_grad():
                po = torch.cat([pool.get("o", o[:0]), o]), torch.cat([pool.get("d", d[:0]), d])
                pe = torch.cat([pool.get("e", ray_err[:0]), ray_err.detach()])
                keep = pe.topk(min(cfg.hard_rays_pool, pe.numel())).indices
                pool.update(o=po[0][keep], d=po[1][keep], e=pe[keep])
                if n_hard_poses:  # a pose's error: the mean over its own rays (not those from the ray pool)
                    owner = torch.arange(ray_err.shape[0], device=ray_err.device) // per_pose
                    own = torch.arange(ray_err.shape[0], device=ray_err.device) >= n_pool_rays
                    err = torch.zeros(len(poses), device=ray_err.device).index_add_(0, owner[own], ray_err[own].detach())
                    cnt = torch.zeros(len(poses), device=ray_err.device).index_add_(0, owner[own], torch.ones_like(ray_err[own]))
                    seen = cnt > 0
                    cand = torch.cat([pool.get("poses", poses[:0]), poses[seen.cpu()]])
                    ce = torch.cat([pool.get("pose_err", err[:0]), err[seen] / cnt[seen]])
                    keep = ce.topk(min(cfg.hard_poses_pool, ce.numel())).indices
                    pool.update(poses=cand[keep.cpu()], pose_err=ce[keep])
        loss = sum(parts.values())
        return loss, {"stage": stage, "psnr_vs_teacher": -10 * math.log10(max(ray_err.mean().item() / 3, 1e-10)),
                      **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}}

    steps = torch.arange(cfg.train.max_steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(steps), batch_size=1, shuffle=False)
    lr = cfg.train.lr * (cfg.mlp_lr_scale if cfg.student.kind == "mlp" else 1.0)
    start = time.perf_counter()
    res = fit(student, loader, lambda m, b: loss_fn(m, b[0]), _on_cpu(cfg.train, device),
              param_groups=_param_groups(student, lr), eval_fn=eval_fn, callbacks=callbacks)
    return res.model.eval(), {"seconds": time.perf_counter() - start, "steps": res.steps, "final_loss": res.final_loss,
                              "params": count_params(res.model), "stage_steps": stages_seen, "stage1_skipped": not both,
                              "hard_poses_reused": reused_poses[0], "teacher_renders": buffer.renders if buffer is not None else res.steps,
                              "history": res.history}


@torch.no_grad()
def evaluate(field: RadianceField, data: PosedImages, render: RenderConfig, background: float = 1.0,
             keep_images: int = 0) -> dict:
    """Mean PSNR/SSIM of ``field``'s renders against ``data``'s images (evaluation sampling, no jitter)."""
    render = replace(render, background=background)
    psnrs, ssims, renders = [], [], []
    for k, m in enumerate(data.c2w):
        img = render_image(field, torch.as_tensor(m), data.height, data.width, data.intrinsics, render)["rgb"]
        gt = torch.as_tensor(data.images[k])
        psnrs.append(psnr(img, gt))
        ssims.append(ssim(img, gt))
        if k < keep_images:
            renders.append(img)
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "n_images": len(psnrs),
            "per_image_psnr": psnrs, "renders": renders}


@torch.no_grad()
def render_views(field: RadianceField, rig: CameraRig, poses: Tensor, render: RenderConfig, progress: bool = False) -> list[Tensor]:
    """Renders ``[H, W, 3]`` of ``field`` from each pose, at the rig's intrinsics (a progress bar over poses if asked)."""
    from tqdm.auto import tqdm

    render = replace(render, background=rig.background)
    return [render_image(field, m, rig.height, rig.width, rig.intrinsics, render)["rgb"]
            for m in tqdm(poses, desc="render", disable=not progress, leave=False)]


@torch.no_grad()
def density_grid(field: RadianceField, resolution: int, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Grid coordinates ``[R]`` along each axis of the scene cube and the density ``trunc_exp(sigma_pre)`` ``[R, R, R]``
    indexed ``[x, y, z]``, evaluated one z slice at a time (a progress bar over the slices)."""
    from tqdm.auto import tqdm

    dev = next(field.parameters()).device
    axis = torch.linspace(-field.bound, field.bound, resolution, device=dev)
    slices = []
    for z in tqdm(axis, desc="density grid", disable=not progress, leave=False):
        grid = torch.stack(torch.meshgrid(axis, axis, z[None], indexing="ij"), -1).reshape(-1, 3)
        slices.append(trunc_exp(field.density_pre(grid)).reshape(resolution, resolution))
    return axis, torch.stack(slices, -1)


def _colours_seen_from_above(field: RadianceField, pts: Tensor) -> Tensor:
    down = torch.tensor([0.0, 0.0, -1.0], device=pts.device).expand_as(pts)
    return torch.cat([field(pts[i:i + 65536], down[i:i + 65536]).rgb for i in range(0, pts.shape[0], 65536)]) \
        if pts.shape[0] else pts.new_zeros(0, 3)


@torch.no_grad()
def export_points(field: RadianceField, cfg: ExportConfig, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Points ``[N, 3]`` where ``trunc_exp(sigma_pre)`` > threshold on a regular grid, and their colours ``[N, 3]``.

    The colour is the field's colour seen from straight above (view direction -z).
    """
    axis, dens = density_grid(field, cfg.resolution, progress)
    keep = dens > cfg.density_threshold
    idx = keep.nonzero()
    pts, dens = axis[idx], dens[keep]
    if cfg.max_points is not None and pts.shape[0] > cfg.max_points:
        pts = pts[dens.topk(cfg.max_points).indices]
    return pts.cpu(), _colours_seen_from_above(field, pts).cpu()


@torch.no_grad()
def export_mesh(field: RadianceField, cfg: ExportConfig, progress: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Triangle mesh of the iso-surface ``density = cfg.density_threshold`` (marching cubes, scikit-image).

    Returns vertices ``[V, 3]`` (world units), faces ``[F, 3]`` (int) and vertex colours ``[V, 3]`` seen from above.
    """
    from skimage.measure import marching_cubes

    axis, dens = density_grid(field, cfg.resolution, progress)
    vol = dens.float().cpu().numpy()
    if not vol.min() < cfg.density_threshold < vol.max():
        raise ValueError(f"--threshold {cfg.density_threshold}: the field's density ({vol.min():.3g} .. {vol.max():.3g} on "
                         "the grid) never crosses it, so there is no surface; choose a value inside that range")
    step = float(axis[1] - axis[0])
    verts, faces, _, _ = marching_cubes(vol, level=cfg.density_threshold, spacing=(step, step, step))
    verts = torch.as_tensor(verts.copy(), dtype=torch.float32, device=axis.device) + axis[0]
    return verts.cpu(), torch.as_tensor(faces.astype("int64")), _colours_seen_from_above(field, verts).cpu()


