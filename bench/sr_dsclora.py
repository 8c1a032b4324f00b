"""SPAN -> DSCLoRA benchmark in the NTIRE ESR style (PSNR/SSIM on Y, params, FLOPs, runtime).

Runs the same recipes as ``lowrank-sr``: train SPAN (teacher), fine-tune it with DSCLoRA, and, as a
control, fine-tune every SPAN parameter for the same number of steps; then scores the three on
the bundled evaluation photos (or ``--eval-dir``) and measures cost on the device.

GPU run (one H200). Measured: with ``--teacher-steps 6000 --ft-steps 2000`` the teacher took 216 s and
DSCLoRA 70 s at x4 (177 s / 58 s at x2), plus the control run and scoring (docs/results/sr.md); the
preset's full 20,000 / 5,000 steps have not been run (about 3.3x longer, split it with the checkpoints):

    python bench/sr_dsclora.py --preset gpu --teacher-steps 6000 --ft-steps 2000 --out runs/sr/bench_gpu

CPU smoke run (a few minutes):

    python bench/sr_dsclora.py --preset cpu --out runs/sr/bench_cpu

With ``--checkpoint-every N`` (default 1000 for ``gpu``) each of the three training runs checkpoints
under OUT/{teacher,dsclora,control}_run and a second call with the same arguments continues where the
first stopped (finished runs are only reloaded), so the benchmark can be split across time-limited jobs.

``--data DIR`` trains on a folder of HR images (e.g. DIV2K_train_HR) instead of the bundled
train photos. Writes ``bench.json`` and ``bench.md`` (a table for docs/results/sr.md) and the two
checkpoints; ``--ship`` also copies them into the package's ``weights/`` folder and rewrites its card
(``weights/README.md``) from their metadata.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from lowrank_vision.core.files import atomic_path, write_json, write_text
from lowrank_vision.datasets.images import BUNDLED_SPLIT, load_eval_set
from lowrank_vision.plugins.sr_dsclora.config import DSCLoRAConfig, SRTrainConfig, sr_train_defaults
from lowrank_vision.plugins.sr_dsclora.recipes import (
    compare_runtime,
    cost_report,
    evaluate,
    finetune_dsclora,
    finetune_full,
    train_span,
)
from lowrank_vision.plugins.sr_dsclora.weights import WEIGHTS_DIR, save_span, write_card

PRESETS = {
    # teacher steps, fine-tune steps, batch, LR patch, teacher lr, fine-tune lr, train form, runtime input, repeats
    "gpu": dict(teacher_steps=20_000, ft_steps=5_000, batch=32, patch=64, lr=1e-3, ft_lr=2e-4, form="branches", rt=(256, 256), repeats=100),
    "cpu": dict(teacher_steps=300, ft_steps=150, batch=16, patch=32, lr=2e-3, ft_lr=1e-3, form="deployed", rt=(128, 128), repeats=10),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--channels", type=int, default=26)
    p.add_argument("--data", default=None, help="HR training folder (default: bundled train photos)")
    p.add_argument("--eval-dir", default=None, help="evaluation folder (default: bundled eval photos)")
    p.add_argument("--teacher-steps", type=int, default=None)
    p.add_argument("--ft-steps", type=int, default=None)
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="checkpoint every N steps and resume from OUT/*_run (default: 1000 for gpu, off for cpu)")
    p.add_argument("--out", default="runs/sr/bench")
    p.add_argument("--ship", action="store_true", help="copy the two checkpoints into the package weights/ and rewrite its card")
    args = p.parse_args(argv)
    pre = dict(PRESETS[args.preset])
    pre["teacher_steps"] = args.teacher_steps or pre["teacher_steps"]  # record the steps actually run
    pre["ft_steps"] = args.ft_steps or pre["ft_steps"]
    command = "python bench/sr_dsclora.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.preset == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(args.out)
    device = "cuda" if torch.cuda.is_available() and args.preset == "gpu" else "cpu"

    every = args.checkpoint_every if args.checkpoint_every is not None else (1000 if args.preset == "gpu" else 0)

    def cfg(steps: int, lr: float, form: str = "branches", run: str = "") -> SRTrainConfig:
        ckpt = dict(output_dir=str(out / f"{run}_run"), checkpoint_every=every, resume=True) if every else {}
        loop = sr_train_defaults(**ckpt, max_steps=steps, lr=lr, warmup_steps=min(1000, steps // 20), cpu=device == "cpu",
                                 mixed_precision=args.mixed_precision)
        return SRTrainConfig(scale=args.scale, channels=args.channels, batch_size=pre["batch"], lr_patch=pre["patch"], data=args.data,
                             train_form=form, num_workers=4 if device == "cuda" else 0, train=loop)

    t0 = time.time()
    teacher, _ = train_span(cfg(pre["teacher_steps"], pre["lr"], pre["form"], "teacher"))
    t_teacher = time.time() - t0
    ft_steps = pre["ft_steps"]
    t0 = time.time()
    student, _, reports = finetune_dsclora(teacher, cfg(ft_steps, pre["ft_lr"], run="dsclora"), DSCLoRAConfig())
    t_dsclora = time.time() - t0
    control, _ = finetune_full(teacher, cfg(ft_steps, pre["ft_lr"], run="control"))

    images = load_eval_set(args.eval_dir, args.scale)
    rows = {}
    for name, model in [("SPAN (teacher)", teacher), ("SPAN + DSCLoRA", student), ("SPAN + full fine-tune (control)", control), ("bicubic", None)]:
        scores = evaluate(model.to(device) if model is not None else None, images, args.scale)
        row = {"psnr": scores["psnr"], "ssim": scores["ssim"], "per_image": scores["per_image"]}
        if model is not None:
            row.update(cost_report(model.to(device), runtime_size=pre["rt"], repeats=pre["repeats"]))
            model.cpu()
        rows[name] = row
    # runtime again, interleaved, so that teacher and student see the same machine load
    both = compare_runtime({"SPAN (teacher)": teacher.to(device), "SPAN + DSCLoRA": student.to(device)}, pre["rt"], rounds=5, repeats=pre["repeats"] // 5 or 1)
    for name, ms in both.items():
        rows[name]["runtime_ms"] = ms
    teacher.cpu(), student.cpu()
    train_data = args.data or "bundled train photos: " + ", ".join(BUNDLED_SPLIT["train"])
    span_row, dsc_row = rows["SPAN (teacher)"], rows["SPAN + DSCLoRA"]
    machine = f"{torch.cuda.get_device_name()} (1 GPU, {args.mixed_precision if args.mixed_precision != 'no' else 'fp32'})" \
        if device == "cuda" else "CPU"
    checkpoints = [
        save_span(teacher, out / f"span_x{args.scale}.safetensors", extra={
            "bench": args.preset, "machine": machine, "command": command, "data": train_data, "steps": pre["teacher_steps"],
            "eval_psnr": span_row["psnr"], "eval_ssim": span_row["ssim"]}),
        save_span(student, out / f"dsclora_x{args.scale}.safetensors", extra={
            "bench": args.preset, "machine": machine, "command": command + "  (the DSCLoRA stage; teacher: span_x%d.safetensors)" % args.scale,
            "data": train_data, "steps": ft_steps, "teacher_psnr": span_row["psnr"], "eval_psnr": dsc_row["psnr"], "eval_ssim": dsc_row["ssim"]}),
    ]
    if args.ship:
        for path in checkpoints:
            with atomic_path(WEIGHTS_DIR / path.name) as tmp:
                shutil.copyfile(path, tmp)
        write_card()
    result = {
        "preset": args.preset, "settings": pre, "scale": args.scale, "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "command": command, "train_data": train_data,
        "eval_data": args.eval_dir or "bundled eval photos: " + ", ".join(BUNDLED_SPLIT["eval"]),
        "dsclora_trainable_params": reports[-1].trainable_params, "seconds": {"teacher": t_teacher, "dsclora": t_dsclora}, "rows": rows,
    }
    write_json(out / "bench.json", result)
    lines = [
        f"x{args.scale}, {result['device']}, eval: {result['eval_data']}",
        "",
        "| model | PSNR (Y) | SSIM (Y) | params | FLOPs (G, 256x256 LR) | convs | runtime (ms, %dx%d LR) |" % tuple(pre["rt"]),
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "params" in r:
            lines.append(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['params']:,} | {r['flops_g']:.2f} | {r['convs']} | {r['runtime_ms']:.2f} |")
        else:
            lines.append(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | - | - | - | - |")
    write_text(out / "bench.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(result["seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
