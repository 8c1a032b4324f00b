"""GPU run of sr_dsclora (issue 16): SPAN x4 teacher on real photographs, then DSCLoRA vs continued SPAN vs full fine-tune.

    python3 bench/sr_gpu.py --device cuda --out runs/sr_gpu --data runs/sr/make-data --budget-s 300   # the GPU slot
    python3 bench/sr_gpu.py --smoke --device cpu --out /tmp/sr_gpu_smoke --data runs/sr/make-data --budget-s 120
    python3 bench/sr_gpu.py --device cuda --out runs/sr_gpu_ft --data runs/sr/make-data --budget-s 480 \
        --teacher docs/results/sr_gpu/span_x4.safetensors    # fine-tunes only, from an earlier run's teacher

``--data`` is the folder ``lowrank-sr make-data`` writes (``train/``, ``val/``, ``eval/``: 248 / 25 / 31 photos, about
38 MB; it must be carried to the GPU machine). Stages, each with a deadline (a fraction of ``--budget-s`` counted
from the start of the process), each writing ``OUT/<stage>/result.json`` at once and skipped when that exists:

1. ``teacher_l1``: SPAN x4 (26 channels, re-parameterisable training form) from scratch, L1 loss, Adam (0.9, 0.99),
   lr 1e-3, cosine to 1e-6, EMA 0.999 of the weights, random 96-px HR crops (24-px LR) with flips and 90-degree
   rotations (SPAN's recipe as far as it is stated; crop size from the issue). The step count is set from the
   measured step time so that the cosine ends inside the stage's window.
2. ``teacher_l2``: continues from 1's EMA weights with the L2 loss, lr 2e-4, cosine, EMA (the paper's fine stage).
   Each stage keeps the better of EMA / raw weights on the *validation* photos (a run shorter than 5,000 steps averages
   its last fifth instead of 0.999: :func:`ema_decay_for`), and the teacher is the better of the
   two stages there (:func:`chosen_teacher_stage`; the only choices made, the same way for every run below).
3. ``finetunes``: from the deployed teacher, for the same number of steps and each of ``--seeds``:
   ``dsclora`` (ConvLoRA r=2 in the 18 SConvLB convs, r=8 on conv_2 and the pixel-shuffle conv, spatial-affinity
   distillation on the six block outputs and the tail feature at full patch resolution, ``affinity_side`` = LR
   patch, lr 5e-4), ``continued`` (SPAN keeps training with the chosen teacher stage's recipe: training form, its
   loss, lr 2e-4) and ``full`` (every deployed parameter, L1, lr 2e-4). Each method's learning rate is chosen on the
   *validation* photos among ``--ft-lr-factors`` (default x0.25, x1, x4) of those base rates, extended by the grid's
   spacing past an edge that wins (twice at most), by one run per factor of half the fine-tunes' steps with a seed none
   of the compared runs uses (:func:`choose_finetune_lrs`); with one factor the base rates are used as stated.
4. ``report``: Y-PSNR / Y-SSIM on the evaluation photos (per source: Debian wallpapers, scikit-image /
   scikit-learn photos), bicubic, parameters, FLOPs, interleaved GPU runtimes, mean and spread over seeds;
   writes ``docs/results/sr_gpu.md``, ``docs/results/sr_gpu/report.json``, ``gains.png`` and the teacher / best
   DSCLoRA weights (``span_x4.safetensors``, ``dsclora_x4.safetensors``, deployed SPAN, 0.5 MB each).

With ``--teacher`` (a deployed SPAN of an earlier run) the teacher stages are not run: ``teacher_import`` measures its
val PSNR, ``continued`` starts from its exactly equal training form (the branches recovered from the 3x3 kernels) with
``--teacher-loss``, and the fine-tunes get the whole window.

Speed: on CUDA every training step (forward, backward, Adam) is replayed from one captured CUDA graph
(``core.train.WholeStepGraph``; the 26-channel SPAN's step is launch-bound), after three eager warm-up steps; DSCLoRA's
distillation terms come back as 0-d tensors, so its step is captured too (until 2026-12-02 they were host floats and
its runs stayed eager: 27 ms per step on the H200 against 10 ms for continued SPAN and 6 ms for the full
fine-tune). The EMA is one multi-tensor kernel per step. Each run's JSON records whether it captured.

Resuming: every training run writes ``OUT/<stage>/<run>/ckpt.safetensors`` (weights, EMA, Adam moments, step,
planned steps; no ``.pt``) every ``--ckpt-s`` seconds and when its window ends; a later call with the same
arguments continues each unfinished run towards its planned step count (carry ``OUT`` back in). A run whose
window ends before its planned steps (a slower machine than measured) stops there and is reported as cut short,
with the steps reached; its cosine schedule follows the clock as well as the steps, so it still ends decayed.
"""

from __future__ import annotations

import time

_T0 = time.time()  # the budget counts from here

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lowrank_vision.core.files import atomic_path, save_figure, write_json, write_text  # noqa: E402
from lowrank_vision.datasets.images import bicubic_downsample, image_files, load_eval_set, mod_crop, read_image  # noqa: E402
from lowrank_vision.plugins.sr_dsclora.config import DSCLoRAConfig, SPANConfig  # noqa: E402
from lowrank_vision.plugins.sr_dsclora.distill import DistillationLoss, attach_dsclora, fold_dsclora  # noqa: E402
from lowrank_vision.plugins.sr_dsclora.model import SPAN, reparameterize  # noqa: E402
from lowrank_vision.plugins.sr_dsclora.recipes import cost_report, evaluate, interleaved_runtimes, runtime_ratio  # noqa: E402
from lowrank_vision.plugins.sr_dsclora.weights import checkpoint_extra, export_span_state_dict, load_span, save_span  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "docs" / "results" / "sr_gpu.md"
RESULTS_DIR = ROOT / "docs" / "results" / "sr_gpu"
STAGES = ("teacher_l1", "teacher_l2", "finetunes", "report")
DEADLINES = {"teacher_l1": 0.55, "teacher_l2": 0.66, "finetunes": 0.92, "report": 1.0}
"""End of each stage's window as a fraction of the budget (the report needs the last tenth). The L1 stage has most of
it: in the 2026-12-02 run (0.42 / 0.58) the L2 stage lowered the *validation* PSNR (30.878 -> 30.861 dB)."""
METHODS = ("dsclora", "continued", "full")


