"""Acceptance run of multispectral_det (DLRMamba, issue 13): one GPU run inside a wall-clock budget.

    python3 bench/detect_gpu.py --device cuda --out runs/detect_gpu --budget-s 480   # the GPU run (every GPU stage)
    python3 bench/detect_gpu.py --stage lr_search --device cpu     # here, before: lr/optimizer chosen on val
    python3 bench/detect_gpu.py --stage cpu_latency --device cpu   # here, before: CPU latency (architecture only)
    python3 bench/detect_gpu.py --smoke --device cpu --out /tmp/detect_smoke --budget-s 420   # CPU rehearsal

GPU stages (``<out>/<stage>/done.json`` written at once; a finished stage is skipped when run again):

1. ``data``     synthetic RGB+thermal set (:class:`SyntheticConfig` defaults: small objects, clutter, hot
                distractors, cold targets, night/fog/glare/crossover, IR noise and misregistration),
                1200 / 200 / 300 images at 256 px, rendered by parallel processes.
2. ``pair_a``   DLRMamba-n teacher (full-rank SS2D) and plain ultralytics YOLOv8n on the same 4-channel
                data, side by side on the GPU, each with a wall-clock budget (ultralytics' ``time=``
                resizes its epoch count and lr schedule to end on time).
3. ``pair_b``   the rank-0.5 student (SVD-initialised from the teacher) with structure-aware
                distillation, and the same student without it (all alignment weights 0), side by side.
4. ``eval``     test-split mAP50 / mAP50-95 (ultralytics' validator), params, GFLOPs at 640, GPU
                latency (batch 1, 640, fp32), ONNX export of the distilled student checked in onnxruntime,
                then test mAP per condition (night / fog / glare / crossover / clear) while time is left.
5. ``report``   ``docs/results/detect.md`` + ``docs/results/detect/gpu_results.json`` + ``tradeoff.png``.

Time: ``--budget-s`` is the wall clock of the whole run; after ``data`` the rest is split between the
two pairs, keeping a reserve for eval and report. A trainer still running at its pair's deadline is
stopped and reported as cut short (its last checkpoint evaluated).

Chosen on the validation split, never on test: ``lr_search`` (run here on the CPU, a small version of the
same data) trains the teacher with each candidate optimizer/lr and keeps the best val mAP50 (ties, as when
every candidate is still near 0 after a short CPU run, go to the lowest val loss); its JSON
``docs/results/detect/lr_search.json`` is read by the GPU run (all four trainers use that choice). Each
trainer keeps its best-val-fitness checkpoint (ultralytics). Distillation weights are the paper's.

CPU latency (batch 1, 640 px, 2 threads) depends on the architecture only, so it is measured here
(``cpu_latency``: teacher, student and YOLOv8n built from their YAMLs in one process, interleaved
rounds in rotating order, median and spread) into ``docs/results/detect/cpu_latency.json``, which
the report reads.

The report can be written again from the stage JSON alone (``<out>/<stage>/done.json``, small), e.g. after a
new ``cpu_latency`` measurement: ``python3 bench/detect_gpu.py --stage report --out runs/detect_gpu``.

Offline and without polars: ``amp=False`` (ultralytics' AMP check downloads weights), ``plots=False``,
``YOLO_OFFLINE=1``, and every trainer is :func:`detection_trainer` (reads ``results.csv`` without polars).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_STAGES = ("data", "pair_a", "pair_b", "eval", "report")
LOCAL_STAGES = ("lr_search", "cpu_latency")
TRAINED = ("teacher", "yolov8n", "student_sad", "student_plain")
PAIRS = {"pair_a": ("teacher", "yolov8n"), "pair_b": ("student_sad", "student_plain")}
LR_CANDIDATES = (("AdamW", 0.0015), ("AdamW", 0.004), ("SGD", 0.01))
DEFAULT_LR = ("AdamW", 0.002)
NAMES = {"teacher": "DLRMamba-n teacher (full-rank SS2D)", "student_sad": "student r=0.5 + SAD",
         "student_plain": "student r=0.5, no distillation", "yolov8n": "YOLOv8n (ultralytics), 4-ch"}


# ---------------------------------------------------------------- sizes


def _scale(args) -> dict:
    """Data and training sizes of the run (``--smoke``: a CPU rehearsal of every code path)."""
    from lowrank_vision.datasets.multispectral import SyntheticConfig

    if args.smoke:
        return {"data": SyntheticConfig(n_train=16, n_val=8, n_test=8, size=64), "imgsz": 64, "speed_imgsz": 64,
                "batch": 4, "workers": 0, "overhead_s": 25.0, "reserve_s": 60.0, "model": "dlrmamba-t"}
    return {"data": SyntheticConfig(n_train=1200, n_val=200, n_test=300, size=256), "imgsz": 256, "speed_imgsz": 640,
            "batch": 32, "workers": 4, "overhead_s": 30.0, "reserve_s": 65.0, "model": "dlrmamba-n"}


def _lr_choice(args) -> dict:
    path = Path(args.docs) / "lr_search.json"
    if path.is_file():
        found = json.loads(path.read_text())
        d = found["data"]
        scale = (f"candidates {[(r['optimizer'], r['lr0']) for r in found['runs']]} trained {found['epochs']} epochs each on "
                 f"{d['n_train']} images at {d['size']} px, batch {found['batch']}, on a CPU; the GPU run reuses the choice at its larger scale")
        return {"optimizer": found["chosen"]["optimizer"], "lr0": found["chosen"]["lr0"], "scale": scale,
                "source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
    return {"optimizer": DEFAULT_LR[0], "lr0": DEFAULT_LR[1], "source": "default (no lr_search.json: not chosen on val)"}


def _train_config(args, time_s: float | None = None):
    from lowrank_vision.plugins.multispectral_det.config import DetectTrainConfig

    sc, lr = _scale(args), _lr_choice(args)
    return DetectTrainConfig(epochs=300 if time_s else 1, imgsz=sc["imgsz"], batch=sc["batch"], workers=sc["workers"],
                             optimizer=lr["optimizer"], lr0=lr["lr0"], warmup_epochs=1.0, close_mosaic=2,
                             mosaic=0.0 if args.smoke else 1.0, cache=True, time_s=time_s, patience=1000)


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


# ---------------------------------------------------------------- workers (own processes)


def _trainer_worker(name: str, args, time_s: float, threads: int) -> None:
    """Trains one model to completion inside its time budget and writes ``<out>/<name>/done.json``."""
    import torch

    torch.set_num_threads(threads)
    from lowrank_vision.plugins.multispectral_det import model_yaml
    from lowrank_vision.plugins.multispectral_det.config import DistillConfig
    from lowrank_vision.plugins.multispectral_det.recipes import distill_student, train_detector

    out = Path(args.out)
    data_yaml = out / "data" / "set" / "data.yaml"
    cfg = _train_config(args, time_s)
    t0 = time.time()
    if name in ("teacher", "yolov8n"):
        source = model_yaml(_scale(args)["model"]) if name == "teacher" else "yolov8n.yaml"
        r = train_detector(source, data_yaml, cfg, out / "runs", name, args.device)
        r["recipe"] = asdict(cfg)
    else:
        teacher = _done(out, "teacher")
        if teacher is None:
            raise SystemExit(f"{name} needs the teacher first")
        dcfg = DistillConfig(rank_ratio=0.5, train=cfg)
        if name == "student_plain":
            dcfg = replace(dcfg, w_svd=0.0, w_state=0.0, w_feat=0.0)
        r = distill_student(teacher["checkpoint"], data_yaml, dcfg, out / "runs", name, args.device)
        r["recipe"] = asdict(dcfg)
    _finish(out, name, {**r, "wall_s": time.time() - t0, "time_budget_s": time_s, "cut_short": False})


def _data_worker(args) -> None:
    from lowrank_vision.datasets.multispectral import write_dataset

    out = Path(args.out)
    t0 = time.time()
    workers = 0 if args.smoke else min(8, max(1, (os.cpu_count() or 2) // 2))
    summary = write_dataset(out / "data" / "set", _scale(args)["data"], workers=workers)
    _finish(out, "data", {**summary, "seconds": time.time() - t0, "workers": workers})


def _spawn(target, *a) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=target, args=a)
    proc.start()
    return proc


def _stop_cut_short(out: Path, name: str, time_s: float) -> None:
    """A trainer killed at its deadline: report the checkpoint it left (best.pt, else last.pt) as cut short."""
    weights = out / "runs" / name / "weights"
    ckpt = next((p for p in (weights / "best.pt", weights / "last.pt") if p.is_file()), None)
    if ckpt is not None:
        _finish(out, name, {"checkpoint": str(ckpt), "cut_short": True, "time_budget_s": time_s, "val_metrics": {}})


def _run_pair(args, stage: str, wall_s: float) -> dict:
    out = Path(args.out)
    sc = _scale(args)
    time_s = max(5.0, wall_s - sc["overhead_s"])
    threads = max(1, min(4, (os.cpu_count() or 2) // 4))
    names = [n for n in PAIRS[stage] if _done(out, n) is None]
    _log(f"{stage}: {names} side by side, wall {wall_s:.0f} s each, ultralytics time= {time_s:.0f} s")
    procs = {n: _spawn(_trainer_worker, n, args, time_s, threads) for n in names}
    deadline = time.time() + wall_s + 15
    for n, p in procs.items():
        p.join(max(1.0, deadline - time.time()))
    for n, p in procs.items():
        if p.is_alive():
            p.terminate()
            p.join()
            _log(f"{n}: still running at the deadline, stopped")
            _stop_cut_short(out, n, time_s)
        elif _done(out, n) is None:
            _log(f"{n}: failed (exit code {p.exitcode})")
    return {n: _done(out, n) for n in PAIRS[stage]}


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
    rows = {}
    for name in TRAINED:
        done = _done(out, name)
        if done is None:
            rows[name] = {"missing": True}
            continue
        ckpt = done["checkpoint"]
        model = load_detection_model(ckpt)
        row = {"checkpoint": ckpt, "parameters": count_parameters(model)[1], **count_flops(model, sc["speed_imgsz"], 4)}
        row["test"] = evaluate(ckpt, data_yaml, "test", imgsz=sc["imgsz"], batch=32, device=args.device)
        if args.device.startswith("cuda") and torch.cuda.is_available():
            row["gpu_latency"] = _gpu_latency(model, sc["speed_imgsz"], args.device)
        rows[name] = row
        write_json(out / "eval" / "partial.json", rows)  # what the report uses if eval is stopped at the deadline
        _log(f"eval {name}: test mAP50 {row['test']['mAP50']:.3f}")
    if not rows["student_sad"].get("missing"):
        student = load_detection_model(rows["student_sad"]["checkpoint"])
        onnx_path = export_onnx(student, out / "eval" / "student_sad.onnx", sc["imgsz"], 4)
        rows["onnx"] = {"path": str(onnx_path), "imgsz": sc["imgsz"], **onnx_max_difference(student, onnx_path, sc["imgsz"], 4)}
        write_json(out / "eval" / "partial.json", rows)
    for name in ("student_sad", "teacher", "yolov8n", "student_plain"):  # last: what the deadline may cut
        if not rows[name].get("missing"):
            rows[name]["by_condition"] = evaluate_by_condition(rows[name]["checkpoint"], data_yaml, out / "eval" / "by_condition" / name,
                                                               "test", imgsz=sc["imgsz"], batch=32, device=args.device)
            write_json(out / "eval" / "partial.json", rows)
    return rows


def _eval_worker(args) -> None:
    _finish(Path(args.out), "eval", _eval(args))


def _val_map50(done: dict) -> float | None:
    v = (done or {}).get("val_metrics", {}).get("metrics/mAP50(B)")
    return None if v is None else float(v)


def _fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def _report(args) -> dict:
    from lowrank_vision.core.files import write_json, write_text
    from lowrank_vision.plugins.multispectral_det.metrics import plot_tradeoff

    out = Path(args.out)
    docs = Path(args.docs)
    ev = _done(out, "eval")
    partial = out / "eval" / "partial.json"
    eval_cut = ev is None
    ev = ev or (json.loads(partial.read_text()) if partial.is_file() else {})
    stages = {k: _done(out, k) for k in ("data",) + TRAINED}
    cpu_path = docs / "cpu_latency.json"
    cpu = json.loads(cpu_path.read_text()) if cpu_path.is_file() else None
    lr = _lr_choice(args)
    ok = {k: k in ev and not ev[k].get("missing", False) for k in TRAINED}

    def test(k, key="mAP50"):
        return ev[k]["test"][key] if ok[k] else None

    def cpu_ms(k):
        return cpu["models"][k]["median_ms"] if cpu else None

    checks = {"cpu_speedup_student_vs_teacher": cpu["speedup_student_vs_teacher"]["median"] if cpu else None}
    if ok["teacher"] and ok["student_sad"]:
        checks["mAP50_points_lost"] = 100 * (test("teacher") - test("student_sad"))
    if ok["student_sad"] and ok["student_plain"]:
        checks["distillation_gain_mAP50_points"] = 100 * (test("student_sad") - test("student_plain"))
    goals = {"cpu_speedup_student_vs_teacher": (">= 1.6x", lambda v: v >= 1.6), "mAP50_points_lost": ("<= 3", lambda v: v <= 3),
             "distillation_gain_mAP50_points": ("> 0", lambda v: v > 0)}
    met = {k: (None if checks.get(k) is None else bool(f(checks[k]))) for k, (_, f) in goals.items()}
    cut = [k for k in TRAINED if (stages[k] or {}).get("cut_short")]
    results = {"eval": ev, "checks": checks, "met": met, "smoke": args.smoke, "lr_choice": lr, "cpu_latency": cpu,
               "stages": stages, "budget_s": args.budget_s, "cut_short": cut, "eval_cut_short": eval_cut}
    docs.mkdir(parents=True, exist_ok=True)
    write_json(docs / "gpu_results.json", results)
    png = None
    if cpu and all(ok.values()):
        rows = [{"name": NAMES[k], "mAP50": test(k), "latency_ms": cpu_ms(k)} for k in TRAINED]
        png = plot_tradeoff(rows, docs / "tradeoff.png", "synthetic RGB+thermal, test split; CPU batch 1, 640 px, 2 threads")
    d = stages["data"] or {}
    dc = d.get("config", {})
    cmd = f"python3 bench/detect_gpu.py --device {args.device} --out {args.out} --budget-s {args.budget_s:.0f}" + (" --smoke" if args.smoke else "")
    lines = ["# multispectral_det (DLRMamba) results", ""]
    if args.smoke:
        lines += ["**Smoke rehearsal on a CPU (tiny data, seconds of training): the numbers only show that the pipeline runs.**", ""]
    lines += [f"Written by `{cmd}` from its stage JSON (raw: `detect/gpu_results.json`; each stage's own JSON in "
              f"`{args.out}/<stage>/done.json`). The GPU was **shared** with another job during the whole run, and "
              "the two models of each pair trained side by side on it, so wall-clock numbers are under load.", "",
              "Which data each number comes from:", "",
              f"- mAP: the **test split** ({dc.get('n_test', '?')} images) of the synthetic RGB+thermal generator "
              f"(`lowrank_vision.datasets.multispectral`, {dc.get('size', '?')} px, 4 channels; train "
              f"{dc.get('n_train', '?')}, val {dc.get('n_val', '?')}); test class counts (vehicle, person, vessel) "
              f"{d.get('class_counts', {}).get('test', '?')}.",
              "- val mAP50: the validation split, on which ultralytics picked each best checkpoint.",
              f"- optimizer / lr: {lr['optimizer']} lr0 {lr['lr0']} from `{lr['source']}` (chosen on val, never on test"
              + (f"; {lr['scale']}" if "scale" in lr else "") + "); "
              "distillation weights are DLRMamba's (1.0 / 0.5 / 0.1 / 1.5).",
              "- CPU latency: architecture only (batch 1, 640 px, 2 threads, fp32), measured on the development CPU by "
              "`python3 bench/detect_gpu.py --stage cpu_latency` (`detect/cpu_latency.json`): median of "
              f"{cpu['rounds'] if cpu else '?'} interleaved rounds, with [min, max]"
              + (_cpu_load_note(cpu) if cpu and "load_average_1min_before_after" in cpu else "")
              + ".",
              "- GPU latency: batch 1, 640 px, fp32, on the (shared) H200 of this run: median [q1, q3] of 50 calls.", ""]
    at = _scale(args)["speed_imgsz"]
    lines += [f"| model | params | GFLOPs @{at} (conv/matmul + scan) | test mAP50 | test mAP50-95 | val mAP50 | CPU ms @{cpu['imgsz'] if cpu else '?'} "
              f"median [min, max] | GPU ms @{at} | epochs run | train wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in TRAINED:
        s, r = stages[k] or {}, ev.get(k, {})
        c = cpu["models"][k] if cpu else None
        cpu_txt = f"{c['median_ms']:.0f} [{c['min_ms']:.0f}, {c['max_ms']:.0f}]" if c else "-"
        g = r.get("gpu_latency")
        gpu_txt = f"{g['median_ms']:.2f} [{g['q1_ms']:.2f}, {g['q3_ms']:.2f}]" if g else "-"
        if not ok[k]:
            lines.append(f"| {NAMES[k]} | not trained (stage missing) | | | | | {cpu_txt} | | | |")
            continue
        ep = f"{s.get('epochs_run', '?')}" + (" (cut short)" if s.get("cut_short") else "")
        lines.append(f"| {NAMES[k]} | {r['parameters']:,} | {r['gflops']:.2f} + {r['scan_gflops']:.2f} | {test(k):.3f} | "
                     f"{test(k, 'mAP50-95'):.3f} | {_fmt(_val_map50(s))} | {cpu_txt} | {gpu_txt} | {ep} | {_fmt(s.get('wall_s'), '.0f')} |")
    lines += ["", "Acceptance (issue 13):", ""]
    labels = {"cpu_speedup_student_vs_teacher": "CPU speed-up of the distilled student over the teacher (median of per-round ratios)",
              "mAP50_points_lost": "test mAP50 points lost by the distilled student vs the teacher",
              "distillation_gain_mAP50_points": "test mAP50 points gained by distillation (vs the same student without it)"}
    for k, (goal, _) in goals.items():
        v = checks.get(k)
        verdict = "not measured" if v is None else ("met" if met[k] else "**MISSED**")
        extra = ""
        if k == "cpu_speedup_student_vs_teacher" and cpu:
            sp = cpu["speedup_student_vs_teacher"]
            extra = f" (per-round range {sp['min']:.2f}-{sp['max']:.2f}"
            extra += f"; ratio of the fastest runs {sp['of_fastest_runs']:.2f})" if "of_fastest_runs" in sp else ")"
        lines.append(f"- {labels[k]}: {_fmt(v, '.2f')}{extra}; goal {goal}: {verdict}")
    if ok["yolov8n"] and ok["student_sad"] and cpu:
        lines.append(f"- YOLOv8n beside them: test mAP50 {test('yolov8n'):.3f} at {cpu_ms('yolov8n'):.0f} ms CPU "
                     f"(student + SAD: {test('student_sad'):.3f} at {cpu_ms('student_sad'):.0f} ms).")
    if "onnx" in ev:
        lines.append(f"- ONNX export of the distilled student ({ev['onnx']['imgsz']} px): max |onnxruntime - PyTorch| = "
                     f"{ev['onnx']['max_abs_diff']:.2e} (outputs up to {ev['onnx']['max_abs_value']:.1f}).")
    if eval_cut:
        lines.append("- The eval stage did not finish inside the budget: models without numbers above were not evaluated"
                     + ("" if "onnx" in ev else ", and the ONNX check did not run") + ".")
    if cut:
        lines.append(f"- Cut short at the time budget (stopped, last checkpoint evaluated): {', '.join(cut)}.")
    conds = [k for k in TRAINED if ok[k] and "by_condition" in ev[k]]
    if conds:
        keys = list(ev[conds[0]]["by_condition"])
        counts = ", ".join(f"{c} {ev[conds[0]]['by_condition'][c]['images']}" for c in keys)
        lines += ["", f"Test mAP50 by condition (test images per condition: {counts}; an image can have several conditions; "
                  "`clear`: none of them):", "", "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for k in conds:
            lines.append(f"| {NAMES[k]} | " + " | ".join(f"{ev[k]['by_condition'][c]['mAP50']:.3f}" for c in keys) + " |")
    lines += ["", "Every trainer had a wall-clock budget (ultralytics' `time=`), so the epoch counts are what fitted in "
              "the budget while sharing the GPU, not converged training; the comparison is between models given the "
              "same time, and the students start from the teacher's weights (SVD of its SS2D matrices), so they "
              "also had the teacher's training time before their own.", ""]
    if png:
        lines += ["![mAP50 vs CPU latency](detect/tradeoff.png)", ""]
    write_text(Path(args.report), "\n".join(lines))
    return {"report": str(args.report), "png": str(png) if png else None, **checks, "met": met}


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
    models = {"teacher": teacher, "student_sad": student_from_teacher(teacher, 0.5),
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
    return {"command": "python3 bench/detect_gpu.py --stage cpu_latency --device cpu" + (" --smoke" if args.smoke else ""),
            "imgsz": imgsz, "threads": 2, "batch": 1, "rounds": rounds, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "models": summary,
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
            "speedup_student_vs_teacher": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                           "of_fastest_runs": min(times["teacher"]) / min(times["student_sad"])},
            "note": "weights are untrained (latency does not depend on them); the student is student_from_teacher(teacher, 0.5), "
                    "the architecture the distilled and the plain student share; the rounds are interleaved and the median "
                    "reported so that other load on the machine hits every model alike"}


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


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/detect_gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall clock of the whole run, every stage included")
    p.add_argument("--stage", default="all", choices=("all",) + GPU_STAGES + LOCAL_STAGES,
                   help="all: the GPU stages in order; lr_search / cpu_latency run on the development CPU")
    p.add_argument("--smoke", action="store_true", help="tiny CPU rehearsal of every code path (writes under --out)")
    p.add_argument("--rounds", type=int, default=15, help="cpu_latency: interleaved rounds")
    p.add_argument("--lr-epochs", type=int, default=10, help="lr_search: epochs per candidate")
    args = p.parse_args(argv)
    t_start = time.time()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    out = Path(args.out)
    args.docs = str(out / "docs" if args.smoke else ROOT / "docs" / "results" / "detect")
    args.report = str(out / "docs" / "detect.md" if args.smoke else ROOT / "docs" / "results" / "detect.md")
    if args.stage in LOCAL_STAGES:
        from lowrank_vision.core.files import write_json

        result = _cpu_latency(args) if args.stage == "cpu_latency" else _lr_search(args)
        write_json(Path(args.docs) / f"{args.stage}.json", result)
        print(json.dumps({k: v for k, v in result.items() if k != "models"} | ({"models": {k: v["median_ms"] for k, v in result["models"].items()}} if "models" in result else {}), indent=1))
        return 0
    end = t_start + args.budget_s - 10
    sc = _scale(args)
    for stage in GPU_STAGES if args.stage == "all" else (args.stage,):
        t0 = time.time()
        if stage != "report" and _done(out, stage) is not None:
            _log(f"{stage}: done before, skipped")
            continue
        if stage == "data":
            proc = _spawn(_data_worker, args)
            proc.join(max(10.0, end - time.time() - 2 * sc["reserve_s"]))
            if proc.is_alive():
                proc.terminate()
            if _done(out, "data") is None:
                _log("data: failed")
                return 1
        elif stage in PAIRS:
            left = end - time.time() - sc["reserve_s"]
            wall = left / 2 if stage == "pair_a" and _done(out, "pair_b") is None else left
            res = _run_pair(args, stage, max(20.0, wall))
            _finish(out, stage, {"wall_s": time.time() - t0, "models": {k: v is not None for k, v in res.items()}})
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
