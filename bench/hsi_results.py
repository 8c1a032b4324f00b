"""Re-measure every number of docs/results/hsi.md: run the documented commands, keep their raw JSON, rewrite the tables.

    python bench/hsi_results.py [--threads 2] [--device cpu] [--only default compare finetune eval params]

Stages (each skipped when its raw JSON already exists in docs/results/hsi/; delete the file to redo it):

* ``default``  ``lowrank-hsi train --method full --steps 300``   (the recipe of the shipped weights; ~7 min on 2 CPU cores)
* ``compare``  ``lowrank-hsi train --method lora hybridsn``      (same split; ~8 min)
* ``finetune`` ``lowrank-hsi finetune``                          (shipped weights -> shifted scene, LoRA vs full; ~6 min)
* ``eval``     ``lowrank-hsi eval``                              (shipped weights on the default's test blocks; < 1 min)
* ``params``   ``python bench/hsi_param_counts.py``              (parameter counts per variant; seconds)

Run outputs go to runs/hsi/results/<stage>/; the raw JSON to docs/results/hsi/<stage>.json; the tables of
docs/results/hsi.md between ``<!-- hsi_results:<stage> -->`` and ``<!-- /hsi_results:<stage> -->`` are rewritten.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import time
from pathlib import Path

from lowrank_vision.core.files import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "results" / "hsi"
DOC = ROOT / "docs" / "results" / "hsi.md"
RUNS = Path("runs") / "hsi" / "results"  # relative to ROOT (main() runs there), so commands read as typed

STAGES = {
    "default": (["train", "--method", "full", "--steps", "300"], "train_metrics.json"),
    "compare": (["train", "--method", "lora", "hybridsn"], "train_metrics.json"),
    "finetune": (["finetune"], "finetune_metrics.json"),
    "eval": (["eval"], "eval_metrics.json"),
}
LABELS = {
    "full": "LoLA-SpecViT tiny, full training (recipe of the shipped weights)",
    "lora": "LoLA-SpecViT tiny, LoRA only (frozen random base, cyclical scale)",
    "hybridsn": "HybridSN-like CNN baseline",
    "no_adaptation": "source model, no adaptation",
    "lora_finetune": "LoRA fine-tuning (cyclical scale)",
    "full_finetune": "full fine-tuning",
}


def run_app(stage: str, threads: int, device: str) -> dict:
    from lowrank_vision.apps.hsi import main

    argv, name = STAGES[stage]
    out = RUNS / stage
    argv = [*argv, "--out", str(out), "--threads", str(threads), "--device", device]
    t0 = time.time()
    if main(argv) != 0:
        raise SystemExit(f"{stage}: lowrank-hsi {' '.join(argv)} failed")
    result = json.loads((out / name).read_text().replace(str(ROOT) + "/", ""))  # paths relative to the checkout
    for record in result.get("runs", {}).values():
        record.pop("history", None)  # per-step logs stay in runs/; the raw JSON keeps the numbers
    return {"command": "lowrank-hsi " + " ".join(argv), "wall_seconds": round(time.time() - t0, 1), "result": result}


def run_params() -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from hsi_param_counts import counts
    from lowrank_vision.plugins.hsi_specvit.model import VARIANTS

    return {"command": "python bench/hsi_param_counts.py", "result": [counts(v, 15, 8, 8) for v in VARIANTS]}


def rows_table(rows: list[dict]) -> str:
    lines = ["| run | OA | AA | κ | trainable | total |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {LABELS.get(r['run'], r['run'])} | {r['OA']:.2f} | {r['AA']:.2f} | {r['kappa']:.2f} | "
              f"{r['trainable_params']:,} | {r['total_params']:,} |" for r in rows]
    return "\n".join(lines)


def render(stage: str, raw: dict) -> str:
    r = raw["result"]
    src = f"`{raw['command']}` → [`hsi/{stage}.json`](hsi/{stage}.json)"
    if stage in ("default", "compare", "finetune"):
        return f"{src}\n\n{rows_table(r['rows'])}"
    if stage == "eval":
        return (f"{src}\n\nShipped weights on the test blocks ({r['n']:,} pixels): OA {r['OA']:.2f}, "
                f"AA {r['AA']:.2f}, κ {r['kappa']:.2f}.")
    lines = ["| variant | full fine-tuning: trainable = total | LoRA r=8: total | LoRA: trainable | of which adapter "
             "| layers wrapped | fewer trainable |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c['variant']} | {c['full_trainable']:,} | {c['lora_total']:,} | {c['lora_trainable']:,} | "
              f"{c['adapter_params']:,} | {c['wrapped']} | {c['reduction_pct']:.1f}% |" for c in r]
    return f"{src}\n\n" + "\n".join(lines)


def update_doc(stage: str, raw: dict) -> None:
    text = DOC.read_text()
    pattern = re.compile(rf"(<!-- hsi_results:{stage} -->\n).*?(\n<!-- /hsi_results:{stage} -->)", re.S)
    if not pattern.search(text):
        print(f"{stage}: no marker block in {DOC.name}; raw JSON written only")
        return
    write_text(DOC, pattern.sub(lambda m: m.group(1) + render(stage, raw) + m.group(2), text))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="+", choices=[*STAGES, "params"], default=[*STAGES, "params"])
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    for stage in args.only:
        path = RAW / f"{stage}.json"
        if path.exists():
            print(f"{stage}: {path} exists, skipped")
            raw = json.loads(path.read_text())
        else:
            print(f"{stage}: running ...", flush=True)
            with contextlib.redirect_stdout(io.StringIO()) if stage == "params" else contextlib.nullcontext():
                raw = run_params() if stage == "params" else run_app(stage, args.threads, args.device)
            write_json(path, raw)
        update_doc(stage, raw)


if __name__ == "__main__":
    main()