# ----------------------------------------------------------------------------------------------- data
class PatchSampler:
    """Random aligned (LR, HR) patches drawn on the device: LR is made once per image (bicubic x4,
    8-bit, as :func:`~lowrank_vision.datasets.images.bicubic_downsample`), crops / flips / transposes per sample."""

    def __init__(self, folder: Path, scale: int, device: str, limit: int = 0) -> None:
        files = image_files(folder)[: limit or None]
        self.pairs = []
        for path in files:
            hr = mod_crop(read_image(path), scale)
            self.pairs.append((bicubic_downsample(hr, scale).to(device), hr.to(device)))
        self.scale, self.device = scale, device
        areas = torch.tensor([float(lr.shape[-2] * lr.shape[-1]) for lr, _ in self.pairs])
        self.weights = areas / areas.sum()

    def sample(self, batch: int, lr_patch: int, gen: torch.Generator):
        s, p = self.scale, lr_patch
        idx = torch.multinomial(self.weights, batch, replacement=True, generator=gen).tolist()
        u = torch.rand(batch, 5, generator=gen)
        lrs, hrs = [], []
        for k, (a, b) in zip(idx, u[:, :2].tolist()):
            lr, hr = self.pairs[k]
            y, x = int(a * (lr.shape[-2] - p + 1)), int(b * (lr.shape[-1] - p + 1))
            lrs.append(lr[:, y : y + p, x : x + p])
            hrs.append(hr[:, y * s : (y + p) * s, x * s : (x + p) * s])
        lr, hr = torch.stack(lrs), torch.stack(hrs)
        flips = (u[:, 2:] < 0.5).to(self.device)
        for j, op in enumerate((lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2))):
            m = flips[:, j].view(-1, 1, 1, 1)
            lr, hr = torch.where(m, op(lr), lr), torch.where(m, op(hr), hr)
        return lr.contiguous(), hr.contiguous()


# ------------------------------------------------------------------------------------------- training
def _save_ckpt(path: Path, model, ema, opt, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"opt.{i}.{key}"] = state[key]
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})


def _load_ckpt(path: Path, model, ema, opt) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["meta"])
    tensors = load_file(str(path))
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in tensors:
            step_device = device if opt.defaults.get("capturable") else "cpu"  # a capturable Adam keeps its step on the device
            opt.state[p] = {"step": torch.tensor(float(meta["step"]), device=step_device),
                            "exp_avg": tensors[f"opt.{i}.exp_avg"].to(device),
                            "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(device)}
    return meta


def ema_decay_for(planned_steps: int, cap: float = 0.999, horizon_fraction: float = 0.2) -> float:
    """EMA decay of a run of ``planned_steps``: ``cap`` (SPAN's 0.999), or shorter so that the average spans the last
    ``horizon_fraction`` of the run (``1 - 1 / (horizon_fraction * steps)``); 0 planned (not known yet): ``cap``.

    Session 10's fine-tunes (386 steps at 0.999) kept about 68 % of the starting weights in their EMA, so an "EMA"
    fine-tune was the teacher in disguise (DSCLoRA's two seeds scored the same to 1e-4 dB). Only runs shorter than
    ``1 / ((1 - cap) * horizon_fraction)`` = 5,000 steps change."""
    if planned_steps <= 0:
        return cap
    return min(cap, 1.0 - 1.0 / max(1.0, horizon_fraction * planned_steps))


def optimizer_and_stepper(model, loss_fn, lr: float, cuda_graph: bool = True):
    """Adam (0.9, 0.99) over the trainable parameters, and on CUDA (``cuda_graph``) the ``WholeStepGraph`` that
    replays each step: then Adam is capturable with a device-tensor lr that the schedule fills in place (its
    contract). Returns ``(optimizer, stepper or None)``."""
    from lowrank_vision.core.train import WholeStepGraph

    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    if not (cuda_graph and device.type == "cuda"):
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99)), None
    opt = torch.optim.Adam(params, lr=torch.tensor(lr, device=device), betas=(0.9, 0.99), capturable=True)
    return opt, WholeStepGraph(model, opt, loss_fn, None)


def training_step(model, loss_fn, opt, stepper, batch) -> tuple:
    """One optimizer step: through ``stepper`` (eager for its warm-up and wherever it cannot capture), else eager.
    Returns ``(loss, logs)``."""
    if stepper is not None:
        return stepper.step(batch)
    out = loss_fn(model, batch)
    loss, logs = out if isinstance(out, tuple) else (out, {})
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, logs


