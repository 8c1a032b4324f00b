"""Losses, training on generated scenes, test-time fine-tuning, the per-scene baseline, and reconstruction.

Losses (TracksTo4D, unsupervised, in normalised image coordinates; r = reprojection residual):

* static   ``mean_visible log(γ_p + |r_static|² / γ_p)`` with the static basis point only: a large γ lets a
  moving point violate the static model (its minimum over γ is log 2|r|, so the term is unbounded below);
* dynamic  ``mean_visible |r_dynamic|`` of the full low-rank model, with the static basis detached;
* negative depth ``mean max(min_depth - z, 0)`` over every point and frame, static and dynamic;
* sparsity ``mean_{p,k>=1} |B_pk| / stopgrad(γ_p)``.

Training uses :func:`lowrank_vision.core.train.fit` (AdamW, warm-up + cosine; on a GPU the whole step replays as one
captured CUDA graph: the loss reads nothing back to the host, and the rigid / rotation-only stages are device flags
refilled between steps, see :func:`fit_encoder`). The baseline optimises the
same motion model's parameters directly for one scene (:class:`~.model.SceneParameters`), and keeps the
iterate with the lowest loss, as test-time fine-tuning does; both loops keep that iterate on the device (no host read
per step) and on a GPU replay their step as one captured CUDA graph (:func:`_optimise`, :data:`SCENE_LOOP_CUDA_GRAPH`).

Rotation-first rigid stage (``rotation_only``, a choice of ours against the depth reversal, off by default).
From the symmetric start (identity cameras, every track at one depth) a camera translation and a camera rotation
move every point alike, so the first gradient steps let the translation explain the shared image motion. For a
camera that sweeps sideways while turning towards a fixated point (the generator's look-at sweep, and many
hand-held clips), the shared motion of a scene that lies mostly *beyond* the fixated point has the sign of a
translation opposite to the true one; the parallax left over is then fitted with the depth order reversed (the
Necker / bas-relief ambiguity of nearly affine views), a worse local minimum. Fitting pure rotations first lets
the rotation take the shared motion, so the translation's sign comes from the parallax. Per-scene rigid fits
from the symmetric start (200 Adam steps, 12 val scenes of each kind): mean depth correlation -0.78 (static
scenes) / -0.27 (35 % moving tracks) without, +0.68 / +0.77 with the first 100 steps rotation-only, and a lower
rigid loss (static: 7.97e-3 -> 5.43e-3). For the *encoder* it did not help (small CPU runs on val scenes, batch
16, 800 steps, 480 rigid, 160 of them rotation-only: val depth correlation -0.52 vs -0.48 without when a fifth
of the training scenes is static, +0.75 vs +0.90 when none is); what reverses the encoder is static training
scenes (bench/tracks4d_gpu.py trains without them).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_vision.core import train as core_train
from lowrank_vision.core.train import TrainResult, fit
from lowrank_vision.datasets.tracks import SceneConfig, TrackSet, make_scene, split_seeds

from .config import BaselineConfig, FinetuneConfig, LossConfig, ModelConfig, TrainRunConfig
from .model import SceneParameters, TracksTo4DNet, project

__all__ = ["SceneDataset", "prepare", "sample_from_trackset", "pool_batch", "loss_terms", "fit_encoder", "train_model", "reconstruct",
           "optimise_scene", "finetune", "forward_timed"]


def sample_from_trackset(ts: TrackSet) -> dict:
    """One scene as tensors: normalised tracks [T, N, 2], visibility [T, N], focal_known, f_px (= sqrt(fx fy))."""
    Kinv = np.linalg.inv(ts.K)
    homog = np.concatenate([ts.tracks.astype(np.float64), np.ones(ts.tracks.shape[:2] + (1,))], -1)
    norm = homog @ Kinv.T
    norm = norm[..., :2] / norm[..., 2:]
    norm = np.where(ts.visible[..., None], norm, 0.0)
    return {"tracks": torch.from_numpy(norm.astype(np.float32)), "visible": torch.from_numpy(ts.visible.copy()),
            "focal_known": torch.tensor(ts.focal_known), "f_px": torch.tensor(float(np.sqrt(ts.K[0, 0] * ts.K[1, 1])))}


def prepare(tracksets: Sequence[TrackSet], device: str | torch.device = "cpu") -> dict:
    """A batch of scenes with equal T and N (stacked :func:`sample_from_trackset`), on ``device``."""
    samples = [sample_from_trackset(ts) for ts in tracksets]
    return {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}


class SceneDataset(torch.utils.data.Dataset):
    """Generated scenes of one split (item i = scene seed ``split_seeds(split, n)[i]``, cached)."""

    def __init__(self, split: str, count: int, scene: SceneConfig = SceneConfig()):
        self.seeds = split_seeds(split, count)
        self.scene = scene
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def trackset(self, i: int) -> TrackSet:
        return make_scene(self.seeds[i], self.scene).to_trackset()

    def __getitem__(self, i: int) -> dict:
        if i not in self._cache:
            self._cache[i] = sample_from_trackset(self.trackset(i))
        return self._cache[i]


def pool_batch(pool: dict, index: torch.Tensor, points: Optional[int] = None, flip_x: bool = False) -> dict:
    """A training batch gathered from a pool of prepared scenes (tensors of :func:`prepare`, on the device).

    ``points`` < the pool's N: each scene keeps a random subset of its tracks (the tracks of a scene are
    i.i.d. draws of the generator, so a subset is another valid scene); ``flip_x``: half the scenes are
    mirrored left-right (x -> -x in normalised coordinates, a mirrored world seen by the same camera model).
    """
    tracks, vis = pool["tracks"][index], pool["visible"][index]
    B, T, P, _ = tracks.shape
    if points is not None and points < P:
        keep = torch.rand(B, P, device=tracks.device).argsort(1)[:, :points]
        tracks = tracks.gather(2, keep[:, None, :, None].expand(B, T, points, 2))
        vis = vis.gather(2, keep[:, None, :].expand(B, T, points))
    if flip_x:
        sign = torch.where(torch.rand(B, device=tracks.device) < 0.5, -1.0, 1.0)
        tracks = tracks * torch.stack([sign, torch.ones_like(sign)], -1)[:, None, None]
    return {"tracks": tracks, "visible": vis, "focal_known": pool["focal_known"][index], "f_px": pool["f_px"][index]}


def _pick(flag: bool | torch.Tensor, if_true: torch.Tensor, if_false: torch.Tensor) -> torch.Tensor:
    """``if_true`` where ``flag`` holds: a Python bool picks on the host, a 0-d bool tensor on the device with
    ``torch.where`` (a captured CUDA graph follows a flag refilled in place; a bool would be frozen at capture)."""
    if isinstance(flag, torch.Tensor):
        return torch.where(flag, if_true, if_false)
    return if_true if flag else if_false


def _per_scene_px(residual: torch.Tensor, vis: torch.Tensor, f_px: torch.Tensor) -> torch.Tensor:
    """Mean over scenes of each scene's mean visible residual [B, T, N], in pixels."""
    return ((residual * vis).sum((1, 2)) / vis.sum((1, 2)).clamp(min=1.0) * f_px).mean()


