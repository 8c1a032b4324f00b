"""Acceptance run of multispectral_det (DLRMamba, issue 13): one GPU job inside a wall-clock budget.

    python3 bench/detect_gpu.py --device cuda --out runs/detect_gpu --budget-s 465 --exclusive   # the GPU run (every GPU stage)
    python3 bench/detect_gpu.py --stage lr_search --device cpu     # here, before: lr/optimizer chosen on val
    python3 bench/detect_gpu.py --stage cpu_latency --device cpu   # here, before: CPU latency (architecture only)
    python3 bench/detect_gpu.py --stage sad_check --device cpu     # here, before: SAD term scales, pairing, val check
    python3 bench/detect_gpu.py --smoke --device cpu --out /tmp/detect_smoke --budget-s 400   # CPU rehearsal

GPU stages (``<out>/<stage>/done.json``, and one ``<out>/<run>/done.json`` per trained model, written at once;
a finished stage or run is skipped when the script runs again):

1. ``data``      synthetic RGB+thermal set (:class:`SyntheticConfig` defaults), 1200 / 200 / 300 images at 256 px.
2. ``teacher``   the DLRMamba-n teacher (full-rank SS2D) trained to convergence: until its val mAP50 has not
                 improved by 0.005 for 3 epochs (:func:`plateau_stopper`), or its time cap (ultralytics' ``time=``,
                 which also fits the lr schedule to the cap), whichever comes first. Beside it, in their own
                 processes, plain ultralytics YOLOv8n on the same 4-channel data, seeds 0 and 1, for exactly the
                 students' epoch count (``--student-epochs``).
3. ``students``  the rank-0.5 student with structure-aware distillation (SAD) and the same student without it
                 (all alignment weights 0), seeds 0 and 1 each: four processes side by side, each for exactly
                 ``--student-epochs`` epochs (no time=, so every student has the same lr schedule). All four
                 start from the same weights: the converged teacher's, with every SS2D replaced by its truncated
                 SVD (DLRMamba's L_SVD aligns the student's factors with exactly these SVD factors, so the
                 student starts where the alignment points). The seed changes data order and augmentation only.
4. ``eval``      test mAP of any run not evaluated by its own process, params, GFLOPs at 640, GPU latency
                 (batch 1, 640, fp32, after every trainer has finished), ONNX export of the distilled student checked
                 in onnxruntime, then test mAP per condition while time is left.
5. ``report``    ``docs/results/detect.md`` + ``docs/results/detect/gpu_results.json`` + ``tradeoff.png``.

Two jobs instead of one, for a teacher trained longer than one job allows (each job <= 480 s):

    python3 bench/detect_gpu.py --device cuda --out runs/detect_gpu_teacher --budget-s 465 --teacher-only
        # data + the teacher alone with the whole budget -> docs/results/detect/teacher/{teacher.safetensors,teacher.json}
    python3 bench/detect_gpu.py --device cuda --out runs/detect_gpu --budget-s 465 --exclusive --student-epochs 10 \
        --teacher-weights docs/results/detect/teacher
        # the same data again (deterministic), that teacher imported and tested, students + YOLOv8n side by side, eval, report

More student seeds in a later job, from the committed run JSONs and teacher (the runs already done are kept):

    mkdir -p runs/detect_gpu && cp -r docs/results/detect/runs/. runs/detect_gpu/
    python3 bench/detect_gpu.py --device cuda --out runs/detect_gpu --budget-s 345 --exclusive --student-epochs 8 \
        --student-seeds 5 --students-s 190 --teacher-weights docs/results/detect/teacher

At most ``--max-side-by-side`` trainers (12) run at once; the rest wait for the next job of the same command. A run
that ultralytics had to train with a smaller batch than the recipe's (it halves the batch after a CUDA out-of-memory
error in the first epoch) is kept as done but marked ``excluded`` and never compared (session 11: 24 trainers at once
on the H200); ``--retrain-excluded`` trains such runs again. Pending runs that complete a seed pair go first.

Every trainer evaluates its best-val checkpoint on the test split itself as soon as it finishes. Time: after
``data``, the students get ``--students-s`` seconds and eval a fixed reserve; the teacher's cap is what is left.
A student still running at the deadline is stopped; then every student is compared at the last epoch all four
finished (``weights/epoch<i>.pt``, kept every epoch), and the report says so. Training wall times are not
acceptance numbers (the models train side by side).

Chosen on the validation split, never on test: the optimizer/lr (``lr_search``, run here on the CPU, its JSON
``docs/results/detect/lr_search.json`` read by the GPU run), each run's checkpoint (best val fitness), the
teacher's stopping epoch (val mAP50 plateau). The SAD weights are the paper's (1.0 / 0.5 / 0.1 / 1.5);
``--align-norm`` picks how each alignment term is scaled (:class:`DistillConfig.align_norm`); by default the one
``sad_check`` (run here on the CPU: term scales at the paper's weights, layer pairing, plain vs SAD on val) chose on
val, from ``docs/results/detect/sad_check.json``.

CPU latency (batch 1, 640 px, 2 threads) depends on the architecture only, so it is measured here
(``cpu_latency``) into ``docs/results/detect/cpu_latency.json``, which the report reads. The report can be written
again from the stage JSON alone: ``python3 bench/detect_gpu.py --stage report --out runs/detect_gpu``.

Offline and without polars: ``amp=False`` (ultralytics' AMP check downloads weights), ``plots=False``,
``YOLO_OFFLINE=1``, and every trainer is :func:`detection_trainer` (reads ``results.csv`` without polars).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
GPU_STAGES = ("data", "teacher", "students", "eval", "report")
LOCAL_STAGES = ("lr_search", "cpu_latency", "sad_check")
SEEDS = (0, 1)
"""YOLOv8n's seeds; the students' are ``--student-seeds`` (default the same two)."""


def _set_student_seeds(count: int, rank_ratio: float = 0.5, main_run: bool = True) -> None:
    """Run names per group and stage for ``count`` student seeds (0 .. count-1); YOLOv8n keeps :data:`SEEDS`.
    A run beside the main one (``main_run`` False: ``--rank-ratio`` other than 0.5 or ``--variant``) trains no YOLOv8n
    (it does not depend on the students), and the students' names say their rank."""
    global STUDENT_SEEDS, STUDENT_RANK, MAIN_RUN, GROUPS, STAGE_RUNS, RUNS
    STUDENT_SEEDS, STUDENT_RANK, MAIN_RUN = tuple(range(count)), rank_ratio, main_run
    NAMES.update(student_sad=f"student r={rank_ratio:g} + SAD", student_plain=f"student r={rank_ratio:g}, no distillation")
    GROUPS = {"teacher": ("teacher",), "yolov8n": tuple(f"yolov8n_s{s}" for s in SEEDS) if main_run else (),
              "student_sad": tuple(f"student_sad_s{s}" for s in STUDENT_SEEDS),
              "student_plain": tuple(f"student_plain_s{s}" for s in STUDENT_SEEDS)}
    STAGE_RUNS = {"teacher": ("teacher",) + GROUPS["yolov8n"], "students": GROUPS["student_sad"] + GROUPS["student_plain"]}
    RUNS = tuple(r for g in GROUPS.values() for r in g)


LR_CANDIDATES = (("AdamW", 0.0015), ("AdamW", 0.004), ("SGD", 0.01))
DEFAULT_LR = ("AdamW", 0.002)
DEFAULT_RANK_RATIO = 0.5
NAMES = {"teacher": "DLRMamba-n teacher (full-rank SS2D)", "yolov8n": "YOLOv8n (ultralytics), 4-ch"}
_set_student_seeds(len(SEEDS))
PLATEAU = {"patience": 3, "min_delta": 0.005}


def _stage_runs(args) -> dict[str, tuple[str, ...]]:
    """Runs per training stage: ``--teacher-only`` trains the teacher alone; with ``--teacher-weights`` the teacher
    stage only imports it and YOLOv8n trains beside the students."""
    if args.teacher_only:
        return {"teacher": ("teacher",)}
    if args.teacher_weights:
        return {"teacher": ("teacher",), "students": STAGE_RUNS["students"] + GROUPS["yolov8n"]}
    return STAGE_RUNS


def _group(run: str) -> str:
    """``teacher``, or the name before ``_s<seed>``."""
    return run.rsplit("_s", 1)[0] if "_s" in run else run


def _seed(run: str) -> int:
    return int(run.rsplit("_s", 1)[1]) if "_s" in run else 0


# ---------------------------------------------------------------- sizes