def train_run(run_dir: Path, model, loss_fn, sampler: PatchSampler, *, lr: float, batch: int, lr_patch: int, seed: int,
              deadline: float, steps: int = 0, ckpt_s: float = 60.0, ema_decay: float = 0.999, eval_fn=None,
              cuda_graph: bool = True) -> dict:
    """Train ``model`` (its trainable parameters) until ``steps`` (0: as many as fit before ``deadline``, planned from
    the measured step time) with Adam, cosine lr to 1e-6 and an EMA copy (decay :func:`ema_decay_for` the planned
    steps, at most ``ema_decay``); resumable from ``run_dir/ckpt.safetensors``.
    On CUDA (``cuda_graph``) each step is one captured graph (``core.train.WholeStepGraph``: the small SPAN's step is
    launch-bound); the result says whether it captured. Returns ``{"model", "ema", "steps", "planned", "cut_short",
    "seconds", "history", "cuda_graph"}``."""

    run_dir.mkdir(parents=True, exist_ok=True)
    opt, stepper = optimizer_and_stepper(model, loss_fn, lr, cuda_graph)
    graphs = stepper is not None
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    ckpt = run_dir / "ckpt.safetensors"
    meta = {"step": 0, "planned": steps, "seconds": 0.0, "history": [], "seed": seed}
    if ckpt.is_file():
        meta = _load_ckpt(ckpt, model, ema, opt)
    gen = torch.Generator().manual_seed(seed * 7919 + meta["step"])
    torch.manual_seed(seed)
    model.train()
    step, t_start, last_ckpt, window, t10 = meta["step"], time.time(), time.time(), [], time.time()
    seconds_before, saving, fresh = meta["seconds"], 0.0, meta["step"] == 0
    pairs = [(e, p) for e, p in zip(ema.parameters(), model.parameters()) if p.requires_grad]
    ema_params, live_params = [e for e, _ in pairs], [p for _, p in pairs]
    while True:
        if meta["planned"] and step >= meta["planned"]:
            break
        now = time.time()
        if now >= deadline and not (meta["planned"] and step >= 0.9 * meta["planned"]):
            break  # (the last tenth of a planned schedule is finished even past the deadline)
        if not meta["planned"] and step == 10:
            t10 = now
        if not meta["planned"] and step >= 30:  # plan the schedule from the step time after warm-up (first call only)
            rate = (step - 10) / (now - t10)
            meta["planned"] = max(step + 1, step + int(rate * (deadline - now) * 0.95))
        total = meta["planned"] or 10**9
        progress = step / max(1, total)
        if fresh:  # a slower machine than planned for still ends its cosine at the deadline
            progress = max(progress, (now - t_start) / max(1e-9, deadline - t_start))
        cur = 1e-6 + 0.5 * (lr - 1e-6) * (1 + math.cos(math.pi * min(1.0, progress)))
        for g in opt.param_groups:
            if graphs:
                g["lr"].fill_(cur)
            else:
                g["lr"] = cur
        loss, logs = training_step(model, loss_fn, opt, stepper, sampler.sample(batch, lr_patch, gen))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, live_params, 1 - ema_decay_for(meta["planned"], ema_decay))  # one multi-tensor kernel
        step += 1
        window.append(loss.item() if step % 25 == 0 else None)
        if step % 100 == 0:
            vals = [v for v in window if v is not None]
            meta["history"].append({"step": step, "loss": statistics.fmean(vals) if vals else None, "lr": cur,
                                    **{k: float(v) for k, v in logs.items()}})
            window = []
        if time.time() - last_ckpt > ckpt_s:
            t_save = time.time()
            meta.update(step=step, seconds=seconds_before + t_save - t_start - saving)
            _save_ckpt(ckpt, model, ema, opt, meta)
            last_ckpt = time.time()
            saving += last_ckpt - t_save  # saving time is not training time
    meta.update(step=step, seconds=seconds_before + time.time() - t_start - saving)
    _save_ckpt(ckpt, model, ema, opt, meta)
    for e, p in zip(ema.buffers(), model.buffers()):
        e.copy_(p)
    cut = bool(meta["planned"]) and step < meta["planned"] or not meta["planned"]
    return {"model": model.eval(), "ema": ema, "steps": step, "planned": meta["planned"], "cut_short": cut,
            "seconds": meta["seconds"], "history": meta["history"], "cuda_graph": stepper.record if stepper else {"requested": False}}


def _l1(model, batch):
    lr, hr = batch
    return F.l1_loss(model(lr), hr)


def _l2(model, batch):
    lr, hr = batch
    return F.mse_loss(model(lr), hr)


def _deployed(model) -> SPAN:
    return reparameterize(copy.deepcopy(model).cpu().eval())


def _val_psnr(model, images, scale, device) -> float:
    return evaluate(model.to(device), images, scale)["psnr"]


def _pick(result: dict, images, scale, device, fold=None) -> tuple[SPAN, dict]:
    """EMA or raw weights, whichever scores higher on the validation photos (deployed, folded)."""
    fold = fold or _deployed
    scores = {}
    candidates = {"ema": fold(result["ema"]), "raw": fold(result["model"])}
    for name, model in candidates.items():
        scores[name] = _val_psnr(model, images, scale, device)
    best = max(scores, key=scores.get)
    return candidates[best].cpu(), {"val_psnr_ema": scores["ema"], "val_psnr_raw": scores["raw"], "chosen": best}


# --------------------------------------------------------------------------------------------- stages
def _stage_json(out: Path, stage: str) -> Path:
    return out / stage / "result.json"


def stage_teacher(args, out: Path, stage: str, sampler, val, deadline: float) -> dict:
    run_dir = out / stage / "run"
    if stage == "teacher_l1":
        torch.manual_seed(0)
        model = SPAN(SPANConfig(scale=args.scale, channels=args.channels)).to(args.device)
        loss, lr = _l1, args.lr_l1
    else:
        start = json.loads(_stage_json(out, "teacher_l1").read_text())
        model = _load_training_form(out / "teacher_l1" / "run" / "ckpt.safetensors", args, prefix="ema." if start["chosen"] == "ema" else "model.")
        loss, lr = _l2, args.lr_l2
    result = train_run(run_dir, model, loss, sampler, lr=lr, batch=args.batch, lr_patch=args.lr_patch, seed=0, deadline=deadline,
                       ckpt_s=args.ckpt_s)
    teacher, choice = _pick(result, val, args.scale, args.device)
    save_span(teacher, out / stage / f"span_x{args.scale}.safetensors", extra={"stage": stage, "steps": result["steps"], **choice})
    summary = {"stage": stage, "steps": result["steps"], "planned": result["planned"], "cut_short": result["cut_short"],
               "seconds": result["seconds"], "lr": lr, "loss": "L1" if stage == "teacher_l1" else "L2", "history": result["history"],
               "cuda_graph": result["cuda_graph"], **choice}
    # a stage whose window ended is done (reported as cut short, with the steps reached); a killed process resumes
    write_json(_stage_json(out, stage), summary)
    return summary


def stage_import_teacher(args, out: Path, val) -> dict:
    """``--teacher``: a deployed SPAN from an earlier run (e.g. ``docs/results/sr_gpu/span_x4.safetensors``) is the
    teacher; the two teacher stages are not run. Its val PSNR is measured here, the recipe it came from is
    ``--teacher-loss`` (what ``continued`` goes on with), and its step count is what its checkpoint says."""
    src = Path(args.teacher)
    teacher = load_span(src)
    if teacher.scale != args.scale or teacher.config.channels != args.channels:
        raise SystemExit(f"--teacher {src} is x{teacher.scale} with {teacher.config.channels} channels; "
                         f"this run is x{args.scale} with {args.channels} (--scale, --channels)")
    extra = checkpoint_extra(src)
    save_span(teacher, out / "teacher_import" / f"span_x{args.scale}.safetensors", extra={"stage": "teacher_import", **extra})
    steps = int(extra.get("steps") or 0)
    summary = {"stage": "teacher_import", "imported_from": str(src), "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
               "steps": steps, "planned": steps, "cut_short": False, "seconds": 0.0, "loss": args.teacher_loss.upper(),
               "chosen": "raw", "val_psnr_raw": _val_psnr(teacher, val, args.scale, args.device), "val_psnr_ema": None,
               "source_command": extra.get("command")}
    write_json(_stage_json(out, "teacher_import"), summary)
    return summary