def loss_terms(out: dict, batch: dict, config: LossConfig = LossConfig(), rigid: bool | torch.Tensor = False,
               rotation_only: bool | torch.Tensor = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its terms for a batch, every term a detached 0-d tensor (no host read: the step can be captured).

    The terms are the same whatever the stage: ``static``, ``dynamic``, ``negative_depth``, ``sparsity`` (the full
    loss's), ``static_l1`` (the rigid stage's) and ``reprojection_px`` (of the scored model: the static basis alone
    in the rigid stage, the full low-rank model after). Means over visible observations multiply by the visibility
    and divide by its clamped sum (no boolean indexing, whose size the host would read).
    ``rigid=True`` (the baseline's first stage) scores the static basis alone with the plain mean
    |r_static| instead of the γ-weighted term, so no point can be given up before the cameras are found.
    ``rotation_only=True`` scores the cameras with their translation set to zero (pure rotations about the
    first camera's centre; the translation gets no gradient): see the module docstring. Either flag may be a 0-d
    bool tensor on the batch's device (:func:`fit_encoder`'s stages); both branches are then computed and picked on
    the device, with the same values and gradients as the bool.
    """
    out = dict(out, t=_pick(rotation_only, torch.zeros_like(out["t"]), out["t"]))
    obs, vis = batch["tracks"], batch["visible"].to(batch["tracks"].dtype)
    nvis = vis.sum().clamp(min=1.0)
    basis0 = out["basis"][:, :, 0]
    uv_s, z_s = project(basis0[:, None], out["R"], out["t"], out["focal"], config.min_depth)
    moving = out["points"] - basis0[:, None] + basis0[:, None].detach()
    uv_d, z_d = project(moving, out["R"], out["t"], out["focal"], config.min_depth)
    gamma = out["gamma"][:, None]
    r2_static = ((uv_s - obs) ** 2).sum(-1)
    static = (torch.log(gamma + r2_static / gamma) * vis).sum() / nvis
    r_dyn = (((uv_d - obs) ** 2).sum(-1) + 1e-12).sqrt()
    dynamic = (r_dyn * vis).sum() / nvis
    negative_static = F.relu(config.min_depth - z_s).mean()
    negative = F.relu(config.min_depth - z_d).mean() + negative_static
    if out["basis"].shape[2] > 1:
        sparsity = (out["basis"][:, :, 1:].abs().mean(dim=(-1, -2)) / out["gamma"].detach()).mean()
    else:
        sparsity = obs.new_zeros(())
    r_s = (r2_static + 1e-12).sqrt()
    static_l1 = (r_s * vis).sum() / nvis
    rigid_total = static_l1 + config.negative_depth_weight * negative_static
    full_total = (config.static_weight * static + config.dynamic_weight * dynamic
                  + config.negative_depth_weight * negative + config.sparsity_weight * sparsity)
    total = _pick(rigid, rigid_total, full_total)
    reprojection_px = _pick(rigid, _per_scene_px(r_s, vis, batch["f_px"]), _per_scene_px(r_dyn, vis, batch["f_px"]))
    terms = {"static": static, "dynamic": dynamic, "negative_depth": negative, "sparsity": sparsity, "static_l1": static_l1,
             "reprojection_px": reprojection_px}
    return total, {k: v.detach() for k, v in terms.items()}


def _forward(model: nn.Module, batch: dict) -> dict:
    return model(batch["tracks"], batch["visible"], batch["focal_known"])


class _StageFlags:
    """:func:`fit_encoder`'s rigid and rotation-only stages as 0-d bool tensors on the batch's device, refilled in place
    after every optimizer step (a ``fit`` callback): a captured whole-step CUDA graph reads the same storage at each
    replay, so it follows the stage change that a Python bool, fixed when the step is captured, would miss."""

    def __init__(self, rigid_steps: int, rotation_steps: int):
        self.rigid_steps, self.rotation_steps = rigid_steps, rotation_steps
        self.step = 0  # optimizer steps finished
        self.rigid: Optional[torch.Tensor] = None
        self.rotation_only: Optional[torch.Tensor] = None

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rigid, rotation_only)`` for the next step, made on ``device`` at the first call."""
        if self.rigid is None or self.rigid.device != device:
            self.rigid = torch.empty((), dtype=torch.bool, device=device)
            self.rotation_only = torch.empty((), dtype=torch.bool, device=device)
            self._fill()
        return self.rigid, self.rotation_only

    def _fill(self) -> None:
        self.rigid.fill_(self.step < self.rigid_steps)
        self.rotation_only.fill_(self.step < self.rotation_steps)

    def __call__(self, step: int, model: nn.Module, metrics: dict) -> None:
        self.step = step
        if self.rigid is not None:
            self._fill()


def fit_encoder(config: TrainRunConfig, device: str = "cpu", output_dir: Optional[str] = None,
                callbacks: Sequence[Callable] = (), pool: Optional[dict] = None, pool_points: Optional[int] = None) -> TrainResult:
    """Train the encoder on ``config.train_scenes`` generated scenes; validation loss/reprojection logged as eval_*.

    Returns the trainer's whole result (the model in eval mode, the history, the ``cuda_graph`` record).
    ``pool`` (tensors of :func:`prepare`, already on ``device``) replaces the generated train scenes: batches
    are index tensors gathered on the device by :func:`pool_batch` with ``pool_points`` tracks per scene and
    random left-right mirroring (the GPU run: thousands of scenes made once, no per-step host work).
    The step has no host traffic (stage flags on the device, terms as 0-d tensors), so ``config.train.cuda_graph``
    captures it; every batch has the same shapes (scenes of ``config.scene`` have exactly ``points`` tracks, and
    the loader drops a short last batch).
    """
    torch.manual_seed(config.train.seed)
    model = TracksTo4DNet(config.model)
    train_set = SceneDataset("train", config.train_scenes, config.scene) if pool is None else range(len(pool["tracks"]))
    val_set = SceneDataset("val", config.val_scenes, config.scene)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True)
    if len(loader) == 0:
        raise ValueError(f"TrainRunConfig.train_scenes={len(train_set)} is smaller than batch_size={config.batch_size}")
    tc = replace(config.train, cpu=str(device) == "cpu", output_dir=output_dir or config.train.output_dir)
    val_batch = None
    stages = _StageFlags(config.rigid_warmup_steps, config.rotation_first_steps)

    def loss_fn(m: nn.Module, batch):
        if pool is not None:
            batch = pool_batch(pool, batch, pool_points, flip_x=True)
        rigid, rotation_only = stages.on(batch["tracks"].device)
        return loss_terms(_forward(m, batch), batch, config.loss, rigid=rigid, rotation_only=rotation_only)

    def eval_fn(m: nn.Module) -> dict:
        nonlocal val_batch
        dev = next(m.parameters()).device
        if val_batch is None:
            val_batch = prepare([val_set.trackset(i) for i in range(len(val_set))], dev)
        loss, terms = loss_terms(_forward(m, val_batch), val_batch, config.loss)
        return {"loss": float(loss), "reprojection_px": float(terms["reprojection_px"])}

    result = fit(model, loader, loss_fn, tc, eval_fn=eval_fn, callbacks=[stages, *callbacks])
    result.model.eval()
    return result


def train_model(config: TrainRunConfig, device: str = "cpu", output_dir: Optional[str] = None,
                callbacks: Sequence[Callable] = (), pool: Optional[dict] = None,
                pool_points: Optional[int] = None) -> tuple[TracksTo4DNet, list[dict]]:
    """``(model in eval mode, history)`` of :func:`fit_encoder` with the same arguments."""
    result = fit_encoder(config, device, output_dir, callbacks, pool, pool_points)
    return result.model, result.history


def forward_timed(model: nn.Module, batch: dict) -> tuple[dict, float]:
    """Outputs under no_grad and the forward time in seconds (synchronised on CUDA)."""
    dev = batch["tracks"].device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    with torch.no_grad():
        out = _forward(model, batch)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.perf_counter() - start


class _LowestLossStep:
    """One Adam step of :func:`_optimise` with no host read: the loss, the lowest loss so far and that iterate's outputs
    stay on the device (a 0-d best loss, output buffers refilled in place through ``torch.where``), and the stage is
    read from 0-d bool flags (:meth:`set_stage`, refilled between steps), so the same step can be replayed as a CUDA graph.

    ``best_out`` and ``last_loss`` are allocated at the first call (shapes and dtype of the first outputs)."""

    def __init__(self, module: nn.Module, params: list, batch: dict, optimizer: torch.optim.Optimizer, loss_cfg: LossConfig):
        self.module, self.params, self.batch, self.optimizer, self.loss_cfg = module, params, batch, optimizer, loss_cfg
        device = batch["tracks"].device
        self.rigid = torch.zeros((), dtype=torch.bool, device=device)
        self.rotation_only = torch.zeros((), dtype=torch.bool, device=device)
        self.best_loss: Optional[torch.Tensor] = None
        self.best_out: Optional[dict] = None
        self.last_loss: Optional[torch.Tensor] = None

    def set_stage(self, rigid: bool, rotation_only: bool) -> None:
        """The next steps' stage (device fills, no host read)."""
        self.rigid.fill_(rigid)
        self.rotation_only.fill_(rotation_only)

    def keep_if_lower(self, value: torch.Tensor, out: dict, better: torch.Tensor) -> None:
        """Copy ``value`` and ``out`` into the best buffers where ``better`` (a 0-d bool tensor) holds."""
        self.best_loss.copy_(torch.where(better, value, self.best_loss))
        for k, buf in self.best_out.items():
            buf.copy_(torch.where(better, out[k].detach(), buf))

    def _allocate(self, value: torch.Tensor, out: dict) -> None:
        self.best_loss = torch.full((), float("inf"), dtype=value.dtype, device=value.device)
        self.best_out = {k: torch.zeros_like(v) for k, v in out.items()}
        self.last_loss = torch.zeros_like(value)

    def __call__(self) -> None:
        out = _forward(self.module, self.batch)
        loss, _ = loss_terms(out, self.batch, self.loss_cfg, rigid=self.rigid, rotation_only=self.rotation_only)
        value = loss.detach()
        if self.best_out is None:
            self._allocate(value, out)
        self.keep_if_lower(value, out, ~self.rigid & (value < self.best_loss))  # rigid steps are not scored
        self.last_loss.copy_(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()


_GRAPH_WARNED: set = set()
"""Fallback reasons already warned about in this process (a per-scene loop runs once per scene and start)."""


class _GraphedStep:
    """Runs ``step`` (no arguments, no host read) eagerly or, when ``requested`` and no ``reason`` stands against it, as
    :class:`~lowrank_vision.core.train.WholeStepGraph` does: eager warm-up steps on a side stream, one ``torch.cuda.graph``
    capture, then replays; a capture that raises leaves the loop eager with one warning per reason. ``record`` has the
    trainer's ``cuda_graph`` keys (no ``fused_builds``: the loops switch no layer's build)."""

    def __init__(self, step: Callable[[], None], optimizer: torch.optim.Optimizer, requested: bool, reason: Optional[str]):
        self.step, self.optimizer = step, optimizer
        self.use_graph = requested and reason is None
        self.warmup_left = core_train._GRAPH_WARMUP
        self.graph = None
        self.record = {"requested": requested, "captured": False, "graph_steps": 0, "eager_steps": 0,
                       "fallback_reason": reason if requested else None}

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            self.record["graph_steps"] += 1
        elif not self.use_graph:
            self._eager()
        elif self.warmup_left > 0:
            self.warmup_left -= 1
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                self._eager()
            main.wait_stream(side)
        else:
            self._capture_and_replay()

    def _eager(self) -> None:
        self.step()
        self.record["eager_steps"] += 1

    def _capture_and_replay(self) -> None:
        rng = torch.cuda.get_rng_state()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        torch.cuda.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.step()
        except Exception as exc:  # an op that cannot be captured: eager for the rest of the loop
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            core_train._release_cuda_rng_from_capture(rng)
            self._give_up(f"capture failed: {type(exc).__name__}: {str(exc)[:300]}")
            self._eager()
            return
        self.graph = graph
        self.record["captured"] = True
        self.graph.replay()  # the capture only recorded the step
        self.record["graph_steps"] += 1

    def _give_up(self, reason: str) -> None:
        self.use_graph = False
        self.record["fallback_reason"] = reason
        if reason not in _GRAPH_WARNED:
            _GRAPH_WARNED.add(reason)
            warnings.warn(f"per-scene CUDA graph off, the loop goes on eager: {reason}", RuntimeWarning, stacklevel=3)

    def finish(self) -> dict:
        """Drop the graph and its gradients; the record, with a reason when the loop ended before the capture."""
        if self.record["requested"] and not self.record["captured"] and self.record["fallback_reason"] is None:
            self.record["fallback_reason"] = f"{self.record['eager_steps']} steps: the loop ended within the eager warm-up"
        self.graph = None
        self.optimizer.zero_grad(set_to_none=True)
        return self.record


SCENE_LOOP_CUDA_GRAPH = True
"""Default of ``cuda_graph`` in :func:`finetune` and :func:`optimise_scene`: on a CUDA device the per-scene step is one
captured graph (eager fallback with its reason elsewhere). Measured on an H200 (``python3 bench/tracks4d_scene_loop.py
--device cuda --rounds 5``, ``docs/results/tracks4d_scene_loop.md``, 5 interleaved rounds): the baseline (1,000 steps x 2
starts) 0.09x the eager loop's time and the same result to the bit; the LoRA fine-tune (200 steps) 0.12x, on a nearby
trajectory (captured, LoRA's Linear layers run the fused kernel, eagerly the weight space: other rounding; best loss
within 0.4 %). Its GPU tests (``tests/plugins/tracks4d/test_tracks4d_scene_loop.py -m gpu``) passed there."""


def _graph_reason(device: torch.device) -> Optional[str]:
    """Why the per-scene loop on ``device`` cannot be captured (``None``: it can)."""
    return None if device.type == "cuda" else f"device is {device.type}: CUDA graphs need a CUDA device"


def _optimise(module: nn.Module, params, batch: dict, steps: int, lr: float, loss_cfg: LossConfig,
              rigid_steps: int = 0, rotation_steps: int = 0, cuda_graph: bool = SCENE_LOOP_CUDA_GRAPH,
              record: Optional[dict] = None, capturable_adam: Optional[bool] = None) -> tuple[dict, list[float]]:
    """Adam on ``params`` for ``steps``; returns the outputs of the lowest-loss iterate and the loss curve.

    The first ``rigid_steps`` fit the static basis alone with a plain L1 reprojection (the cameras explain
    what a rigid scene can explain before the motion basis is fitted); the best iterate is picked after them.
    The first ``rotation_steps`` of those keep the cameras' translation at zero (see the module docstring).
    The step reads nothing back (:class:`_LowestLossStep`); the curve is read once, at the end. On a CUDA device with
    ``cuda_graph`` the step is captured once and replayed (the batch is the same every step; eager fallback with a
    warning); ``record`` (a dict) receives the trainer-style ``cuda_graph`` record. ``capturable_adam`` (default: on
    every CUDA device, captured or not) builds Adam with ``capturable=True`` (step count and bias corrections on the
    device), so the eager and the captured loop do the same arithmetic: on the H200 (2026-12-03) their losses agreed at
    every step to 1e-4 with it in all three tested cases, while the comparison with a plain eager Adam failed in all
    three (rounding that Adam's normalisation carries into whole steps).
    """
    device = batch["tracks"].device
    reason = _graph_reason(device)
    opt = torch.optim.Adam(params, lr=lr, capturable=device.type == "cuda" if capturable_adam is None else capturable_adam)
    step_fn = _LowestLossStep(module, params, batch, opt, loss_cfg)
    runner = _GraphedStep(step_fn, opt, cuda_graph, reason)
    curve = None  # the scored steps' losses, on the device
    stage = None
    for step in range(steps):
        rigid = step < rigid_steps
        if (rigid, rigid and step < rotation_steps) != stage:  # refilled when the stage changes, outside the step
            stage = (rigid, rigid and step < rotation_steps)
            step_fn.set_stage(*stage)
        runner()
        if not rigid:
            if curve is None:
                curve = step_fn.last_loss.new_empty(steps - rigid_steps)
            curve[step - rigid_steps].copy_(step_fn.last_loss)
    graph_record = runner.finish()
    if record is not None:
        record.update(graph_record)
    with torch.no_grad():
        out = _forward(module, batch)
        loss, _ = loss_terms(out, batch, loss_cfg)
        if step_fn.best_out is None:  # no step at all
            return {k: v.detach() for k, v in out.items()}, [float(loss)]
        take = torch.isposinf(step_fn.best_loss) | (loss < step_fn.best_loss)  # nothing scored below inf yet, or lower
        step_fn.keep_if_lower(loss, out, take)
    losses = loss.reshape(1) if curve is None else torch.cat([curve, loss.reshape(1)])
    return step_fn.best_out, losses.tolist()


def _merged_record(records: Sequence[dict]) -> dict:
    """One ``cuda_graph`` record for several loops: captured when every loop was, summed steps, the first fallback reason."""
    return {"requested": any(r["requested"] for r in records), "captured": all(r["captured"] for r in records),
            "graph_steps": sum(r["graph_steps"] for r in records), "eager_steps": sum(r["eager_steps"] for r in records),
            "fallback_reason": next((r["fallback_reason"] for r in records if r["fallback_reason"]), None), "loops": len(records)}


def finetune(model: TracksTo4DNet, batch: dict, config: FinetuneConfig, loss_cfg: LossConfig = LossConfig(), *,
             cuda_graph: bool = SCENE_LOOP_CUDA_GRAPH, record: Optional[dict] = None) -> tuple[dict, list[float]]:
    """Test-time fine-tuning on one batch (a copy of ``model``; 'lora' wraps its MLP layers with core LoRA).

    ``cuda_graph`` and ``record``: see :func:`_optimise` (with ``cuda_graph`` on a CUDA device the step is one captured
    graph; default :data:`SCENE_LOOP_CUDA_GRAPH`)."""
    tuned = copy.deepcopy(model).train()
    if config.method == "lora":
        from lowrank_vision.core import apply

        apply(tuned, "lora", rank=config.rank, targets=["*.linear1", "*.linear2"], trainable=("frame_head.*", "point_head.*"))
    params = [p for p in tuned.parameters() if p.requires_grad]
    return _optimise(tuned, params, batch, config.steps, config.lr, loss_cfg, rigid_steps=config.rigid_steps, cuda_graph=cuda_graph,
                     record=record)


def _start_directions(count: int) -> list[tuple[float, float]]:
    """Initial camera sweep directions in the image plane: +x, -x, +y, -y, then diagonals."""
    dirs = [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (0.7, 0.7), (-0.7, -0.7), (0.7, -0.7), (-0.7, 0.7)]
    return dirs[:count]


def optimise_scene(batch: dict, config: BaselineConfig = BaselineConfig(), loss_cfg: LossConfig = LossConfig(),
                   model_cfg: Optional[ModelConfig] = None, *, cuda_graph: bool = SCENE_LOOP_CUDA_GRAPH,
                   record: Optional[dict] = None) -> tuple[dict, list[float]]:
    """The baseline: optimise the motion model of one scene (batch of 1) from several camera starts.

    Gradient descent from identity cameras often lands in the mirrored (depth-reversed) solution of a
    sideways-moving camera, so the rigid stage runs from ``config.starts`` initial sweeps (the camera
    translating by ±``0.1 · init_depth`` across the clip along ±x, ±y, ...); the start with the lowest
    rigid loss continues with the full loss. ``cuda_graph``: see :func:`_optimise`; ``record`` receives one
    record for all the loops (:func:`_merged_record`).
    """
    if batch["tracks"].shape[0] != 1:
        raise ValueError(f"optimise_scene works on one scene at a time, got a batch of {batch['tracks'].shape[0]}")
    cfg = replace(model_cfg or ModelConfig(), num_basis=config.num_basis)
    _, T, N, _ = batch["tracks"].shape
    rigid = int(round(config.rigid_fraction * config.steps))
    ramp = torch.linspace(-0.5, 0.5, T) * 0.1
    best, best_loss, records = None, float("inf"), []
    for dx, dy in _start_directions(config.starts if rigid else 1):
        params = SceneParameters(T, N, cfg)
        with torch.no_grad():
            params.frame_raw[0, :, 6] = dx * ramp
            params.frame_raw[0, :, 7] = dy * ramp
        params = params.to(batch["tracks"].device)
        records.append({})
        _optimise(params, list(params.parameters()), batch, rigid, config.lr, loss_cfg, rigid_steps=rigid, cuda_graph=cuda_graph,
                  record=records[-1])
        with torch.no_grad():
            loss = float(loss_terms(_forward(params, batch), batch, loss_cfg, rigid=True)[0])
        if loss < best_loss:
            best, best_loss = params, loss
    records.append({})
    result = _optimise(best, list(best.parameters()), batch, config.steps - rigid, config.lr, loss_cfg, cuda_graph=cuda_graph,
                       record=records[-1])
    if record is not None:
        record.update(_merged_record(records))
    return result


def reconstruct(out: dict, batch: dict, index: int = 0) -> dict:
    """Numpy reconstruction of scene ``index`` of a batch: the arrays ``predict`` writes (see commands.predict)."""
    f_px = float(batch["f_px"][index])
    points = out["points"][index]
    cam = torch.einsum("tij,tnj->tni", out["R"][index], points) + out["t"][index][:, None]
    uv = out["focal"][index][:, None, None] * cam[..., :2] / cam[..., 2:].clamp(min=1e-6)
    vis = batch["visible"][index]
    err = ((uv - batch["tracks"][index]) ** 2).sum(-1).sqrt() * f_px
    as_np = lambda x: x.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    return {"points": as_np(points), "R": as_np(out["R"][index]), "t": as_np(out["t"][index]),
            "focal": as_np(out["focal"][index] * f_px), "depth": as_np(cam[..., 2]), "basis": as_np(out["basis"][index]),
            "coefficients": as_np(out["coefficients"][index]), "gamma": as_np(out["gamma"][index]),
            "reprojection_px": float(err[vis].mean()) if bool(vis.any()) else float("nan")}
