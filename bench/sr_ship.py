"""Ship the x4 SPAN teacher and DSCLoRA student of a ``bench/sr_gpu.py`` run as the package's default weights.

    python3 bench/sr_ship.py                      # from docs/results/sr_gpu/ (what the GPU run's report stage wrote)
    python3 bench/sr_ship.py --dry-run            # score them, print, write nothing

The GPU run's report stage saves its teacher (the stage chosen on the validation photos) and its seed-0 DSCLoRA
student, deployed, under ``docs/results/sr_gpu/``, with the run's command and its scores on the real-photo
evaluation set (``lowrank-sr make-data`` eval/). This command scores both again, here, on the bundled evaluation
photos (skimage astronaut, chelsea, coffee; sklearn china, flower: the set ``lowrank demo`` and the weights card
use, a subset of the real-photo set), stores those scores and the real-photo ones in each checkpoint's metadata,
copies them into ``plugins/sr_dsclora/weights/`` (atomically) and rewrites the card. It refuses a run whose
DSCLoRA student scores below its teacher on those bundled photos (the demo shows DSCLoRA as the better of the two).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "docs" / "results" / "sr_gpu"


def ship(run_dir: Path, scale: int = 4, dry_run: bool = False, weights_dir: Path | None = None) -> dict:
    """Score the run's two checkpoints on the bundled eval photos; unless ``dry_run``, ship them with the card
    into ``weights_dir`` (default: the package's)."""
    from lowrank_vision.datasets.images import load_eval_set
    from lowrank_vision.plugins.sr_dsclora.recipes import evaluate
    from lowrank_vision.plugins.sr_dsclora.weights import WEIGHTS_DIR, checkpoint_extra, load_span, save_span, write_card

    weights_dir = Path(weights_dir or WEIGHTS_DIR)

    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise SystemExit(f"--run-dir {run_dir}: no report.json (run bench/sr_gpu.py's report stage first)")
    report = json.loads(report_path.read_text())
    teacher_stage = report["acceptance"]["teacher"]
    plan = (report.get("finetunes") or {}).get("plan", {})
    student_run = next((r for r in plan.get("runs", []) if r.startswith("dsclora_")), None)  # the report saved its first seed
    images = load_eval_set(None, scale)
    scores, models = {}, {}
    for kind in ("span", "dsclora"):
        path = run_dir / f"{kind}_x{scale}.safetensors"
        if not path.is_file():
            raise SystemExit(f"--run-dir {run_dir}: no {path.name}")
        models[kind] = load_span(path)
        scores[kind] = evaluate(models[kind], images, scale)
    if scores["dsclora"]["psnr"] < scores["span"]["psnr"]:
        raise SystemExit(f"the DSCLoRA student ({scores['dsclora']['psnr']:.3f} dB) scores below its teacher "
                         f"({scores['span']['psnr']:.3f} dB) on the bundled eval photos: not shipped")
    shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    command = f"{report['command']}; then python3 bench/sr_ship.py --run-dir {shown}"
    data = (f"lowrank-sr make-data train/ ({report['data']}: Endless Sky landscape photographs, Debian endless-sky-high-dpi); "
            "choices on its val/")
    real, stages = report["eval"], report["stages"]
    teacher_steps = stages["teacher_l1"]["steps"] + (stages["teacher_l2"]["steps"] if teacher_stage == "teacher_l2" else 0)
    student_real = real.get(student_run, {})
    extras = {
        "span": {"steps": teacher_steps, "stage": teacher_stage, "realphoto_eval_psnr": real[teacher_stage]["psnr"],
                 "realphoto_gain_over_bicubic": real[teacher_stage]["gain_over_bicubic"]},
        "dsclora": {"steps": plan.get("steps"), "teacher_psnr": scores["span"]["psnr"],
                    "realphoto_eval_psnr": student_real.get("psnr"), "realphoto_gain_over_bicubic": student_real.get("gain_over_bicubic")},
    }
    written = {}
    for kind in ("span", "dsclora"):
        extra = {"bench": "gpu, real photos", "machine": f"{report['device']} (1 GPU, fp32)",
                 "command": command + ("  (the DSCLoRA stage, seed 0; teacher: span_x%d.safetensors)" % scale if kind == "dsclora" else ""),
                 "data": data, "eval_psnr": scores[kind]["psnr"], "eval_ssim": scores[kind]["ssim"],
                 "realphoto_eval_photos": len(real["bicubic"]["per_image"]), **extras[kind]}
        written[kind] = extra
        if not dry_run:
            save_span(models[kind], weights_dir / f"{kind}_x{scale}.safetensors", extra=extra)
            assert checkpoint_extra(weights_dir / f"{kind}_x{scale}.safetensors")["eval_psnr"] == extra["eval_psnr"]
    if not dry_run:
        write_card(weights_dir)
    return {"bicubic_bundled_psnr": evaluate(None, images, scale)["psnr"], **written}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=str(RUN_DIR), help="the folder bench/sr_gpu.py's report stage wrote (report.json + checkpoints)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--dry-run", action="store_true", help="score and print, write nothing")
    args = p.parse_args(argv)
    print(json.dumps(ship(Path(args.run_dir).resolve(), args.scale, args.dry_run), indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
