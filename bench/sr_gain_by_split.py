"""Where a shipped SR network's gain over bicubic stands on its own training photos, its val photos and the eval photos.

    python3 bench/sr_gain_by_split.py --weights docs/results/sr_gpu/span_x4.safetensors --data runs/sr/make-data

Issue 16's diagnosis: the gap between the gain on the photos a network trained on and on held-out ones is what
generalisation costs (more or more varied photos close it); a gain on its own training photos below the goal means
the network under-fits them (a longer run, larger batches or more channels come first).
Each split of ``lowrank-sr make-data`` is scored whole (Y-PSNR, border = scale, bicubic LR as in training); the page
gives the mean and median gain and its spread over photos. Writes ``docs/results/sr_gain_by_split.md`` and its JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from lowrank_vision.core.files import write_json, write_text
from lowrank_vision.datasets.images import load_eval_set
from lowrank_vision.plugins.sr_dsclora.recipes import evaluate
from lowrank_vision.plugins.sr_dsclora.weights import load_span

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val", "eval")


def split_gains(model, images, scale: int) -> dict:
    """Per-photo and summary Y-PSNR of bicubic and ``model`` on ``images``."""
    bicubic, sr = evaluate(None, images, scale), evaluate(model, images, scale)
    gains = [s["psnr"] - b["psnr"] for b, s in zip(bicubic["per_image"], sr["per_image"])]
    return {"photos": len(images), "bicubic_psnr": bicubic["psnr"], "model_psnr": sr["psnr"], "mean_gain": sr["psnr"] - bicubic["psnr"],
            "median_gain": statistics.median(gains), "min_gain": min(gains), "max_gain": max(gains),
            "per_image": [{"image": b["image"], "bicubic": b["psnr"], "model": s["psnr"]} for b, s in zip(bicubic["per_image"], sr["per_image"])]}


def verdict(rows: dict, goal: float = 3.0) -> str:
    """What the gains say about issue 16's ``goal`` (mean gain over bicubic on held-out photos): the generalisation gap
    (training minus val photos' mean gain) and whether the goal is even below the training photos' own gain."""
    train, val = rows["train"]["mean_gain"], rows["val"]["mean_gain"]
    words = f"the network gains {train:+.2f} dB on the photos it trained on and {val:+.2f} dB on the val photos (gap {train - val:.2f} dB)"
    if train < goal:
        return (words + f"; the {goal:+.1f} dB goal is above its gain on its own training photos: it needs a network that fits "
                "them better (a longer run, larger batches, more channels) unless these photos cap the gain below the goal; "
                "more photos of the same kind alone would not reach it")
    return words + f"; it reaches {goal:+.1f} dB on its own training photos, so the gap to held-out photos is what is left to close"


def render(meta: dict, rows: dict) -> str:
    md = ["# sr_dsclora: gain over bicubic on the training, val and eval photos", "",
          f"Written by `{meta['command']}` (torch {meta['torch']}). Weights: `{meta['weights']}`; photos: the splits of "
          f"`{meta['data']}` (`lowrank-sr make-data`), each scored whole, x{meta['scale']}, Y-PSNR, border {meta['scale']}.", "",
          "| split | photos | bicubic dB | network dB | mean gain | median gain | min / max gain |", "|---|---|---|---|---|---|---|"]
    for split, r in rows.items():
        md.append(f"| {split} | {r['photos']} | {r['bicubic_psnr']:.3f} | {r['model_psnr']:.3f} | {r['mean_gain']:+.3f} | "
                  f"{r['median_gain']:+.3f} | {r['min_gain']:+.2f} / {r['max_gain']:+.2f} |")
    md += ["", f"Reading: {verdict(rows)}.", "", "Per-photo numbers: `sr_gain_by_split.json` beside this page.", ""]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(REPO / "docs" / "results" / "sr_gpu" / "span_x4.safetensors"))
    p.add_argument("--data", default="runs/sr/make-data", help="folder written by lowrank-sr make-data (train/, val/, eval/)")
    p.add_argument("--out", default=str(REPO / "docs" / "results"), help="folder of the page and its JSON")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = Path(a.data)
    missing = [s for s in SPLITS if not (data / s).is_dir()]
    if missing:
        p.error(f"--data: expected a make-data folder with {', '.join(SPLITS)}/ in it, {data} lacks {', '.join(missing)}/")
    model = load_span(a.weights).eval()
    rows = {s: split_gains(model, load_eval_set(data / s, model.scale), model.scale) for s in SPLITS}
    weights = Path(a.weights).resolve()
    meta = {"command": "python3 bench/sr_gain_by_split.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__, "weights": str(weights.relative_to(REPO)) if weights.is_relative_to(REPO) else str(weights),
            "data": a.data, "scale": model.scale}
    out = Path(a.out)
    write_json(out / "sr_gain_by_split.json", {"meta": meta, "splits": rows, "verdict": verdict(rows)})
    write_text(out / "sr_gain_by_split.md", render(meta, rows))
    print(render(meta, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