def _scale(args) -> dict:
    """Data and training sizes of the run (``--smoke``: a CPU rehearsal of every code path)."""
    from lowrank_vision.datasets.multispectral import SyntheticConfig

    if args.smoke:
        return {"data": SyntheticConfig(n_train=16, n_val=8, n_test=8, size=64), "imgsz": 64, "speed_imgsz": 64,
                "batch": 4, "workers": 0, "teacher_workers": 0, "overhead_s": 20.0, "eval_reserve_s": 70.0, "model": "dlrmamba-t",
                "eval_batch": 8}
    return {"data": SyntheticConfig(n_train=1200, n_val=200, n_test=300, size=256), "imgsz": 256, "speed_imgsz": 640,
            "batch": 32, "workers": 3, "teacher_workers": 5, "overhead_s": 35.0, "eval_reserve_s": 60.0, "model": "dlrmamba-n",
            "eval_batch": 32}


def _lr_choice(args) -> dict:
    path = Path(args.choices) / "lr_search.json"
    if path.is_file():
        found = json.loads(path.read_text())
        d = found["data"]
        scale = (f"candidates {[(r['optimizer'], r['lr0']) for r in found['runs']]} trained {found['epochs']} epochs each on "
                 f"{d['n_train']} images at {d['size']} px, batch {found['batch']}, on a CPU; the GPU run reuses the choice at its larger scale")
        return {"optimizer": found["chosen"]["optimizer"], "lr0": found["chosen"]["lr0"], "scale": scale,
                "source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
    return {"optimizer": DEFAULT_LR[0], "lr0": DEFAULT_LR[1], "source": "default (no lr_search.json: not chosen on val)"}


def _train_config(args, run: str, time_s: float | None = None):
    """Teacher: up to 300 epochs inside ``time_s`` (plateau stop); YOLOv8n and students: exactly ``--student-epochs``."""
    from lowrank_vision.plugins.multispectral_det.config import DetectTrainConfig

    sc, lr = _scale(args), _lr_choice(args)
    teacher = run == "teacher"
    return DetectTrainConfig(epochs=300 if teacher else args.student_epochs, imgsz=sc["imgsz"], batch=sc["batch"],
                             workers=sc["teacher_workers" if teacher else "workers"], optimizer=lr["optimizer"], lr0=lr["lr0"],
                             warmup_epochs=1.0, close_mosaic=2, mosaic=0.0 if args.smoke else 1.0, cache=True,
                             time_s=time_s if teacher else None, patience=1000, seed=_seed(run),
                             save_period=1 if _group(run).startswith("student") else -1)


# ---------------------------------------------------------------- stage bookkeeping


def _done(out: Path, stage: str):
    path = out / stage / "done.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _finish(out: Path, stage: str, result: dict) -> dict:
    from lowrank_vision.core.files import write_json

    write_json(out / stage / "done.json", result)
    return result


def _log(msg: str) -> None:
    print(f"[detect_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _val_curve(save_dir: Path) -> list[float]:
    """Val mAP50 after each finished epoch (ultralytics' ``results.csv``)."""
    from lowrank_vision.plugins.multispectral_det.ultralytics_host import read_results_csv

    table = Path(save_dir) / "results.csv"
    return [float(v) for v in read_results_csv(table.read_bytes()).get("metrics/mAP50(B)", [])] if table.is_file() else []


# ---------------------------------------------------------------- workers (own processes)


def _trainer_worker(run: str, args, time_s: float | None, threads: int) -> None:
    """Trains one model, evaluates its best checkpoint on test, writes ``<out>/<run>/done.json``."""
    import torch

    torch.set_num_threads(threads)
    from lowrank_vision.plugins.multispectral_det import model_yaml
    from lowrank_vision.plugins.multispectral_det.config import DistillConfig
    from lowrank_vision.plugins.multispectral_det.recipes import (batch_change_note, distill_student, evaluate, plateau_stopper,
                                                                  train_detector)

    out = Path(args.out)
    data_yaml = out / "data" / "set" / "data.yaml"
    cfg = _train_config(args, run, time_s)
    group = _group(run)
    t0 = time.time()
    if group == "teacher" and args.teacher_weights:
        _import_teacher(args)
        return
    if group in ("teacher", "yolov8n"):
        source = model_yaml(_scale(args)["model"]) if group == "teacher" else "yolov8n.yaml"
        stop = group == "teacher" and args.teacher_patience > 0
        callbacks = {"on_fit_epoch_end": plateau_stopper(**{**PLATEAU, "patience": args.teacher_patience})} if stop else None
        r = train_detector(source, data_yaml, cfg, out / "runs", run, args.device, callbacks=callbacks)
        r["recipe"] = asdict(cfg)
    else:
        teacher = _done(out, "teacher")
        if teacher is None:
            raise SystemExit(f"{run} needs the teacher first")
        dcfg = DistillConfig(rank_ratio=args.rank_ratio, align_norm=args.align_norm, train=cfg)
        if group == "student_plain":
            dcfg = replace(dcfg, w_svd=0.0, w_state=0.0, w_feat=0.0)
        r = distill_student(teacher["checkpoint"], data_yaml, dcfg, out / "runs", run, args.device)
        r["recipe"] = asdict(dcfg)
    train_s = time.time() - t0
    r["val_mAP50_per_epoch"] = _val_curve(Path(r["save_dir"]))
    if (note := batch_change_note(cfg.batch, r.get("batch_used", cfg.batch))) is not None:  # kept as done (not retrained), never compared
        r["excluded"] = note
    r["test"] = evaluate(r["checkpoint"], data_yaml, "test", imgsz=cfg.imgsz, batch=_scale(args)["eval_batch"], device=args.device)
    _finish(out, run, {**r, "seed": cfg.seed, "wall_s": train_s, "test_eval_s": time.time() - t0 - train_s,
                       "time_budget_s": time_s, "cut_short": False})


def _forget_teacher_without_checkpoint(args) -> None:
    """An imported teacher (``--teacher-weights``) whose checkpoint is not on this machine -- its JSON was carried in
    from ``docs/results/detect/runs`` -- is imported again."""
    teacher = _done(Path(args.out), "teacher")
    if args.teacher_weights and teacher and not Path(teacher["checkpoint"]).is_file():
        (Path(args.out) / "teacher" / "done.json").unlink()


def _stage_done(args, stage: str) -> bool:
    """A training stage is done when it finished before and every one of its runs is done, so a later job with more
    ``--student-seeds`` (or a run lost since) runs the missing runs only."""
    out = Path(args.out)
    return _done(out, f"{stage}_stage") is not None and all(_done(out, r) is not None for r in _stage_runs(args)[stage])


def _import_teacher(args) -> None:
    """``--teacher-weights``: the teacher an earlier ``--teacher-only`` job trained (same data config), evaluated on test."""
    from lowrank_vision.plugins.multispectral_det.recipes import evaluate
    from lowrank_vision.plugins.multispectral_det.weights import as_ultralytics_checkpoint

    out, src = Path(args.out), Path(args.teacher_weights)
    meta = json.loads((src / "teacher.json").read_text())
    data = json.loads(json.dumps(asdict(_scale(args)["data"])))  # tuples as the JSON's lists
    if meta["data"] != data:
        raise SystemExit(f"{src}: the teacher was trained on {meta['data']}, this run generates {data}")
    ckpt = as_ultralytics_checkpoint(src / "teacher.safetensors", out / "runs" / "teacher" / "weights" / "best.pt")
    test = evaluate(ckpt, out / "data" / "set" / "data.yaml", "test", imgsz=_scale(args)["imgsz"], batch=_scale(args)["eval_batch"],
                    device=args.device)
    _finish(out, "teacher", {**meta["teacher"], "checkpoint": str(ckpt), "test": test, "from_earlier_job": meta["command"],
                             "weights": str(src / "teacher.safetensors")})


def _export_teacher(args) -> dict:
    """``--teacher-only``: the trained teacher as fp16 safetensors + its run JSON, under the docs (what comes back)."""
    from lowrank_vision.core.files import write_json
    from lowrank_vision.plugins.multispectral_det.ultralytics_host import load_detection_model
    from lowrank_vision.plugins.multispectral_det.weights import save_weights

    out, dest = Path(args.out), Path(args.docs) / "teacher"
    done = _done(out, "teacher")
    if done is None:
        raise SystemExit("export_teacher: no trained teacher")
    save_weights(load_detection_model(done["checkpoint"]), dest / "teacher.safetensors", extra={"imgsz": _scale(args)["imgsz"]})
    cmd = (f"python3 bench/detect_gpu.py --device {args.device} --out {args.out} --budget-s {args.budget_s:.0f} --teacher-only"
           + f" --teacher-patience {args.teacher_patience}" + (" --smoke" if args.smoke else ""))
    meta = {"command": cmd, "data": asdict(_scale(args)["data"]), "teacher": {**done, "plateau_patience": args.teacher_patience}}
    write_json(dest / "teacher.json", meta)
    return {"weights": str(dest / "teacher.safetensors"), "json": str(dest / "teacher.json")}


def _data_worker(args) -> None:
    from lowrank_vision.datasets.multispectral import write_dataset

    out = Path(args.out)
    t0 = time.time()
    workers = 0 if args.smoke else min(8, max(1, (os.cpu_count() or 2) // 2))
    summary = write_dataset(out / "data" / "set", _scale(args)["data"], workers=workers)
    _finish(out, "data", {**summary, "seconds": time.time() - t0, "workers": workers})


def _in_child(student_seeds: int, rank_ratio: float, main_run: bool, target, *a) -> None:
    """A spawned process imports this module afresh (default seeds): give it this run's student seeds first."""
    _set_student_seeds(student_seeds, rank_ratio, main_run)
    target(*a)


def _spawn(target, *a) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=_in_child, args=(len(STUDENT_SEEDS), STUDENT_RANK, MAIN_RUN, target, *a))
    proc.start()
    return proc


def _epoch_checkpoints(out: Path, run: str) -> dict[int, str]:
    """``{finished epochs: path}`` of the ``weights/epoch<i>.pt`` a run kept (``i`` counts from 0)."""
    weights = out / "runs" / run / "weights"
    return {int(p.stem[5:]) + 1: str(p) for p in weights.glob("epoch*.pt") if p.stem[5:].isdigit()}


def _stop_cut_short(out: Path, run: str, time_s: float | None) -> None:
    """A trainer killed at its deadline: its best-val checkpoint so far (else last.pt), marked cut short."""
    weights = out / "runs" / run / "weights"
    ckpt = next((p for p in (weights / "best.pt", weights / "last.pt") if p.is_file()), None)
    if ckpt is not None:
        curve = _val_curve(out / "runs" / run)
        _finish(out, run, {"checkpoint": str(ckpt), "save_dir": str(out / "runs" / run), "cut_short": True, "time_budget_s": time_s,
                           "epochs_run": len(curve), "val_mAP50_per_epoch": curve, "seed": _seed(run),
                           "val_metrics": {"metrics/mAP50(B)": max(curve)} if curve else {}})


def pending_in_pair_order(runs: list[str], clean: Callable[[str], bool]) -> list[str]:
    """Runs to train, those that complete a seed pair with a clean finished run first, then by seed (SAD before
    plain): a job that cannot train every pending run still leaves the most complete pairs behind."""
    partner = {"student_sad": "student_plain", "student_plain": "student_sad"}

    def key(r: str) -> tuple:
        other = partner.get(_group(r))
        completes = other is not None and clean(f"{other}_s{_seed(r)}")
        return (not completes, _group(r) not in partner, _seed(r), _group(r) != "student_sad")

    return sorted(runs, key=key)


def _retrain_excluded(args) -> list[str]:
    """``--retrain-excluded``: a run kept as done but excluded (trained with another batch) is trained again; its
    record moves to ``<run>/excluded_before.json`` and its ultralytics folder is deleted."""
    import shutil

    out, again = Path(args.out), []
    for run in RUNS:
        done = _done(out, run)
        if done and done.get("excluded"):
            (out / run / "done.json").replace(out / run / "excluded_before.json")
            shutil.rmtree(out / "runs" / run, ignore_errors=True)
            again.append(run)
    return again


def _run_stage(args, stage: str, wall_s: float, teacher_time_s: float | None = None) -> dict:
    """Every run of ``stage`` not done yet, side by side in its own process; stopped at ``wall_s``."""
    out = Path(args.out)
    def finished_clean(run: str) -> bool:
        done = _done(out, run)
        return done is not None and not done.get("excluded")

    runs = pending_in_pair_order([r for r in _stage_runs(args)[stage] if _done(out, r) is None], finished_clean)
    if len(runs) > args.max_side_by_side:  # the rest are left for a later job of the same command
        _log(f"{stage}: {len(runs)} runs to train, {args.max_side_by_side} at most side by side (--max-side-by-side); "
             f"left for a later job: {runs[args.max_side_by_side:]}")
        runs = runs[:args.max_side_by_side]
    threads = 1 if args.smoke else 2
    _log(f"{stage}: {runs} side by side, wall {wall_s:.0f} s" + (f", teacher time= {teacher_time_s:.0f} s" if teacher_time_s else ""))
    procs = {r: _spawn(_trainer_worker, r, args, teacher_time_s if r == "teacher" else None, threads) for r in runs}
    deadline = time.time() + wall_s
    for r, p in procs.items():
        p.join(max(1.0, deadline - time.time()))
    for r, p in procs.items():
        if p.is_alive():
            p.terminate()
            p.join()
            _log(f"{r}: still running at the deadline, stopped")
            _stop_cut_short(out, r, teacher_time_s if r == "teacher" else None)
        elif _done(out, r) is None:
            _log(f"{r}: failed (exit code {p.exitcode})")
    return {r: _done(out, r) for r in _stage_runs(args)[stage]}


# ---------------------------------------------------------------- eval and report


def _gpu_latency(model, imgsz: int, device: str, repeats: int = 50) -> dict:
    import torch

    from lowrank_vision.plugins.multispectral_det.metrics import ExportWrapper

    m = ExportWrapper(model).to(device).eval()
    x = torch.rand(1, 4, imgsz, imgsz, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(10):
            m(x)
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(times, n=4)
    return {"median_ms": statistics.median(times), "q1_ms": q[0], "q3_ms": q[2], "repeats": repeats}


def _common_epoch(out: Path) -> dict | None:
    """When a student was cut short: the last epoch every student finished, and each one's checkpoint at it."""
    students = GROUPS["student_sad"] + GROUPS["student_plain"]
    if not any((_done(out, r) or {}).get("cut_short") for r in students):
        return None
    kept = {r: _epoch_checkpoints(out, r) for r in students}
    common = set.intersection(*(set(k) for k in kept.values())) if all(kept.values()) else set()
    if not common:
        return {"epoch": None, "checkpoints": {}}
    epoch = max(common)
    return {"epoch": epoch, "checkpoints": {r: kept[r][epoch] for r in students}}


def _eval(args) -> dict:
    import torch

    from lowrank_vision.core import count_parameters
    from lowrank_vision.core.files import write_json
    from lowrank_vision.plugins.multispectral_det.metrics import count_flops, export_onnx, onnx_max_difference
    from lowrank_vision.plugins.multispectral_det.recipes import evaluate, evaluate_by_condition
    from lowrank_vision.plugins.multispectral_det.ultralytics_host import load_detection_model

    out = Path(args.out)
    sc = _scale(args)
    data_yaml = out / "data" / "set" / "data.yaml"
    ev = {"test": {}, "architectures": {}}

    def save():  # what the report uses if eval is stopped at the deadline
        write_json(out / "eval" / "partial.json", ev)

    common = _common_epoch(out)
    ev["common_epoch"] = common
    for run in RUNS:  # runs whose own process did not evaluate them (cut short), or every student at the common epoch
        done = _done(out, run)
        if done is None:
            continue
        ckpt = (common or {}).get("checkpoints", {}).get(run)
        if ckpt is None and "test" in done:
            continue
        ev["test"][run] = evaluate(ckpt or done["checkpoint"], data_yaml, "test", imgsz=sc["imgsz"], batch=sc["eval_batch"], device=args.device)
        save()
    for arch, run in (("teacher", "teacher"), ("student", "student_sad_s0"), ("yolov8n", "yolov8n_s0")):
        done = _done(out, run)
        if done is None:
            continue
        model = load_detection_model(done["checkpoint"])
        row = {"run": run, "parameters": count_parameters(model)[1], **count_flops(model, sc["speed_imgsz"], 4)}
        if args.device.startswith("cuda") and torch.cuda.is_available():
            row["gpu_latency"] = _gpu_latency(model, sc["speed_imgsz"], args.device)
        ev["architectures"][arch] = row
        save()
        _log(f"eval {arch}: {row['parameters']:,} params, {row['gflops']:.2f} GFLOPs")
    if _done(out, "student_sad_s0") is not None:
        student = load_detection_model(_done(out, "student_sad_s0")["checkpoint"])
        onnx_path = export_onnx(student, out / "eval" / "student_sad.onnx", sc["imgsz"], 4)
        ev["onnx"] = {"path": str(onnx_path), "imgsz": sc["imgsz"], **onnx_max_difference(student, onnx_path, sc["imgsz"], 4)}
        save()
    ev["by_condition"] = {}
    for run in ("student_sad_s0", "student_plain_s0", "teacher", "yolov8n_s0"):  # last: what the deadline may cut
        if _done(out, run) is not None:
            ev["by_condition"][run] = evaluate_by_condition(_done(out, run)["checkpoint"], data_yaml, out / "eval" / "by_condition" / run,
                                                            "test", imgsz=sc["imgsz"], batch=sc["eval_batch"], device=args.device)
            save()
    return ev


def _eval_worker(args) -> None:
    _finish(Path(args.out), "eval", _eval(args))


def _test(run: str, ev: dict, runs: dict, key: str = "mAP50") -> float | None:
    """A run's test number: eval's (cut short, or every student at the common epoch) first, else its own process's."""
    if (runs.get(run) or {}).get("excluded"):
        return None
    t = ev.get("test", {}).get(run) or (runs.get(run) or {}).get("test")
    return None if t is None else t[key]


def _fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Student's t, 97.5 % quantile, 1..10 degrees of freedom (beyond: the Cornish-Fisher expansion in :func:`paired_interval`)."""


def paired_interval(diffs: list[float], reads: int = 1) -> Optional[tuple[float, float]]:
    """95 % t interval of the mean of paired differences (seed pairs); ``None`` for fewer than two pairs.

    ``reads`` > 1: the interval has been looked at that many times as seeds were added (this read included), so
    the level is Bonferroni-adjusted to 1 - 0.05 / reads (conservative for correlated looks). Beyond the table the t
    quantile is the Cornish-Fisher expansion of the normal one (within 0.01 of the exact t from 11 degrees of freedom
    on)."""
    n = len(diffs)
    if n < 2:
        return None
    df, z = n - 1, statistics.NormalDist().inv_cdf(1 - 0.025 / reads)
    if reads == 1 and df <= len(T975):
        t = T975[df - 1]
    else:
        t = z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    half = t * statistics.stdev(diffs) / math.sqrt(n)
    return statistics.fmean(diffs) - half, statistics.fmean(diffs) + half


def verdict_from_interval(ci: tuple[float, float]) -> Optional[bool]:
    """The distillation goal's verdict from the paired 95 % interval of the mean gain: ``True`` above 0, ``False`` below
    0, ``None`` (not decided) when it contains 0. Chosen in session 11, after the 6- and 12-pair reads had come back
    undecided and before the 24-pair run: looking again after each batch makes the nominal 95 % optimistic (the
    page says so). Until then the rule was "every SAD seed above every plain seed", which more seeds can only break."""
    lo, hi = ci
    return True if lo > 0 else False if hi < 0 else None


def sad_min_above_plain_max(groups: dict) -> bool:
    sad, plain = groups["student_sad"]["mAP50"], groups["student_plain"]["mAP50"]
    return bool(sad and plain and sad["min"] > plain["max"])


def _report(args) -> dict:
    from lowrank_vision.core.files import write_json, write_text
    from lowrank_vision.plugins.multispectral_det.metrics import plot_tradeoff

    out = Path(args.out)
    docs = Path(args.docs)
    ev = _done(out, "eval")
    partial = out / "eval" / "partial.json"
    eval_cut = ev is None
    ev = ev or (json.loads(partial.read_text()) if partial.is_file() else {"test": {}, "architectures": {}})
    runs = {r: _done(out, r) for r in RUNS}
    args.align_norm = next((runs[r]["align_norm"] for r in GROUPS["student_sad"] if (runs[r] or {}).get("align_norm")), args.align_norm)
    stage_json = {k: _done(out, k) for k in ("data", "teacher_stage", "students_stage")}
    cpu_path = docs / "cpu_latency.json"
    cpu = json.loads(cpu_path.read_text()) if cpu_path.is_file() else None
    lr = _lr_choice(args)
    common = ev.get("common_epoch")

    def test(run, key="mAP50"):
        return _test(run, ev, runs, key)

    groups = {}
    for g, members in GROUPS.items():
        vals = [test(r) for r in members if test(r) is not None]
        groups[g] = {"runs": [r for r in members if test(r) is not None], "mAP50": _spread(vals) if vals else None,
                     "mAP50-95": _spread([test(r, "mAP50-95") for r in members if test(r) is not None]) if vals else None}

    def mean(g):
        return groups[g]["mAP50"]["mean"] if groups[g]["mAP50"] else None

    checks = {"cpu_speedup_student_vs_teacher": cpu["speedup_student_vs_teacher"]["median"] if cpu else None}
    if mean("teacher") is not None and mean("student_sad") is not None:
        checks["mAP50_points_lost"] = 100 * (mean("teacher") - mean("student_sad"))
        checks["mAP50_points_lost_worst_seed"] = 100 * (mean("teacher") - groups["student_sad"]["mAP50"]["min"])
    verdict_gain = None
    if mean("student_sad") is not None and mean("student_plain") is not None:
        sad, plain = groups["student_sad"]["mAP50"], groups["student_plain"]["mAP50"]
        checks["distillation_gain_mAP50_points"] = 100 * (sad["mean"] - plain["mean"])

        def gain_per_pair(key):  # SAD minus plain, seed by seed, in points, where both were tested
            return [100 * (test(a, key) - test(b, key)) for a, b in zip(GROUPS["student_sad"], GROUPS["student_plain"])
                    if test(a, key) is not None and test(b, key) is not None]

        checks["distillation_gain_per_seed_points"] = per_pair = gain_per_pair("mAP50")
        if per_pair:  # the seeds both conditions have (a run lost or excluded leaves its pair out)
            checks["distillation_gain_mAP50_points"] = statistics.fmean(per_pair)
        checks["seed_spread_points"] = {"student_sad": 100 * (sad["max"] - sad["min"]), "student_plain": 100 * (plain["max"] - plain["min"])}
        checks["distillation_gain_paired_ci95_points"] = paired_interval(checks["distillation_gain_per_seed_points"])
        # Not the goal's metric (mAP50): the stricter box metric of the same pairs, reported beside it.
        checks["distillation_gain_mAP50_95_per_seed_points"] = per_95 = gain_per_pair("mAP50-95")
        checks["distillation_gain_mAP50_95_paired_ci95_points"] = paired_interval(per_95)
        checks["interval_reads"] = args.interval_reads
        checks["distillation_gain_paired_ci_adjusted_points"] = ci = paired_interval(per_pair, args.interval_reads)
        verdict_gain = verdict_from_interval(ci) if ci is not None else None
    goals = {"cpu_speedup_student_vs_teacher": (">= 1.6x", lambda v: v >= 1.6), "mAP50_points_lost": ("<= 3 (mean over seeds)", lambda v: v <= 3),
             "distillation_gain_mAP50_points": ("> 0: the paired t interval over seed pairs (95 %, adjusted for --interval-reads) above 0", None)}
    met = {k: (None if checks.get(k) is None else bool(f(checks[k]))) for k, (_, f) in goals.items() if f is not None}
    met["distillation_gain_mAP50_points"] = verdict_gain
    cut = [r for r in RUNS if (runs[r] or {}).get("cut_short")]
    results = {"eval": ev, "groups": groups, "checks": checks, "met": met, "smoke": args.smoke, "lr_choice": lr, "cpu_latency": cpu,
               "runs": runs, "stages": stage_json, "budget_s": args.budget_s, "student_epochs": args.student_epochs,
               "align_norm": args.align_norm, "exclusive": args.exclusive, "cut_short": cut, "eval_cut_short": eval_cut}
    docs.mkdir(parents=True, exist_ok=True)
    write_json(docs / "gpu_results.json", results)
    for stage_dir in sorted(out.iterdir()):  # every run's and stage's JSON, so a later job can carry on from the docs
        for name in ("done.json", "excluded_before.json"):
            if (stage_dir / name).is_file() and stage_dir.name != "data":
                write_json(docs / "runs" / stage_dir.name / name, json.loads((stage_dir / name).read_text()))
    png = None
    plotted = [g for g in GROUPS if mean(g) is not None]  # a run beside the main one trains no YOLOv8n
    if cpu and {"teacher", "student_sad", "student_plain"} <= set(plotted):
        rows = [{"name": NAMES[g] + (f" (mean of {groups[g]['mAP50']['n']})" if groups[g]["mAP50"]["n"] > 1 else ""), "mAP50": mean(g),
                 "latency_ms": cpu["models"]["student_sad" if g.startswith("student") else g]["median_ms"]} for g in plotted]
        png = plot_tradeoff(rows, docs / "tradeoff.png", "synthetic RGB+thermal, test split; CPU batch 1, 640 px, 2 threads")
    lines = _report_lines(args, ev, runs, groups, checks, met, goals, cpu, lr, stage_json, common, cut, eval_cut, png)
    write_text(Path(args.report), "\n".join(lines))
    return {"report": str(args.report), "png": str(png) if png else None, **checks, "met": met}


def _report_lines(args, ev, runs, groups, checks, met, goals, cpu, lr, stage_json, common, cut, eval_cut, png) -> list[str]:
    d = stage_json["data"] or {}
    dc = d.get("config", {})
    teacher = runs["teacher"] or {}
    cmd = (f"python3 bench/detect_gpu.py --device {args.device} --out {args.out} --budget-s {args.budget_s:.0f}"
           + f" --student-epochs {args.student_epochs}" + _beside_flags(args)
           + (f" --student-seeds {args.student_seeds}" if args.student_seeds != len(SEEDS) else "")
           + (f" --interval-reads {args.interval_reads}" if args.interval_reads != 1 else "")
           + (" --exclusive" if args.exclusive else "") + (" --smoke" if args.smoke else ""))
    model = _scale(args)["model"]
    lines = ["# multispectral_det (DLRMamba) results", ""]
    if args.smoke:
        lines += ["**Smoke rehearsal on a CPU (tiny data, seconds of training): the numbers only show that the pipeline runs.**", ""]
    plateau = teacher.get("plateau")
    t_stop = ("cut short at its time cap" if teacher.get("cut_short") else
              f"stopped at the val mAP50 plateau (best {plateau['best']:.3f} at epoch {plateau['best_epoch']}, no gain of "
              f"{PLATEAU['min_delta']} for {plateau.get('patience', PLATEAU['patience'])} epochs)" if plateau else
              f"stopped by its time cap ({_fmt(teacher.get('time_budget_s'), '.0f')} s, ultralytics' time=, lr schedule fitted to it) "
              + ("with the plateau stop off (`--teacher-patience 0`), so its lr decayed fully"
                 if teacher.get("plateau_patience") == 0 else "before its val mAP50 plateaued"))
    alone = "one job, nothing else on the GPU" if args.exclusive else "whether other jobs shared the GPU was not recorded (no --exclusive)"
    if args.teacher_weights:
        cmd += f" --teacher-weights {args.teacher_weights}"
    lines += [f"Written by `{cmd}` ({alone}) from its JSON (raw: `{Path(args.docs).name}/gpu_results.json`; each run's "
              f"own JSON in `{args.out}/<run>/done.json`).", "",
              "Protocol:", "",
              f"- Teacher ({model}, full-rank SS2D) trained until its val mAP50 plateaus or its time cap: {teacher.get('epochs_run', '?')} epochs, {t_stop}"
              + (f"; trained alone in an earlier GPU job (`{teacher['from_earlier_job']}`), its weights carried into this one "
                 "(same generated data)." if teacher.get("from_earlier_job") else "."),
              f"- Students: rank ratio {args.rank_ratio:g}, **{args.student_epochs} epochs each** (same lr schedule), seeds {list(STUDENT_SEEDS)} for each of "
              "'+ SAD' and 'no distillation'. **Both start from the same weights**: the converged teacher with every SS2D replaced "
              "by its truncated SVD (DLRMamba's L_SVD pulls the student's factors to exactly these SVD factors, so the paper's "
              "student starts there); the seed changes data order and augmentation only. SAD: DLRMamba's weights 1.0 / 0.5 / 0.1 / 1.5 "
              f"(task / SVD / state / feature), alignment terms scaled `{args.align_norm}` (`DistillConfig.align_norm`).",
              *_sad_check_lines(args),
              (f"- YOLOv8n (ultralytics, 4 input channels, from scratch): the students' {args.student_epochs} epochs, seeds {list(SEEDS)}."
               if GROUPS["yolov8n"] else "- YOLOv8n: not trained in this run (it does not depend on the students): see `detect.md`."),
              "- The students trained side by side in separate processes"
              + ("" if not GROUPS["yolov8n"] else " (and YOLOv8n beside them)" if args.teacher_weights
                 else " (as did YOLOv8n beside the teacher)")
              + "; a run whose "
              "`done.json` an earlier job of this command left is kept, not retrained, so seeds added later with "
              "`--student-seeds` trained in a later job with fewer processes beside them. Training wall times are therefore "
              "shared-GPU times and no acceptance number depends on them.",
              "", "Which data each number comes from:", "",
              f"- mAP: the **test split** ({dc.get('n_test', '?')} images) of the synthetic RGB+thermal generator "
              f"(`lowrank_vision.datasets.multispectral`, {dc.get('size', '?')} px, 4 channels; train "
              f"{dc.get('n_train', '?')}, val {dc.get('n_val', '?')}); test class counts (vehicle, person, vessel) "
              f"{d.get('class_counts', {}).get('test', '?')}.",
              "- val mAP50: the validation split, on which ultralytics picked each best checkpoint (best val fitness) and the "
              "teacher's stopping epoch was decided.",
              f"- optimizer / lr: {lr['optimizer']} lr0 {lr['lr0']} from `{lr['source']}` (chosen on val, never on test"
              + (f"; {lr['scale']}" if "scale" in lr else "") + "), the same for every run.",
              "- CPU latency: architecture only (batch 1, 640 px, 2 threads, fp32), measured on the development CPU by "
              f"`{cpu['command'] if cpu else 'python3 bench/detect_gpu.py --stage cpu_latency'}` (`{Path(args.docs).name}/cpu_latency.json`): median of "
              f"{cpu['rounds'] if cpu else '?'} interleaved rounds, with [min, max]"
              + (_cpu_load_note(cpu) if cpu and "load_average_1min_before_after" in cpu else "") + ".",
              "- GPU latency: batch 1, 640 px, fp32, on the H200 after all training had finished: median [q1, q3] of 50 calls.", ""]
    if common and common.get("epoch"):
        lines += [f"**A student was cut short at the deadline**: every student is compared at epoch {common['epoch']}, the last one all "
                  "four finished (their `epoch<i>.pt`), not at the best-val checkpoint.", ""]
    elif common:
        lines += ["**A student was cut short at the deadline before all four had finished one epoch**: each is compared at its own "
                  "last checkpoint, so the students below did not train for the same number of epochs.", ""]
    arch = ev.get("architectures", {})
    at = _scale(args)["speed_imgsz"]
    lines += [f"| model | params | GFLOPs @{at} (conv/matmul + scan) | CPU ms @{cpu['imgsz'] if cpu else '?'} median [min, max] | GPU ms @{at} |",
              "|---|---|---|---|---|"]
    for key, a, label in (("teacher", "teacher", NAMES["teacher"]), ("student_sad", "student", f"student r={args.rank_ratio:g} (both students)"),
                          ("yolov8n", "yolov8n", NAMES["yolov8n"])):
        c = cpu["models"][key] if cpu else None
        r = arch.get(a)
        g = (r or {}).get("gpu_latency")
        params = f"{r['parameters']:,}" if r else "-"
        lines.append(f"| {label} | {params} | "
                     + (f"{r['gflops']:.2f} + {r['scan_gflops']:.2f}" if r else "-") + " | "
                     + (f"{c['median_ms']:.0f} [{c['min_ms']:.0f}, {c['max_ms']:.0f}]" if c else "-") + " | "
                     + (f"{g['median_ms']:.2f} [{g['q1_ms']:.2f}, {g['q3_ms']:.2f}]" if g else "-") + " |")
    lines += ["", "Every run (test split; val mAP50 of its checkpoint; epochs run):", "",
              "| run | seed | test mAP50 | test mAP50-95 | val mAP50 | epochs | val mAP50 per epoch | train wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in RUNS:
        s = runs[r]
        if s is None:
            lines.append(f"| {NAMES[_group(r)]} | {_seed(r)} | not trained (run missing) | | | | | |")
            continue
        if s.get("excluded"):
            lines.append(f"| {NAMES[_group(r)]} | {s.get('seed', _seed(r))} | excluded: {s['excluded']} | | | | | |")
            continue
        curve = s.get("val_mAP50_per_epoch") or []
        ep = f"{s.get('epochs_run', '?')}" + (" (cut short)" if s.get("cut_short") else "")
        if (Path(args.out) / r / "excluded_before.json").is_file():
            ep += " (trained again: its first run was excluded)"
        val = (s.get("val_metrics") or {}).get("metrics/mAP50(B)")
        lines.append(f"| {NAMES[_group(r)]} | {s.get('seed', _seed(r))} | {_fmt(_test(r, ev, runs))} | {_fmt(_test(r, ev, runs, 'mAP50-95'))} | "
                     f"{_fmt(val)} | {ep} | {' '.join(f'{v:.2f}' for v in curve)} | {_fmt(s.get('wall_s'), '.0f')} |")
    lines += ["", "Per model (mean over seeds [min, max]):", "", "| model | seeds | test mAP50 | test mAP50-95 |", "|---|---|---|---|"]
    for g, v in groups.items():
        if not GROUPS[g]:  # not part of this run (YOLOv8n in a run beside the main one)
            continue
        m, m95 = v["mAP50"], v["mAP50-95"]
        if m is None:
            lines.append(f"| {NAMES[g]} | 0 | - | - |")
            continue
        lines.append(f"| {NAMES[g]} | {m['n']} | {_mean_range(m)} | {_mean_range(m95)} |")
    lines += ["", "Acceptance (issue 13):", ""]
    sp = cpu["speedup_student_vs_teacher"] if cpu else None
    v = checks.get("cpu_speedup_student_vs_teacher")
    lines.append(f"- CPU speed-up of the student over the teacher (median of per-round ratios): {_fmt(v, '.2f')}"
                 + (f" (per-round range {sp['min']:.2f}-{sp['max']:.2f})" if sp else "") + f"; goal >= 1.6x: {_verdict(met.get('cpu_speedup_student_vs_teacher'), v)}")
    v = checks.get("mAP50_points_lost")
    lines.append(f"- test mAP50 points lost by the distilled student (mean of its seeds) vs the teacher: {_fmt(v, '.2f')}"
                 + (f" (worst seed {checks['mAP50_points_lost_worst_seed']:.2f})" if v is not None else "")
                 + f"; goal <= 3: {_verdict(met.get('mAP50_points_lost'), v)}")
    v = checks.get("distillation_gain_mAP50_points")
    if v is None:
        lines.append("- distillation gain: not measured")
    else:
        per = ", ".join(f"{x:+.2f}" for x in checks["distillation_gain_per_seed_points"])
        spread = checks["seed_spread_points"]
        word = {True: "met (interval above 0)", False: "**MISSED** (interval below 0)",
                None: "**not decided** (interval contains 0)"}[met["distillation_gain_mAP50_points"]]
        lines.append(f"- test mAP50 points gained by distillation (mean over seed pairs of SAD - plain): {v:+.2f} (per seed pair {per}; seed spread "
                     f"SAD {spread['student_sad']:.2f}, plain {spread['student_plain']:.2f} points); goal: gain > 0, decided by the "
                     f"paired t interval of the mean gain over seed pairs (95 %, adjusted for every read): {word}")
        ci = checks.get("distillation_gain_paired_ci95_points")
        if ci:
            lines.append(f"  - paired over the {len(checks['distillation_gain_per_seed_points'])} seed pairs (same start, the seed changes data "
                         f"order and augmentation): 95 % t interval of the mean gain [{ci[0]:+.2f}, {ci[1]:+.2f}] points"
                         + (" (contains 0)" if ci[0] <= 0 <= ci[1] else " (excludes 0)"))
            reads, adj = checks.get("interval_reads", 1), checks.get("distillation_gain_paired_ci_adjusted_points")
            if reads > 1 and adj:
                lines.append(f"  - the verdict's interval: this is read {reads} of the interval as seeds were added (`--interval-reads`), "
                             f"so the level is Bonferroni-adjusted to {100 * (1 - 0.05 / reads):.2f} %: [{adj[0]:+.2f}, {adj[1]:+.2f}] points"
                             + (" (contains 0)" if adj[0] <= 0 <= adj[1] else " (excludes 0)"))
            lines.append("  - the interval rule was chosen after the 6- and 12-pair reads came back undecided (`verdict_from_interval`); "
                         "adding seeds after looking makes a nominal 95 % optimistic, hence the adjusted level above")
            lines.append(f"  - every SAD seed above every plain seed (the rule of sessions 8-10, strict past a few seeds): "
                         f"{'yes' if sad_min_above_plain_max(groups) else 'no'}")
        per_95, ci_95 = checks.get("distillation_gain_mAP50_95_per_seed_points"), checks.get("distillation_gain_mAP50_95_paired_ci95_points")
        if per_95 and ci_95:  # a second metric read after the fact: said as such, never a verdict
            lines.append(f"  - NOT the goal's metric, read beside it: test mAP50-95 points gained, per seed pair "
                         f"{', '.join(f'{x:+.2f}' for x in per_95)}; mean {sum(per_95) / len(per_95):+.2f}, paired 95 % t interval "
                         f"[{ci_95[0]:+.2f}, {ci_95[1]:+.2f}]" + (" (contains 0)" if ci_95[0] <= 0 <= ci_95[1] else " (excludes 0)"))
    if groups["yolov8n"]["mAP50"] and groups["student_sad"]["mAP50"] and cpu:
        lines.append(f"- YOLOv8n beside them ({args.student_epochs} epochs from scratch): test mAP50 {groups['yolov8n']['mAP50']['mean']:.3f} at "
                     f"{cpu['models']['yolov8n']['median_ms']:.0f} ms CPU (student + SAD: {groups['student_sad']['mAP50']['mean']:.3f} at "
                     f"{cpu['models']['student_sad']['median_ms']:.0f} ms).")
    if "onnx" in ev:
        lines.append(f"- ONNX export of the distilled student ({ev['onnx']['imgsz']} px): max |onnxruntime - PyTorch| = "
                     f"{ev['onnx']['max_abs_diff']:.2e} (outputs up to {ev['onnx']['max_abs_value']:.1f}).")
    if eval_cut:
        lines.append("- The eval stage did not finish inside the budget: what is missing above was not measured"
                     + ("" if "onnx" in ev else "; the ONNX check did not run") + ".")
    if cut:
        lines.append(f"- Cut short at the time budget (stopped): {', '.join(cut)}.")
    conds = ev.get("by_condition") or {}
    if conds:
        first = next(iter(conds.values()))
        keys = list(first)
        counts = ", ".join(f"{c} {first[c]['images']}" for c in keys)
        lines += ["", f"Test mAP50 by condition (seed 0 of each model; test images per condition: {counts}; an image can have several "
                  "conditions; `clear`: none of them):", "", "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for r, table in conds.items():
            lines.append(f"| {NAMES[_group(r)]} | " + " | ".join(f"{table[c]['mAP50']:.3f}" for c in keys) + " |")
    others = sorted(Path(args.report).parent.glob("detect_*.md")) if MAIN_RUN else []
    if others:  # runs beside this one, written by this script with --rank-ratio or --variant
        lines += ["", "The same comparison in runs beside this one (other student rank or protocol): "
                  + ", ".join(f"[{p.stem}]({p.name})" for p in others) + "."]
    if png:
        lines += ["", f"![mAP50 vs CPU latency]({Path(args.docs).name}/tradeoff.png)"]
    return lines + [""]


def _sad_check_lines(args) -> list[str]:
    """What ``--stage sad_check`` (CPU, before the GPU run) found, if its JSON is there."""
    path = Path(args.choices) / "sad_check.json"
    if not path.is_file():
        return [f"- `align_norm` {args.align_norm}: no `detect/sad_check.json` (not chosen on val)."]
    c = json.loads(path.read_text())
    sc = c["scales_at_svd_init"]

    def w(norm):
        return " / ".join(f"{sc[norm]['weighted'][k]:.2g}" for k in ("svd", "state", "feat"))

    val = ", ".join(f"{k} {v['best_val_mAP50']:.3f}" for k, v in c["val"].items())
    return [f"- SAD checked on the CPU first (`{c['command']}`, `detect/sad_check.json`; the shipped DLRMamba-t teacher, val mAP50 "
            f"{c['teacher_val_mAP50']:.3f}, {c['data']['n_train']} train / {c['data']['n_val']} val images at {c['data']['size']} px): at the "
            f"student's SVD initialisation the task loss is {sc['mse']['task_per_image']:.2f} per image and the weighted SVD / state / "
            f"feature terms are {w('mse')} as mean squares and {w('relative')} relative to the teacher's energy (the SVD term starts at 0 "
            f"by construction); best val mAP50 in {c['train']['epochs']} epochs: {val}; `align_norm` chosen on val: "
            f"{c['chosen_align_norm']}" + ("" if c["chosen_align_norm"] == args.align_norm else f" (this run used {args.align_norm})") + "."]


def _mean_range(x: dict) -> str:
    return f"{x['mean']:.3f} [{x['min']:.3f}, {x['max']:.3f}]" if x["n"] > 1 else f"{x['mean']:.3f}"


def _verdict(ok, value) -> str:
    return "not measured" if value is None else ("met" if ok else "**MISSED**")

# ---------------------------------------------------------------- local stages (run on the development CPU)


def _cpu_latency(args) -> dict:
    """Teacher, student and YOLOv8n from their YAMLs, batch 1, 640 px, 2 threads: interleaved rounds."""
    import platform

    import torch

    from lowrank_vision.plugins.multispectral_det import model_yaml
    from lowrank_vision.plugins.multispectral_det.metrics import ExportWrapper
    from lowrank_vision.plugins.multispectral_det.model import student_from_teacher
    from lowrank_vision.plugins.multispectral_det.ultralytics_host import register_ultralytics

    os.environ.setdefault("YOLO_OFFLINE", "1")
    register_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    torch.set_num_threads(2)
    imgsz, rounds = (64, 3) if args.smoke else (640, args.rounds)
    teacher = DetectionModel(model_yaml("dlrmamba-n"), ch=4, nc=3, verbose=False)
    models = {"teacher": teacher, "student_sad": student_from_teacher(teacher, args.rank_ratio),
              "yolov8n": DetectionModel("yolov8n.yaml", ch=4, nc=3, verbose=False)}
    models = {k: ExportWrapper(m.float().eval()) for k, m in models.items()}
    x = torch.rand(1, 4, imgsz, imgsz)
    times = {k: [] for k in models}
    order = list(models)
    load_before = os.getloadavg()
    with torch.inference_mode():
        for m in models.values():  # warm-up
            m(x)
        for r in range(rounds):
            for k in order[r % 3:] + order[:r % 3]:
                t0 = time.perf_counter()
                models[k](x)
                times[k].append((time.perf_counter() - t0) * 1000)
    ratios = [t / s for t, s in zip(times["teacher"], times["student_sad"])]
    summary = {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "runs_ms": v} for k, v in times.items()}
    summary["student_plain"] = summary["student_sad"]  # same architecture
    return {"command": "python3 bench/detect_gpu.py --stage cpu_latency --device cpu" + _beside_flags(args) + (" --smoke" if args.smoke else ""),
            "imgsz": imgsz, "threads": 2, "batch": 1, "rounds": rounds, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "models": summary,
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
            "speedup_student_vs_teacher": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                           "of_fastest_runs": min(times["teacher"]) / min(times["student_sad"])},
            "note": f"weights are untrained (latency does not depend on them); the student is student_from_teacher(teacher, {args.rank_ratio:g}), "
                    "the architecture the distilled and the plain student share; the rounds are interleaved and the median "
                    "reported so that other load on the machine hits every model alike"}


def _beside_flags(args) -> str:
    """The flags that name a run beside the main one (``--rank-ratio``, ``--variant``), as the commands on its page need them."""
    rank = "" if args.rank_ratio == DEFAULT_RANK_RATIO else f" --rank-ratio {args.rank_ratio:g}"
    return rank + (f" --variant {args.variant}" if args.variant else "")


def _cpu_load_note(cpu: dict) -> str:
    """What the load average says about the latency rounds: the load BEFORE them is other jobs' (the one after includes
    the rounds' own threads); busy above one running job per two cores."""
    before, after = cpu["load_average_1min_before_after"]
    load = f"1-min load average {before:.1f} before, {after:.1f} after"
    if before > cpu["cpu_count"] / 2:
        return (f"; that CPU ({cpu['cpu_count']} cores) was shared with other jobs ({load}), "
                "so absolute times are inflated and the per-round ratios spread")
    return f"; that CPU ({cpu['cpu_count']} cores) was otherwise quiet ({load})"


def _lr_search(args) -> dict:
    """Teacher trained with each candidate optimizer/lr on a small version of the data; best val mAP50 wins."""
    from lowrank_vision.datasets.multispectral import SyntheticConfig, write_dataset
    from lowrank_vision.plugins.multispectral_det import model_yaml
    from lowrank_vision.plugins.multispectral_det.config import DetectTrainConfig
    from lowrank_vision.plugins.multispectral_det.recipes import train_detector
    from lowrank_vision.plugins.multispectral_det.ultralytics_host import read_results_csv

    import torch

    torch.set_num_threads(2)
    work = Path(args.out) / "lr_search"
    data = SyntheticConfig(n_train=8, n_val=4, n_test=4, size=64) if args.smoke else SyntheticConfig(n_train=160, n_val=60, n_test=8, size=128)
    yaml = write_dataset(work / "data", data)["data_yaml"]
    epochs = 1 if args.smoke else args.lr_epochs
    runs = []
    for opt, lr0 in LR_CANDIDATES[:1] if args.smoke else LR_CANDIDATES:
        cfg = DetectTrainConfig(epochs=epochs, imgsz=data.size, batch=8, optimizer=opt, lr0=lr0, mosaic=0.0, warmup_epochs=1.0,
                                close_mosaic=0, cache=True)
        name = f"{opt}_{lr0:g}"
        table = work / "runs" / name / "results.csv"
        t0 = time.time()
        done = table.is_file() and len(read_results_csv(table.read_bytes()).get("epoch", [])) == epochs
        if not done:  # a candidate that finished all its epochs before is not trained again
            train_detector(model_yaml("dlrmamba-n"), yaml, cfg, work / "runs", name, "cpu")
        t = read_results_csv(table.read_bytes())
        loss = [sum(t[f"val/{k}_loss"][i] for k in ("box", "cls", "dfl")) for i in range(len(t["epoch"]))]
        runs.append({"optimizer": opt, "lr0": lr0, "val_mAP50": max(t["metrics/mAP50(B)"]),
                     "val_mAP50-95": max(t["metrics/mAP50-95(B)"]), "val_loss": min(loss), "val_loss_last": loss[-1],
                     "trained_now": not done, "train_seconds": t["time"][-1], "seconds_this_call": time.time() - t0})
        _log(f"lr_search {opt} {lr0}: val mAP50 {runs[-1]['val_mAP50']:.3f}, val loss {runs[-1]['val_loss']:.3f}")
    best = max(runs, key=lambda r: (round(r["val_mAP50"], 2), -r["val_loss"]))
    return {"command": "python3 bench/detect_gpu.py --stage lr_search --device cpu" + (" --smoke" if args.smoke else ""),
            "model": "dlrmamba-n", "data": asdict(data), "epochs": epochs, "batch": 8, "runs": runs,
            "chosen": {"optimizer": best["optimizer"], "lr0": best["lr0"]}, "per_epoch": f"{work}/runs/<candidate>/results.csv",
            "criterion": "validation split, per candidate over its epochs: highest val mAP50 (to 2 decimals), ties "
                         "broken by the lowest val loss (box + cls + dfl)"}


def _sad_check(args) -> dict:
    """SAD on the CPU at small scale, before any GPU time: the scale of each term at the paper's weights under both
    ``align_norm`` choices, which teacher/student layers and state modes are paired, and (on val) whether it helps."""
    import torch

    from lowrank_vision.datasets.multispectral import SyntheticConfig, write_dataset
    from lowrank_vision.datasets.multispectral.synthetic import render_scene
    from lowrank_vision.plugins.multispectral_det.config import DetectTrainConfig, DistillConfig
    from lowrank_vision.plugins.multispectral_det.distill import SADLoss
    from lowrank_vision.plugins.multispectral_det.model import ss2d_modules, student_from_teacher
    from lowrank_vision.plugins.multispectral_det.recipes import distill_student, evaluate
    from lowrank_vision.plugins.multispectral_det.weights import WEIGHTS_DIR, as_ultralytics_checkpoint, load_weights

    torch.set_num_threads(2)
    torch.manual_seed(0)
    work = Path(args.out) / "sad_check"
    data = SyntheticConfig(n_train=8, n_val=4, n_test=4, size=64) if args.smoke else SyntheticConfig(n_train=64, n_val=48, n_test=8, size=128)
    yaml = write_dataset(work / "data", data)["data_yaml"]
    shipped = WEIGHTS_DIR / "dlrmamba_t_teacher.safetensors"
    ckpt = as_ultralytics_checkpoint(shipped, work / "teacher.pt")
    teacher_val = evaluate(ckpt, yaml, "val", imgsz=data.size, batch=8)["mAP50"]

    # scales: one batch of 8 val images, student at its SVD initialisation, both models in eval mode (same BN statistics)
    from types import SimpleNamespace

    teacher = load_weights(shipped)
    teacher.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    scenes = [render_scene(data, "val", i) for i in range(8)]
    img = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im, _, _ in scenes])
    labels = [torch.from_numpy(lab) for _, lab, _ in scenes]
    batch = {"img": img, "cls": torch.cat([lb[:, :1] for lb in labels]), "bboxes": torch.cat([lb[:, 1:] for lb in labels]),
             "batch_idx": torch.cat([torch.full((len(lb),), float(i)) for i, lb in enumerate(labels)])}
    scales = {}
    for norm in ("mse", "relative"):
        cfg = DistillConfig(align_norm=norm)
        student = student_from_teacher(teacher, cfg.rank_ratio).eval()
        loss = SADLoss(student, teacher, cfg)
        task, _ = loss.task(student(img), batch)
        with torch.no_grad():
            teacher(img)
        terms = {k: float(v) for k, v in loss.alignment().items()}
        pairs = [{"student": f"{s.d_state} state modes, A_log {tuple(s.A_log.shape)}", "teacher": f"{t.d_state} state modes",
                  "states": [tuple(s.last_states.shape), tuple(t.last_states.shape)]} for s, t in loss.pairs]
        loss._clear()
        weights = {"svd": cfg.w_svd, "state": cfg.w_state, "feat": cfg.w_feat}
        scales[norm] = {"task_per_image": float(task.sum()) / len(img), "terms": terms,
                        "weighted": {k: weights[k] * v for k, v in terms.items()}}
    names = [n for n, _ in ss2d_modules(teacher)]

    # on val: the shipped teacher's students, plain vs SAD under each align_norm, same epochs, same init, same seed
    epochs = 1 if args.smoke else args.sad_epochs
    tr = DetectTrainConfig(epochs=epochs, imgsz=data.size, batch=8, mosaic=0.0, close_mosaic=0, warmup_epochs=0.5,
                           optimizer="AdamW", lr0=0.002, cache=True)
    variants = {"plain": DistillConfig(w_svd=0.0, w_state=0.0, w_feat=0.0, train=tr), "sad_mse": DistillConfig(train=tr),
                "sad_relative": DistillConfig(align_norm="relative", train=tr)}
    val = {}
    for name, cfg in variants.items():
        r = distill_student(ckpt, yaml, cfg, work / "runs", name, "cpu")
        val[name] = {"val_mAP50_per_epoch": _val_curve(Path(r["save_dir"])), "best_val_mAP50": max(_val_curve(Path(r["save_dir"])))}
        _log(f"sad_check {name}: val mAP50 per epoch {val[name]['val_mAP50_per_epoch']}")
    chosen = max(("mse", "relative"), key=lambda n: val[f"sad_{n}"]["best_val_mAP50"])
    return {"command": "python3 bench/detect_gpu.py --stage sad_check --device cpu" + (" --smoke" if args.smoke else ""),
            "teacher": f"{shipped.relative_to(ROOT) if shipped.is_relative_to(ROOT) else shipped} (the shipped DLRMamba-t teacher)",
            "teacher_val_mAP50": teacher_val, "data": asdict(data), "paired_layers": names, "pairs": pairs,
            "pairing": "student and teacher SS2D layers paired by module name (the same name, in module order, checked); the "
                       "state target is the teacher's first N_s modes, the ones the student's A_log, B and C rows were cut from",
            "scales_at_svd_init": scales, "train": asdict(tr), "val": val, "chosen_align_norm": chosen,
            "criterion": "best val mAP50 over the epochs, SAD variants only (the paper's weights unchanged)"}


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/detect_gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=465.0, help="wall clock of the whole run, every stage included")
    p.add_argument("--stage", default="all", choices=("all",) + GPU_STAGES + ("export_teacher",) + LOCAL_STAGES,
                   help="all: the GPU stages in order; lr_search / cpu_latency run on the development CPU")
    p.add_argument("--student-epochs", type=int, default=6, help="epochs of every student and of YOLOv8n")
    p.add_argument("--student-seeds", type=int, default=len(SEEDS),
                   help="seeds 0..N-1 of each student (a later job with a larger N trains only the seeds not yet done)")
    p.add_argument("--rank-ratio", type=float, default=DEFAULT_RANK_RATIO,
                   help="the students' SS2D rank ratio; other than 0.5 writes detect_rank<r>.md and detect_rank<r>/ beside the main "
                        "run's (same lr / SAD choices, read from detect/), and trains no YOLOv8n")
    p.add_argument("--variant", default=None,
                   help="name of a run beside the main one (e.g. rank0.25_ep3): writes detect_<variant>.md and detect_<variant>/, "
                        "trains no YOLOv8n (default: rank<r> for a --rank-ratio other than 0.5, else the main run)")
    p.add_argument("--students-s", type=float, default=175.0, help="wall clock of the students stage (the teacher gets the rest)")
    p.add_argument("--max-side-by-side", type=int, default=12,
                   help="trainers in one stage at once; more are left for a later job (session 11, H200: a student trainer "
                        "holds ~11.7 GB at batch 32, 256 px; 24 at once ran out of memory and ultralytics halved their batch)")
    p.add_argument("--align-norm", default=None, choices=("mse", "relative"),
                   help="DistillConfig.align_norm of the SAD students (default: the one sad_check chose on val, else mse)")
    p.add_argument("--teacher-only", action="store_true",
                   help="job 1 of two: data + the teacher alone with the whole budget, saved to <docs>/teacher/ (no students, no report)")
    p.add_argument("--teacher-patience", type=int, default=PLATEAU["patience"],
                   help="epochs without a val mAP50 gain of 0.005 before the teacher stops; 0: train to the time cap, so the "
                        "lr schedule (fitted to the cap) decays fully (job 1 of 2 on 2026-12-02 stopped at epoch 19 of ~40 "
                        "planned, at a still-high lr)")
    p.add_argument("--teacher-weights", default=None,
                   help="job 2 of two: the folder --teacher-only wrote (teacher.safetensors + teacher.json); YOLOv8n trains beside the students")
    p.add_argument("--interval-reads", type=int, default=1,
                   help="how many times the distillation gain's interval has been read as seeds were added, this one "
                        "included; the verdict uses the Bonferroni-adjusted level 1 - 0.05/N")
    p.add_argument("--retrain-excluded", action="store_true",
                   help="train again every run marked excluded (another batch than the recipe's); its record is kept "
                        "as <run>/excluded_before.json")
    p.add_argument("--exclusive", action="store_true", help="say in the report that nothing else ran on the GPU (the caller knows)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU rehearsal of every code path (writes under --out)")
    p.add_argument("--rounds", type=int, default=15, help="cpu_latency: interleaved rounds")
    p.add_argument("--lr-epochs", type=int, default=10, help="lr_search: epochs per candidate")
    p.add_argument("--sad-epochs", type=int, default=4, help="sad_check: epochs per student variant")
    args = p.parse_args(argv)
    if not 0.0 < args.rank_ratio < 1.0:
        p.error(f"--rank-ratio: expected a number in (0, 1), got {args.rank_ratio}")
    if args.variant is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", args.variant):
        p.error(f"--variant: expected lower-case letters, digits, '.', '_' or '-', got {args.variant!r}")
    if args.interval_reads < 1:
        p.error(f"--interval-reads: expected an int >= 1, got {args.interval_reads}")
    if args.max_side_by_side < 1:
        p.error(f"--max-side-by-side: expected an int >= 1, got {args.max_side_by_side}")
    beside = args.variant or (None if args.rank_ratio == DEFAULT_RANK_RATIO else f"rank{args.rank_ratio:g}")  # None: the main run
    _set_student_seeds(args.student_seeds, args.rank_ratio, main_run=beside is None)
    t_start = time.time()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    out = Path(args.out)
    args.choices = str(out / "docs" if args.smoke else ROOT / "docs" / "results" / "detect")  # lr_search, sad_check: the main run's
    extra = f"_{beside}" if beside else ""
    args.docs = str(Path(args.choices + extra))
    args.report = str(Path(args.choices).parent / f"detect{extra}.md")
    if args.align_norm is None:
        check = Path(args.choices) / "sad_check.json"
        args.align_norm = json.loads(check.read_text())["chosen_align_norm"] if check.is_file() else "mse"
    if args.stage in LOCAL_STAGES:
        from lowrank_vision.core.files import write_json

        result = {"cpu_latency": _cpu_latency, "lr_search": _lr_search, "sad_check": _sad_check}[args.stage](args)
        write_json(Path(args.docs) / f"{args.stage}.json", result)
        print(json.dumps({k: v for k, v in result.items() if k != "models"} | ({"models": {k: v["median_ms"] for k, v in result["models"].items()}} if "models" in result else {}), indent=1))
        return 0
    if (out / "pair_a" / "done.json").is_file():
        raise SystemExit(f"{out} holds stage JSON of the previous protocol (pair_a/pair_b): give a fresh --out")
    end = t_start + args.budget_s - 10
    sc = _scale(args)
    if args.teacher_only and args.teacher_weights:
        raise SystemExit("--teacher-only and --teacher-weights exclude each other")
    stages = ("data", "teacher", "export_teacher") if args.teacher_only else GPU_STAGES
    if args.retrain_excluded and args.stage in ("all", "students"):
        _log(f"--retrain-excluded: trained again: {_retrain_excluded(args) or 'none'}")
    for stage in stages if args.stage == "all" else (args.stage,):
        t0 = time.time()
        marker = f"{stage}_stage" if stage in STAGE_RUNS else stage
        if stage == "teacher":
            _forget_teacher_without_checkpoint(args)
        done = _stage_done(args, stage) if stage in STAGE_RUNS else _done(out, marker) is not None
        if stage != "report" and done:
            _log(f"{stage}: done before, skipped")
            continue
        if stage == "data":
            proc = _spawn(_data_worker, args)
            proc.join(max(60.0, end - time.time() - sc["eval_reserve_s"] - args.students_s - 60))  # the set takes ~20 s on the H200; a smaller share failed a job on 2026-12-02
            if proc.is_alive():
                proc.terminate()
            if _done(out, "data") is None:
                _log("data: failed")
                return 1
        elif stage == "export_teacher":
            _finish(out, marker, _export_teacher(args))
        elif stage in STAGE_RUNS:
            reserve = 25.0 if args.teacher_only else sc["eval_reserve_s"] + (args.students_s if stage == "teacher" else 0.0)
            wall = max(20.0, end - time.time() - reserve)
            res = _run_stage(args, stage, wall, teacher_time_s=max(5.0, wall - sc["overhead_s"]) if stage == "teacher" else None)
            if stage == "teacher" and res["teacher"] is None:
                _log("teacher: failed, the students cannot run")
                return 1
            _finish(out, marker, {"wall_s": time.time() - t0, "wall_budget_s": wall, "runs": {k: v is not None for k, v in res.items()}})
        elif stage == "eval":
            proc = _spawn(_eval_worker, args)
            proc.join(max(20.0, end - time.time() - 5))
            if proc.is_alive():
                proc.terminate()
                proc.join()
                _log("eval: stopped at the deadline (the report uses what it finished)")
        else:
            print(json.dumps(_report(args), indent=1))
        _log(f"{stage}: finished in {time.time() - t0:.0f} s (total {time.time() - t_start:.0f} s of {args.budget_s:.0f})")
    _log("all stages done" if args.stage == "all" else f"stage {args.stage} done")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