def _load_training_form(ckpt: Path, args, prefix: str) -> SPAN:
    from safetensors.torch import load_file

    model = SPAN(SPANConfig(scale=args.scale, channels=args.channels))
    tensors = load_file(str(ckpt))
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return model.to(args.device)


def chosen_teacher_stage(out: Path) -> str:
    """The teacher stage whose chosen weights score higher on the validation photos (``teacher_l1`` when the L2 stage has
    not finished): the L2 fine stage is the paper's recipe, but it is kept only where it helps on val. An imported
    teacher (``--teacher``) is the teacher."""
    if _stage_json(out, "teacher_import").is_file():
        return "teacher_import"
    scores = {}
    for stage in ("teacher_l1", "teacher_l2"):
        if _stage_json(out, stage).is_file():
            r = json.loads(_stage_json(out, stage).read_text())
            scores[stage] = r[f"val_psnr_{r['chosen']}"]
    return max(scores, key=lambda s: (scores[s], s)) if scores else "teacher_l1"


def _teacher_path(out: Path, scale: int) -> Path:
    return out / chosen_teacher_stage(out) / f"span_x{scale}.safetensors"


def stage_finetunes(args, out: Path, sampler, val, deadline: float) -> dict:
    stage_dir = out / "finetunes"
    plan_path = stage_dir / "plan.json"
    teacher = load_span(_teacher_path(out, args.scale))
    runs = [(m, s) for s in args.seeds for m in METHODS]
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
    else:  # same step count for every run: what the slowest method (DSCLoRA) does in its share of the window
        gen = torch.Generator().manual_seed(0)
        model, loss_fn, _ = _build(args, "dsclora", teacher, out)
        opt, stepper = optimizer_and_stepper(model, loss_fn, 1e-5)  # the runs' own step: captured on CUDA
        for i in range(15):  # 3 warm-up steps, the capture, then 10 timed steps
            if i == 5:
                _sync(args.device)
                t0 = time.time()
            training_step(model, loss_fn, opt, stepper, sampler.sample(args.batch, args.lr_patch, gen))
        _sync(args.device)
        step_s = (time.time() - t0) / 10
        n_factors = len(set(args.ft_lr_factors)) + 1 if len(set(args.ft_lr_factors)) > 1 else 0  # + one extension a method
        share = (deadline - time.time()) / (len(runs) + 0.5 * n_factors * len(METHODS)) * 0.6  # the lr trials: half a run each
        # a run also keeps an EMA and scores val twice: on 2026-12-02 a
        # DSCLoRA run took twice an eager probe's estimate (at 0.85 it was cut short; at 0.45 the six runs used 45 s of
        # 125); on 2026-12-03 the probe was still eager (20 ms a step) while the runs were captured (~11 ms): nine runs
        # of 758 steps used 91 s of a ~215 s window. Since then the probe times the captured step.
        plan = {"steps": max(20, int(share / step_s)), "dsclora_step_s": step_s, "runs": [f"{m}_s{s}" for m, s in runs]}
        if args.ft_steps:
            plan["steps"] = args.ft_steps
        write_json(plan_path, plan)
    lr_choice = choose_finetune_lrs(args, out, teacher, sampler, val, plan, deadline) if len(set(args.ft_lr_factors)) > 1 else None
    results = {}
    for i, (method, seed) in enumerate(runs):
        name = f"{method}_s{seed}"
        done = stage_dir / name / "result.json"
        if done.is_file():
            results[name] = json.loads(done.read_text())
            continue
        run_deadline = finetune_deadline(deadline, len(runs) - i - 1, plan)
        model, loss_fn, lr = _build(args, method, teacher, out)
        lr = lr_choice[method]["lr"] if lr_choice else lr
        result = train_run(stage_dir / name, model, loss_fn, sampler, lr=lr, batch=args.batch, lr_patch=args.lr_patch, seed=seed + 1,
                           deadline=run_deadline, steps=plan["steps"], ckpt_s=args.ckpt_s)
        fold = (lambda m: fold_dsclora(copy.deepcopy(m).cpu().eval())) if method == "dsclora" else _deployed
        chosen, choice = _pick(result, val, args.scale, args.device, fold=fold)
        save_span(chosen, stage_dir / name / f"{name}_x{args.scale}.safetensors", extra={"method": method, "seed": seed, **choice})
        summary = {"method": method, "seed": seed, "lr": lr, "steps": result["steps"], "planned": result["planned"],
                   "cut_short": result["cut_short"], "seconds": result["seconds"], "history": result["history"],
                   "cuda_graph": result["cuda_graph"], **choice}
        write_json(done, summary)
        results[name] = summary
    summary = {"plan": plan, "lr_choice": lr_choice, "runs": results, "complete": all(f"{m}_s{s}" in results and not results[f"{m}_s{s}"]["cut_short"]
                                                              for m, s in runs)}
    write_json(stage_dir / "summary.json", summary)  # also when cut short: the report shows what was reached
    if summary["complete"]:
        write_json(_stage_json(out, "finetunes"), summary)
    return summary


def finetune_deadline(stage_deadline: float, runs_after: int, plan: dict) -> float:
    """A run may go on until the stage's deadline less what the runs after it need at the probe's (slowest, DSCLoRA)
    step time, so a slow run borrows the slack that the faster methods leave instead of being cut at an equal share."""
    return stage_deadline - runs_after * plan["steps"] * plan["dsclora_step_s"]


LR_TRIAL_SEED = 10_000
"""Seed of the learning-rate trials: none of the compared runs (``--seeds``) uses it."""


