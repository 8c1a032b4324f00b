"""PVD with and without the teacher buffer (``DistillConfig.teacher_cache_batches``): seconds and test PSNR.

    python3 bench/nerf_teacher_cache.py --device cpu --seeds 0 1 2 --steps 200      # here (2 CPU threads)
    python3 bench/nerf_teacher_cache.py --device cuda --seeds 0 1 2 --steps 600     # on a GPU

The shipped hash teacher (``plugins/nerf_pvd/weights/teacher_hash.safetensors``) is distilled into the default
``--student`` (TensoRF-VM unless named) on the default generated scene (64 px; test split: 8 views nothing was chosen on) under three
conditions, interleaved seed by seed so host noise hits all of them alike:

* ``plain``            the paper's loop: the teacher renders every step's fresh rays (``--steps`` steps);
* ``buffer``           the teacher renders ``--batches`` steps' rays at once and each ray is used ``--reuse`` times
                       (the same ``--steps`` steps: what the buffer costs in PSNR per step);
* ``buffer_same_time`` the buffer with as many steps as fit in ``plain``'s median seconds of the same seed
                       (what it buys at equal wall-clock).

Training seconds exclude evaluation. ``--batches``/``--reuse`` are not tuned here (no split is used to choose them);
the page says which were used. Writes ``docs/results/nerf_pvd_teacher_cache.md`` and ``.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from adapters import fmt_spread  # noqa: E402


def run_one(teacher, rig, test, device: str, steps: int, seed: int, batches: int, reuse: int, student: str = "tensorf_vm") -> dict:
    from lowrank_vision.plugins.nerf_pvd.config import SHORT_RUN_STAGE_FRACTIONS, cpu_distill_config
    from lowrank_vision.plugins.nerf_pvd.recipes import distill, evaluate

    cfg = cpu_distill_config(student, steps=steps, seed=seed, stage_fractions=SHORT_RUN_STAGE_FRACTIONS)
    cfg = replace(cfg, teacher_cache_batches=batches, teacher_cache_reuse=reuse, train=replace(cfg.train, progress=False))
    student, info = distill(teacher, rig, cfg, device)
    ev = evaluate(student, test, replace(cfg.render, background=rig.background), rig.background)
    return {"steps": info["steps"], "seconds": info["seconds"], "teacher_renders": info["teacher_renders"],
            "test_psnr": ev["psnr"], "test_ssim": ev["ssim"]}


def summary(rows: list[dict], key: str) -> str:
    """``median [min, max]`` of ``key`` over the seeds (``adapters.fmt_spread``)."""
    return fmt_spread([r[key] for r in rows])


def main(argv=None) -> int:
    from lowrank_vision.core.files import write_json, write_text
    from lowrank_vision.datasets.nerf import read_transforms
    from lowrank_vision.plugins.nerf_pvd.commands import default_scene
    from lowrank_vision.plugins.nerf_pvd.model import load_field
    from lowrank_vision.plugins.nerf_pvd.weights import shipped_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batches", type=int, default=16, help="steps' worth of rays the teacher renders at once")
    p.add_argument("--reuse", type=int, default=4, help="uses of each buffered ray")
    p.add_argument("--student", default="tensorf_vm", choices=("tensorf_vm", "mlp", "hash", "grid"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="default: docs/results/nerf_pvd_teacher_cache (a student other than "
                                                    "tensorf_vm: ..._<student>)")
    args = p.parse_args(argv)
    suffix = "" if args.student == "tensorf_vm" else f"_{args.student}"
    args.out = args.out or str(ROOT / "docs" / "results" / f"nerf_pvd_teacher_cache{suffix}")
    torch.set_num_threads(args.threads)
    teacher, _, rig, _ = load_field(shipped_checkpoint("teacher"), args.device)
    test = read_transforms(default_scene(), "test", rig.background)
    runs: dict[str, list[dict]] = {"plain": [], "buffer": [], "buffer_same_time": []}
    for seed in args.seeds:
        plain = run_one(teacher, rig, test, args.device, args.steps, seed, 0, 1, args.student)
        buffered = run_one(teacher, rig, test, args.device, args.steps, seed, args.batches, args.reuse, args.student)
        same_time = max(args.steps, round(args.steps * plain["seconds"] / buffered["seconds"]))
        runs["plain"].append(plain | {"seed": seed})
        runs["buffer"].append(buffered | {"seed": seed})
        same = run_one(teacher, rig, test, args.device, same_time, seed, args.batches, args.reuse, args.student)
        runs["buffer_same_time"].append(same | {"seed": seed})
        print({k: v[-1] for k, v in runs.items()}, flush=True)
    command = "python3 bench/nerf_teacher_cache.py " + " ".join(sys.argv[1:] if argv is None else argv)
    env = {"command": command, "device": args.device, "machine": f"{platform.machine()}, {args.threads} torch threads",
           "torch": torch.__version__, "batches": args.batches, "reuse": args.reuse, "student": args.student}
    speed = [p["seconds"] / b["seconds"] for p, b in zip(runs["plain"], runs["buffer"])]
    gain = [b["test_psnr"] - p["test_psnr"] for p, b in zip(runs["plain"], runs["buffer_same_time"])]
    loss = [b["test_psnr"] - p["test_psnr"] for p, b in zip(runs["plain"], runs["buffer"])]
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"env": env, "runs": runs, "speedup_same_steps": speed, "psnr_same_steps": loss,
                                          "psnr_same_time": gain})
    lines = ["# nerf_pvd: the teacher buffer (`DistillConfig.teacher_cache_batches`)", "",
             f"Written by `{command}` ({env['machine']}, {args.device}, torch {env['torch']}); raw: `{out.with_suffix('.json').name}`.", "",
             f"Shipped hash teacher -> default {args.student} student on the default generated scene (64 px); test PSNR/SSIM on its 8 test "
             f"views. Buffer: the teacher renders {args.batches} steps' rays at once, each ray used {args.reuse} times. "
             f"Seeds {args.seeds}, run seed by seed (plain, buffer, buffer at plain's time). Median [min, max] over seeds.", "",
             "| condition | steps | teacher renders | train s | test PSNR | test SSIM |", "|---|---|---|---|---|---|"]
    for name, rows in runs.items():
        lines.append(f"| {name} | {summary(rows, 'steps')} | {summary(rows, 'teacher_renders')} | {summary(rows, 'seconds')} | "
                     f"{summary(rows, 'test_psnr')} | {summary(rows, 'test_ssim')} |")
    lines += ["", f"- seconds, plain / buffer at the same steps: {statistics.median(speed):.2f}x [{min(speed):.2f}, {max(speed):.2f}]",
              f"- test PSNR, buffer - plain at the same steps: {statistics.median(loss):+.2f} dB [{min(loss):+.2f}, {max(loss):+.2f}]",
              f"- test PSNR, buffer - plain at the same seconds: {statistics.median(gain):+.2f} dB "
              f"[{min(gain):+.2f}, {max(gain):+.2f}]", ""]
    write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
