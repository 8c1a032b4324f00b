"""GPU acceptance of nerf_pvd: PVD distillation vs training from scratch on the default generated scene.

    python bench/nerf_pvd_gpu.py [--device cuda] [--out docs/results/nerf_pvd] [--tiny] [--only STAGE ...]

Stages (each writes ``<out>/<stage>.json`` and is skipped when that file exists, so an interrupted
run resumes; each is sized to stay well under 10 minutes on one H200):

* ``scene``            the default procedural scene (64 px, 40 train / 8 val / 8 test views);
* ``scratch_<kind>``   every field trained from scratch on the train images; the test PSNR is measured
                       every ``eval_every`` steps with the elapsed training time (evaluation time excluded);
                       ``scratch_hash`` is also the teacher of the PVD stages;
* ``pvd_<t>_to_<s>``   PVD from teacher ``t`` (a scratch checkpoint) into student ``s``, the same
                       PSNR-vs-time record: hash -> mlp, tensorf_vm, grid by default; every ordered pair of
                       different kinds (12) with ``--all-pairs``;
* ``report``           ``docs/results/nerf_pvd.md`` (table of every pair: final test PSNR/SSIM, time,
                       parameters, and the time the distilled student needed to reach the PSNR its
                       scratch-trained twin ends at, with the speed-up) + ``psnr_vs_time.png``.

Learning rates are the plugin's defaults (PVD's); nothing is tuned on the test split, which is only
measured. ``--tiny`` runs everything at toy size on the CPU (a check that the script works).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from lowrank_vision.core.files import save_figure, write_json, write_text
from lowrank_vision.datasets.nerf import SceneConfig, make_scene, read_transforms
from lowrank_vision.plugins.nerf_pvd.config import DistillConfig, FieldConfig, FitImagesConfig, RenderConfig
from lowrank_vision.plugins.nerf_pvd.model import load_field, save_field
from lowrank_vision.plugins.nerf_pvd.recipes import distill, evaluate, fit_images

KINDS = ("hash", "mlp", "tensorf_vm", "grid")
GPU_FIELDS = {  # paper-like sizes that fit the 64-px scene
    "hash": dict(hash_levels=16, hash_log2_table=19, hash_max_res=1024),
    "mlp": dict(mlp_width=256, mlp_depth=8),
    "tensorf_vm": dict(tensorf_resolution=128, tensorf_density_rank=16, tensorf_app_rank=48),
    "grid": dict(grid_resolution=128),
}


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(scene=SceneConfig(width=16, n_train=6, n_val=2, n_test=2), steps=12, distill_steps=12, rays=128,
                    eval_every=6, render=RenderConfig(n_coarse=8, n_fine=8), fields={k: {} for k in KINDS})
    return dict(scene=SceneConfig(), steps=6000, distill_steps=3000, rays=4096, eval_every=250,
                render=RenderConfig(n_coarse=64, n_fine=64), fields=GPU_FIELDS)


class TimedEval:
    """``eval_fn`` for :func:`fit`: test PSNR with the training time elapsed so far (its own time excluded)."""

    def __init__(self, test, render, background):
        self.test, self.render, self.background = test, render, background
        self.start, self.spent, self.curve = time.perf_counter(), 0.0, []

    def __call__(self, model):
        t0 = time.perf_counter()
        trained_for = t0 - self.start - self.spent
        ev = evaluate(model, self.test, self.render, self.background)
        self.spent += time.perf_counter() - t0
        self.curve.append({"seconds": round(trained_for, 3), "psnr": ev["psnr"], "ssim": ev["ssim"]})
        return {"test_psnr": ev["psnr"]}


def _train_cfg(base, steps, eval_every, device):
    return replace(base, max_steps=steps, eval_every=eval_every, progress=False, log_every=eval_every, cpu=device == "cpu")


def stage_scratch(kind, out, sz, device):
    scene = out / "scene"
    train, test = read_transforms(scene, "train"), read_transforms(scene, "test")
    base = FitImagesConfig()
    cfg = replace(base, field=FieldConfig(kind=kind, **sz["fields"][kind]), render=sz["render"], rays_per_step=sz["rays"],
                  train=_train_cfg(base.train, sz["steps"], sz["eval_every"], device))
    ev = TimedEval(test, sz["render"], 1.0)
    ev.start = time.perf_counter()
    field, info = fit_images(train, cfg, device, eval_fn=ev)
    final = evaluate(field, test, sz["render"])
    save_field(out / f"scratch_{kind}.safetensors", field, cfg.field, info["rig"], {"stage": f"scratch_{kind}"})
    return {"kind": kind, "params": info["params"], "steps": info["steps"], "train_seconds": round(info["seconds"] - ev.spent, 2),
            "test_psnr": final["psnr"], "test_ssim": final["ssim"], "curve": ev.curve}


def stage_pvd(teacher_kind, student_kind, out, sz, device):
    teacher, _, rig, _ = load_field(out / f"scratch_{teacher_kind}.safetensors", device)
    test = read_transforms(out / "scene", "test")
    base = DistillConfig()
    steps = sz["distill_steps"]
    cfg = replace(base, student=FieldConfig(kind=student_kind, **sz["fields"][student_kind]), render=sz["render"],
                  rays_per_step=sz["rays"], stage1_iters=round(steps * 2000 / 30000), stage2_iters=round(steps * 5000 / 30000),
                  train=_train_cfg(base.train, steps, sz["eval_every"], device))
    ev = TimedEval(test, sz["render"], rig.background)
    student, info = distill(teacher, rig, cfg, device, eval_fn=ev)
    final = evaluate(student, test, sz["render"], rig.background)
    return {"teacher": teacher_kind, "student": student_kind, "params": info["params"], "steps": info["steps"],
            "train_seconds": round(info["seconds"] - ev.spent, 2), "test_psnr": final["psnr"], "test_ssim": final["ssim"],
            "stage_steps": {str(k): v for k, v in info["stage_steps"].items()}, "curve": ev.curve}


def time_to_reach(curve, target):
    return next((p["seconds"] for p in curve if p["psnr"] >= target), None)


def stage_report(out, sz, device, docs_md):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scratch = {k: json.loads((out / f"scratch_{k}.json").read_text()) for k in KINDS if (out / f"scratch_{k}.json").is_file()}
    missing = [f"scratch_{k}" for k in KINDS if k not in scratch]
    missing += [f.stem for f in [out / f"pvd_{t}_to_{s}.json" for t in KINDS for s in KINDS if t != s] if not f.is_file()
                and f.stem in {"pvd_hash_to_mlp", "pvd_hash_to_tensorf_vm", "pvd_hash_to_grid"}]
    rows = ["| teacher → student | params | steps | train s | test PSNR | test SSIM | scratch PSNR | scratch s | "
            "s to reach scratch PSNR | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in scratch:
        s = scratch[k]
        rows.append(f"| scratch {k} | {s['params']:,} | {s['steps']} | {s['train_seconds']:.1f} | {s['test_psnr']:.2f} | "
                    f"{s['test_ssim']:.3f} | – | – | – | – |")
    fig, axes = plt.subplots(1, len(KINDS), figsize=(4 * len(KINDS), 3.2), squeeze=False)
    for j, stu in enumerate(KINDS):
        ax = axes[0][j]
        if stu in scratch:
            ax.plot([p["seconds"] for p in scratch[stu]["curve"]], [p["psnr"] for p in scratch[stu]["curve"]], "k-", label="scratch")
        for tea in KINDS:
            f = out / f"pvd_{tea}_to_{stu}.json"
            if tea == stu or not f.is_file():
                continue
            r = json.loads(f.read_text())
            twin = scratch.get(stu)
            reach = time_to_reach(r["curve"], twin["test_psnr"]) if twin else None
            if twin is None:
                target_s, twin_s, speed = "–", "–", "no scratch twin run"
            else:
                target_s, twin_s = f"{twin['test_psnr']:.2f}", f"{twin['train_seconds']:.1f}"
                speed = f"{twin['train_seconds'] / reach:.1f}×" if reach else "not reached"
            rows.append(f"| {tea} → {stu} | {r['params']:,} | {r['steps']} | {r['train_seconds']:.1f} | {r['test_psnr']:.2f} | "
                        f"{r['test_ssim']:.3f} | {target_s} | {twin_s} | {'–' if reach is None else f'{reach:.1f}'} | {speed} |")
            ax.plot([p["seconds"] for p in r["curve"]], [p["psnr"] for p in r["curve"]], label=f"PVD from {tea}")
        ax.set_title(stu)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("test PSNR (dB)")
        ax.legend(fontsize=7)
    save_figure(fig, out / "psnr_vs_time.png")
    md = ("# nerf_pvd: PVD vs training from scratch\n\n"
          f"Made by `python bench/nerf_pvd_gpu.py --device {device} --out {out}` (this file and the JSON beside it are "
          "written by that command).\n\nData: the default generated scene (`lowrank_vision.datasets.nerf.procedural`, "
          f"{sz['scene'].width} px, {sz['scene'].n_train} train / {sz['scene'].n_test} test views). Scratch fields train on "
          "the train images; PVD students see only their teacher (random poses within the teacher's camera rig); every "
          "PSNR/SSIM is on the test split, which no run trains on or tunes on. Times exclude evaluation. The teacher of "
          "`t → s` is the scratch-trained `t`. \"s to reach scratch PSNR\" is the first evaluation at which the distilled "
          "student's test PSNR reaches the final PSNR of the same architecture trained from scratch; speed-up = scratch "
          "training time / that time (the paper reports 10-20x for hash → MLP).\n\n" + "\n".join(rows)
          + ("\n\nStages not run (yet): " + ", ".join(f"`{m}`" for m in missing) + "." if missing else "")
          + "\n\n![PSNR vs time](nerf_pvd/psnr_vs_time.png)\n")
    if docs_md is not None:
        write_text(docs_md, md)
    return {"rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="docs/results/nerf_pvd")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU, to check the script")
    p.add_argument("--only", nargs="*", help="run only these stages (names as in the docstring)")
    p.add_argument("--all-pairs", action="store_true", help="every ordered teacher -> student pair, not only hash -> *")
    a = p.parse_args(argv)
    out = Path(a.out)
    sz = sizes(a.tiny)
    if not (out / "scene" / "transforms.json").is_file():
        make_scene(out / "scene", sz["scene"])
    stages = [(f"scratch_{k}", lambda k=k: stage_scratch(k, out, sz, a.device)) for k in KINDS]
    stages += [(f"pvd_{t}_to_{s}", lambda t=t, s=s: stage_pvd(t, s, out, sz, a.device)) for t, s in itertools.permutations(KINDS, 2)
               if a.all_pairs or t == "hash"]
    docs_md = None if a.tiny else out.parent / "nerf_pvd.md"
    if a.only:  # in the order given, so the teacher and the pairs that matter most run first
        by_name = dict(stages)
        stages = [(n, by_name[n]) for n in a.only if n in by_name]
    for name, run in stages:
        if (out / f"{name}.json").is_file():
            continue
        t0 = time.perf_counter()
        print(f"[nerf_pvd_gpu] {name} ...", flush=True)
        write_json(out / f"{name}.json", run() | {"stage": name, "device": a.device})
        print(f"[nerf_pvd_gpu] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    if any(out.glob("scratch_*.json")) or any(out.glob("pvd_*.json")):  # the report covers whatever has run
        rows = stage_report(out, sz, a.device, docs_md)["rows"]
        print("\n".join(rows))
        if docs_md is None:
            write_text(out / "report.md", "\n".join(rows) + "\n")


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    main()