def trial_steps(plan: dict) -> int:
    """Steps of one learning-rate trial: half a fine-tune's (a short run favours a larger rate; half keeps that small)."""
    return max(10, plan["steps"] // 2)


def best_lr(trials: list[dict]) -> dict:
    """The trial with the highest val PSNR; a tie goes to the smaller rate (the one that moves the teacher less)."""
    return max(trials, key=lambda t: (t["val_psnr"], -t["lr"]))


LR_EXTENSIONS = 2
"""How many times a method's lr grid is extended past an edge that wins on val (:func:`edge_factor`)."""


def edge_factor(trials: list[dict], ratio: float) -> Optional[float]:
    """The next lr factor when the best val trial (:func:`best_lr`) is the largest (smallest) factor tried: ``ratio`` x
    it (it / ``ratio``); ``None`` when the best lies inside the factors tried."""
    factors = sorted(t["factor"] for t in trials)
    best = best_lr(trials)["factor"]
    if len(factors) < 2 or factors[0] < best < factors[-1]:
        return None
    return best * ratio if best == factors[-1] else best / ratio


def choose_finetune_lrs(args, out: Path, teacher, sampler, val, plan: dict, stage_deadline: float) -> dict:
    """Each method's lr chosen on the val photos among ``args.ft_lr_factors`` x its base rate, the grid extended by its
    own spacing past an edge that wins (up to :data:`LR_EXTENSIONS` times): one run of :func:`trial_steps` per factor
    (seed :data:`LR_TRIAL_SEED`), EMA or raw weights as for the compared runs. Written to ``finetunes/lr_choice.json``
    (resumable per trial). Returns ``{method: {"lr", "trials"}}``."""
    stage_dir = out / "finetunes"
    path = stage_dir / "lr_choice.json"
    if path.is_file():
        return json.loads(path.read_text())
    grid = sorted(set(args.ft_lr_factors))
    ratio = grid[1] / grid[0]
    choice: dict = {}
    for m_index, method in enumerate(METHODS):
        rows, todo = [], list(grid)
        while todo:
            factor = todo.pop(0)
            done = stage_dir / "lr_trials" / f"{method}_x{factor:g}" / "trial.json"
            if done.is_file():
                row = json.loads(done.read_text())
            else:
                model, loss_fn, base = _build(args, method, teacher, out)
                after = (len(todo) + (len(METHODS) - m_index - 1) * len(grid)) * trial_steps(plan) + len(plan["runs"]) * plan["steps"]
                result = train_run(done.parent, model, loss_fn, sampler, lr=base * factor, batch=args.batch, lr_patch=args.lr_patch,
                                   seed=LR_TRIAL_SEED, deadline=stage_deadline - after * plan["dsclora_step_s"], steps=trial_steps(plan),
                                   ckpt_s=args.ckpt_s)
                fold = (lambda m: fold_dsclora(copy.deepcopy(m).cpu().eval())) if method == "dsclora" else _deployed
                _, picked = _pick(result, val, args.scale, args.device, fold=fold)
                row = {"method": method, "factor": factor, "lr": base * factor, "steps": result["steps"], "cut_short": result["cut_short"],
                       "val_psnr": picked[f"val_psnr_{picked['chosen']}"], "weights": picked["chosen"]}
                write_json(done, row)
            print(f"  lr trial {method} x{factor:g} ({row['lr']:.2g}): val {row['val_psnr']:.4f} dB", flush=True)
            rows.append(row)
            if not todo and len(rows) < len(grid) + LR_EXTENSIONS:
                nxt = edge_factor(rows, ratio)
                todo = [nxt] if nxt is not None else []
        choice[method] = {"trials": sorted(rows, key=lambda r: r["lr"]), "lr": best_lr(rows)["lr"]}
    write_json(path, choice)
    return choice


def _build(args, method: str, teacher: SPAN, out: Path):
    """``(model on device, loss_fn, lr)`` of one fine-tuning method, starting from the teacher."""
    if method == "dsclora":
        student = copy.deepcopy(teacher).train()
        cfg = DSCLoRAConfig(affinity_side=args.lr_patch)
        attach_dsclora(student, cfg)
        return student.to(args.device), DistillationLoss(copy.deepcopy(teacher), cfg), args.lr_dsclora
    if method == "continued":  # the chosen teacher stage's recipe goes on (training form, its loss) at the fine stage's lr
        stage = chosen_teacher_stage(out)
        if stage == "teacher_import":  # its training form, exactly equal (SPAN's branches are recovered from the 3x3 kernels)
            model = SPAN(SPANConfig(scale=args.scale, channels=args.channels))
            model.load_state_dict(export_span_state_dict(teacher))
            loss = _l2 if json.loads(_stage_json(out, stage).read_text())["loss"] == "L2" else _l1
            return model.train().to(args.device), loss, args.lr_l2
        prefix = "ema." if json.loads(_stage_json(out, stage).read_text())["chosen"] == "ema" else "model."
        loss = _l2 if stage == "teacher_l2" else _l1
        return _load_training_form(out / stage / "run" / "ckpt.safetensors", args, prefix), loss, args.lr_l2
    return copy.deepcopy(teacher).train().requires_grad_(True).to(args.device), _l1, args.lr_full


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _by_source(per_image: list) -> dict:
    groups: dict = {}
    for row in per_image:
        source = row["image"].split("__")[0]
        group = "bundled (scikit-image, scikit-learn)" if source in ("skimage", "sklearn") else "Debian wallpapers"
        groups.setdefault(group, []).append(row["psnr"])
    return {g: statistics.fmean(v) for g, v in groups.items()}


def stage_report(args, out: Path, images) -> dict:
    names = ("teacher_import",) if _stage_json(out, "teacher_import").is_file() else ("teacher_l1", "teacher_l2")
    stage = {s: json.loads(_stage_json(out, s).read_text()) if _stage_json(out, s).is_file() else None for s in names}
    ft_path = out / "finetunes" / "summary.json"
    finetunes = json.loads(ft_path.read_text()) if ft_path.is_file() else None
    models = {}
    for s in names:
        path = out / s / f"span_x{args.scale}.safetensors"
        if path.is_file():
            models[s] = load_span(path)
    for name in (finetunes or {}).get("runs", {}):
        path = out / "finetunes" / name / f"{name}_x{args.scale}.safetensors"
        if path.is_file():
            models[name] = load_span(path)
    rows = {"bicubic": evaluate(None, images, args.scale)}
    for name, model in models.items():
        rows[name] = evaluate(model.to(args.device), images, args.scale)
        model.cpu()
    bic = rows["bicubic"]
    hardest = min(bic["per_image"], key=lambda r: r["psnr"])["image"]
    table = {}
    for name, r in rows.items():
        per = {row["image"]: row["psnr"] for row in r["per_image"]}
        table[name] = {"psnr": r["psnr"], "ssim": r["ssim"], "gain_over_bicubic": r["psnr"] - bic["psnr"],
                       "hardest_gain": per[hardest] - {x["image"]: x["psnr"] for x in bic["per_image"]}[hardest],
                       "by_source": _by_source(r["per_image"]), "per_image": r["per_image"]}
    teacher_key = chosen_teacher_stage(out)
    methods = {}
    teacher_psnr = table.get(teacher_key, {}).get("psnr")
    for method in METHODS:
        vals = [table[f"{method}_s{s}"]["psnr"] for s in args.seeds if f"{method}_s{s}" in table]
        if vals:
            methods[method] = {"mean": statistics.fmean(vals), "spread": max(vals) - min(vals), "n": len(vals), "psnr": vals,
                               "delta_vs_teacher": statistics.fmean(vals) - teacher_psnr if teacher_psnr else None}
    cost = {}
    size, repeats = ((64, 64), 3) if args.smoke else ((256, 256), 20)
    if teacher_key in models and f"dsclora_s{args.seeds[0]}" in models:
        pair = {"SPAN teacher": models[teacher_key].to(args.device), "DSCLoRA": models[f"dsclora_s{args.seeds[0]}"].to(args.device)}
        for name, model in pair.items():
            cost[name] = cost_report(model, runtime_size=size, repeats=repeats)
        rounds = interleaved_runtimes(pair, size, rounds=15, repeats=repeats)
        for name, ms in rounds.items():
            cost[name]["runtime_ms_interleaved"] = statistics.median(ms)
        cost["DSCLoRA"]["runtime_ratio_rounds"] = runtime_ratio(rounds, "DSCLoRA", "SPAN teacher")
    verdict = None
    if "dsclora" in methods and "continued" in methods:
        d, c = methods["dsclora"], methods["continued"]
        margin = d["mean"] - c["mean"]
        verdict = {"dsclora_minus_continued_db": margin, "twice_spread_db": 2 * max(d["spread"], c["spread"]), "seeds": min(d["n"], c["n"]),
                   "beats_by_more_than_twice_spread": min(d["n"], c["n"]) >= 2 and margin > 2 * max(d["spread"], c["spread"])}
    manifest = Path(args.data) / "manifest.json"
    sources = json.loads(manifest.read_text()).get("sources", []) if manifest.is_file() else []
    train_sources = [f"{x['name']} ({x['registry']} {x['package']} {x['version']})" for x in sources if x.get("role") in ("train", "extra")]
    report = {"command": "python3 bench/sr_gpu.py " + " ".join(sys.argv[1:]), "device": _device_name(args.device), "out": str(args.out),
              "results_dir": _repo_relative(args.results_dir),
              "data": str(args.data), "train_sources": train_sources, "scale": args.scale, "channels": args.channels, "runtime_input": list(size), "stages": stage,
              "finetunes": finetunes,
              "eval": table, "hardest_eval_photo": hardest, "methods": methods, "cost": cost, "verdict": verdict,
              "acceptance": {"teacher": teacher_key, "gain_over_bicubic_db": table.get(teacher_key, {}).get("gain_over_bicubic"),
                             "hardest_gain_db": table.get(teacher_key, {}).get("hardest_gain"), "target_gain_db": 3.0,
                             "target_hardest_db": 0.5}}
    results_dir = Path(args.results_dir)
    write_json(results_dir / "report.json", report)
    _plot(report, results_dir / "gains.png")
    for name, target in ((teacher_key, "span"), (f"dsclora_s{args.seeds[0]}", "dsclora")):
        if name in models:
            save_span(models[name].cpu(), results_dir / f"{target}_x{args.scale}.safetensors",
                      extra={"command": report["command"], "data": f"make-data train/ ({args.data})", "machine": report["device"],
                             "steps": (stage[teacher_key] or {}).get("steps") if target == "span" else (finetunes or {}).get("plan", {}).get("steps"),
                             "eval_psnr": table[name]["psnr"], "eval_ssim": table[name]["ssim"],
                             **({"teacher_psnr": table[teacher_key]["psnr"]} if target == "dsclora" else {})})
    write_text(Path(args.results_md), _markdown(report))
    write_json(_stage_json(out, "report"), {"written": [str(results_dir / "report.json"), str(args.results_md)]})
    return report


def _repo_relative(path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render_only(results_dir: Path, results_md: Path) -> None:
    """``--render-only``: the page again from ``results_dir/report.json`` alone (no data, no device)."""
    report = json.loads((results_dir / "report.json").read_text())
    report.update(results_dir=_repo_relative(results_dir), rendered_by="python3 bench/sr_gpu.py --render-only "
                  f"--results-dir {_repo_relative(results_dir)} --results-md {_repo_relative(results_md)}")
    write_text(results_md, _markdown(report))


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [n for n in report["eval"] if n != "bicubic"]
    gains = [report["eval"][n]["gain_over_bicubic"] for n in names]
    ax.barh(names, gains, color=["#888" if n.startswith("teacher") else "#36c" for n in names])
    ax.set_xlabel("mean Y-PSNR gain over bicubic (dB), evaluation photos")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path, dpi=110)


def _verdict_words(v: dict) -> str:
    margin, noise = v["dsclora_minus_continued_db"], v["twice_spread_db"]
    if v.get("seeds", 2) < 2:
        return "one seed only: no spread, so no verdict"
    if margin > noise:
        return "DSCLoRA beats continued SPAN training by more than twice the seed spread"
    if margin < -noise:
        return "DSCLoRA is worse than continued SPAN training by more than twice the seed spread"
    return "the difference is within twice the seed spread (noise)"


def _markdown(r: dict) -> str:
    ev, st = r["eval"], r["stages"]
    lines = ["# sr_dsclora: GPU run on real photographs (bench/sr_gpu.py)", "",
             f"<!-- Written by bench/sr_gpu.py from {r.get('out', 'runs/sr_gpu')}/*"
             + (f"; rendered again from its report.json by `{r['rendered_by']}`" if r.get("rendered_by") else "")
             + "; do not edit by hand. -->", "",
             f"Command: `{r['command']}` on {r['device']}. Training photos: `lowrank-sr make-data` train/ ("
             + (", ".join(r["train_sources"]) if r.get("train_sources") else "Endless Sky landscape photographs, Debian endless-sky-high-dpi")
             + "); choices on its val/; scores on its eval/ (Debian wallpaper photos and the "
             "scikit-image / scikit-learn photos: other sources, other files). x4, bicubic LR, Y-PSNR / Y-SSIM, border 4.", "",
             f"## Teacher (SPAN, {r['channels']} channels)", "", "| stage | loss | steps (planned) | seconds | weights (val) | cut short |", "|---|---|---|---|---|---|"]
    for name, s in st.items():
        if s and s.get("imported_from"):
            lines.append(f"| {name} | {s['loss']} | {s['steps']:,} in its own run (`{s['imported_from']}`) | - | raw "
                         f"({s['val_psnr_raw']:.3f} dB) | no |")
        elif s:
            lines.append(f"| {name} | {s['loss']} | {s['steps']:,} ({s['planned']:,}) | {s['seconds']:.0f} | {s['chosen']} "
                         f"({s['val_psnr_' + s['chosen']]:.3f} dB) | {'yes' if s['cut_short'] else 'no'} |")
        else:
            lines.append(f"| {name} | - | not run | - | - | - |")
    lines += ["", "## Evaluation photos", "", f"Heaviest-texture photo (lowest bicubic PSNR): `{r['hardest_eval_photo']}`.", "",
              "| model | Y-PSNR | Y-SSIM | gain over bicubic | gain on the heaviest-texture photo | wallpapers | bundled |", "|---|---|---|---|---|---|---|"]
    for name, row in ev.items():
        src = row["by_source"]
        lines.append(f"| {name} | {row['psnr']:.3f} | {row['ssim']:.4f} | {row['gain_over_bicubic']:+.3f} | {row['hardest_gain']:+.3f} | "
                     f"{src.get('Debian wallpapers', float('nan')):.3f} | {src.get('bundled (scikit-image, scikit-learn)', float('nan')):.3f} |")
    acc = r["acceptance"]
    if acc["gain_over_bicubic_db"] is not None:
        ok = acc["gain_over_bicubic_db"] >= 3.0 and acc["hardest_gain_db"] >= 0.5
        lines += ["", f"Acceptance ({acc['teacher']}): {acc['gain_over_bicubic_db']:+.2f} dB over bicubic (target +3.0), "
                  f"{acc['hardest_gain_db']:+.2f} dB on the heaviest-texture photo (target +0.5): **{'met' if ok else 'not met'}**."]
    if r["methods"]:
        lines += ["", "## Fine-tuning from the teacher, same steps", "", "| method | seeds | mean Y-PSNR | spread (max-min) | vs teacher |",
                  "|---|---|---|---|---|"]
        for m, v in r["methods"].items():
            dt = "-" if v["delta_vs_teacher"] is None else f"{v['delta_vs_teacher']:+.4f}"
            lines.append(f"| {m} | {v['n']} | {v['mean']:.4f} | {v['spread']:.4f} | {dt} |")
    lr_choice = (r.get("finetunes") or {}).get("lr_choice")
    if r["methods"] and lr_choice:
        n = next(iter(lr_choice.values()))["trials"][0]["steps"]
        lines += ["", f"Learning rates, chosen on the val photos (one run per rate, {n:,} steps, seed {LR_TRIAL_SEED}, which no "
                  "compared run uses; EMA or raw weights as for the compared runs):", "", "| method | lr → val Y-PSNR | chosen |", "|---|---|---|"]
        for m, c in lr_choice.items():
            tried = ", ".join(f"{t['lr']:.2g} → {t['val_psnr']:.4f}" + (" (cut short)" if t["cut_short"] else "") for t in c["trials"])
            lines.append(f"| {m} | {tried} | {c['lr']:.2g} |")
    elif r["methods"]:
        lines += ["", "Learning rates: stated choices (DSCLoRA 5e-4, continued and full 2e-4), not tuned in this run."]
    if r["verdict"]:
        v = r["verdict"]
        lines += ["", f"DSCLoRA minus continued SPAN: {v['dsclora_minus_continued_db']:+.4f} dB; twice the larger seed spread: "
                  f"{v['twice_spread_db']:.4f} dB -> **{_verdict_words(v)}**."]
    if r["cost"]:
        h, w = r["runtime_input"]
        lines += ["", f"| model | params | FLOPs (G, 256x256 LR) | convs | runtime ms (interleaved, {h}x{w} LR) |", "|---|---|---|---|---|"]
        for name, c in r["cost"].items():
            lines.append(f"| {name} | {c['params']:,} | {c['flops_g']:.2f} | {c['convs']} | {c['runtime_ms_interleaved']:.3f} |")
        t, d = r["cost"].get("SPAN teacher"), r["cost"].get("DSCLoRA")
        if t and d:
            same = t["params"] == d["params"] and t["flops_g"] == d["flops_g"]
            rr = d.get("runtime_ratio_rounds")
            ratio = rr["median"] if rr else d["runtime_ms_interleaved"] / t["runtime_ms_interleaved"]
            spread = f", per-round min–max {rr['min']:.3f}–{rr['max']:.3f} over {rr['rounds']} interleaved rounds" if rr else ""
            lines += ["", f"DSCLoRA / SPAN runtime: {ratio:.4f}{' (median of the per-round ratios' + spread + ')' if rr else ''} "
                      f"({'inside' if abs(ratio - 1) <= 0.03 else 'outside'} the ±3 % bar); "
                      f"parameters and FLOPs {'identical' if same else 'DIFFERENT'}."]
    cut = [n for n, s in st.items() if s and s["cut_short"]] + [n for n, v in ((r["finetunes"] or {}).get("runs") or {}).items() if v["cut_short"]]
    lines += ["", "Stages cut short: " + (", ".join(cut) if cut else "none") + f". Raw numbers: `{r.get('results_dir', 'docs/results/sr_gpu')}/report.json`; "
              f"per-stage JSON and resumable checkpoints under `{r.get('out', 'runs/sr_gpu')}/`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="runs/sr_gpu")
    p.add_argument("--data", default="runs/sr/make-data", help="folder written by lowrank-sr make-data (train/, val/, eval/)")
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--smoke", action="store_true", help="tiny CPU rehearsal: 24 training photos, 4 val, 4 eval, 8 channels, batch 4")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--channels", type=int, default=26)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr-patch", type=int, default=24, help="LR patch side (HR = scale x this; 24 -> 96-px HR crops)")
    p.add_argument("--lr-l1", type=float, default=1e-3)
    p.add_argument("--lr-l2", type=float, default=2e-4)
    p.add_argument("--lr-dsclora", type=float, default=5e-4)
    p.add_argument("--lr-full", type=float, default=2e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ft-steps", type=int, default=0, help="fine-tuning steps (0: from the measured step time)")
    p.add_argument("--ft-lr-factors", type=float, nargs="+", default=[0.25, 1.0, 4.0],
                   help="each fine-tune's lr is chosen on val among these multiples of --lr-dsclora / --lr-l2 / --lr-full "
                   "(one factor: no choice, the base rate)")
    p.add_argument("--teacher", default=None, help="a deployed SPAN (.safetensors) from an earlier run as the teacher: the teacher "
                   "stages are not run, the whole window goes to the fine-tunes (e.g. docs/results/sr_gpu/span_x4.safetensors)")
    p.add_argument("--teacher-loss", default="l2", choices=("l1", "l2"), help="with --teacher: the loss of the stage it came from "
                   "(what `continued` goes on with)")
    p.add_argument("--ckpt-s", type=float, default=60.0)
    p.add_argument("--results-md", default=None, help=f"default: {RESULTS_MD.relative_to(ROOT)}; with --teacher: "
                   f"{RESULTS_MD.with_name('sr_gpu_ft.md').relative_to(ROOT)} (with --smoke: OUT/report/sr_gpu.md)")
    p.add_argument("--results-dir", default=None, help=f"default: {RESULTS_DIR.relative_to(ROOT)}; with --teacher: "
                   f"{RESULTS_DIR.with_name('sr_gpu_ft').relative_to(ROOT)} (with --smoke: OUT/report/sr_gpu)")
    p.add_argument("--render-only", action="store_true", help="write the page again from --results-dir's report.json and stop")
    args = p.parse_args(argv)
    report_root = Path(args.out) / "report" if args.smoke else None  # a rehearsal never writes over the repo's results
    suffix = "_ft" if args.teacher else ""  # a fine-tune-only run never writes over the page of the run that trained its teacher
    args.results_md = args.results_md or str(report_root / "sr_gpu.md" if report_root else RESULTS_MD.with_name(f"sr_gpu{suffix}.md"))
    args.results_dir = args.results_dir or str(report_root / "sr_gpu" if report_root else RESULTS_DIR.with_name(f"sr_gpu{suffix}"))
    if args.render_only:
        render_only(Path(args.results_dir), Path(args.results_md))
        return 0
    if args.teacher and not Path(args.teacher).is_file():
        p.error(f"--teacher {args.teacher}: no such file (a deployed SPAN .safetensors)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is visible")
    if args.smoke:  # a tiny SPAN on small patches: every code path, not the numbers
        torch.set_num_threads(1)  # 2 threads on a shared, loaded CPU ran ~30x slower (OpenMP waits)
        args.batch, args.channels, args.lr_patch = min(args.batch, 4), min(args.channels, 8), min(args.lr_patch, 12)
    out, data = Path(args.out), Path(args.data)
    limit = (24, 4, 4) if args.smoke else (0, 0, 0)
    for sub in ("train", "val", "eval"):
        if not (data / sub).is_dir():
            p.error(f"--data {data} has no {sub}/ (run lowrank-sr make-data first)")
    budget = args.budget_s
    deadline = {s: _T0 + f * budget for s, f in DEADLINES.items()}
    sampler = PatchSampler(data / "train", args.scale, args.device, limit=limit[0])
    val = load_eval_set(str(data / "val"), args.scale)[: limit[1] or None]
    images = load_eval_set(str(data / "eval"), args.scale)[: limit[2] or None]
    print(f"data: {len(sampler.pairs)} train, {len(val)} val, {len(images)} eval photos ({time.time() - _T0:.1f} s)", flush=True)
    for stage in STAGES:
        if stage != "report" and _stage_json(out, stage).is_file():
            print(f"{stage}: done before, skipped", flush=True)
            continue
        t = time.time()
        if stage in ("teacher_l1", "teacher_l2"):
            if args.teacher:
                print(f"{stage}: not run (--teacher)", flush=True)
                continue
            if stage == "teacher_l2" and not _stage_json(out, "teacher_l1").is_file():
                print(f"{stage}: teacher_l1 unfinished, skipped", flush=True)
                continue
            s = stage_teacher(args, out, stage, sampler, val, deadline[stage])
            print(f"{stage}: {s['steps']}/{s['planned']} steps, val {s['val_psnr_' + s['chosen']]:.3f} dB ({s['chosen']}), "
                  f"{time.time() - t:.0f} s{' CUT SHORT' if s['cut_short'] else ''}", flush=True)
        elif stage == "finetunes":
            if args.teacher and not _stage_json(out, "teacher_import").is_file():
                s = stage_import_teacher(args, out, val)
                print(f"teacher: imported {args.teacher}, val {s['val_psnr_raw']:.3f} dB", flush=True)
            if not _teacher_path(out, args.scale).is_file() or not (_stage_json(out, "teacher_l2").is_file() or args.teacher):
                print(f"{stage}: teacher unfinished, skipped", flush=True)
                continue
            s = stage_finetunes(args, out, sampler, val, deadline[stage])
            print(f"{stage}: {len(s['runs'])} runs of {s['plan']['steps']} steps, complete={s['complete']}, {time.time() - t:.0f} s", flush=True)
        else:
            r = stage_report(args, out, images)
            print(f"report: {args.results_md} ({time.time() - t:.0f} s); total {time.time() - _T0:.0f} s", flush=True)
            print(json.dumps({k: v["psnr"] for k, v in r["eval"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
