"""Full-size TBI -> SAH comparison for docs/results/hemorrhage.md (preset ``gpu``), in stages that each
fit in a 10-minute job.

    python bench/hemorrhage_gpu.py pretrain --out runs/hseg_gpu                       # TBI UNet
    python bench/hemorrhage_gpu.py compare  --out runs/hseg_gpu --strategies none full decoder cp_lora cp_dora
    python bench/hemorrhage_gpu.py compare  --out runs/hseg_gpu --strategies lora_c dora_c
    python bench/hemorrhage_gpu.py compare  --out runs/hseg_gpu --strategies conv_lora conv_dora
    python bench/hemorrhage_gpu.py report   --out runs/hseg_gpu                       # merged table + PNG + acceptance

On a machine with several GPUs the compare stages can run side by side (CUDA_VISIBLE_DEVICES=i;
``bench/gpu_acceptance.sh`` does this on 2 GPUs, the run in docs/results/hemorrhage.md). Each
strategy writes OUT/<arch>/compare_<strategy>/ and is skipped when that folder holds results.json.
``--preset cpu`` runs the same stages at CPU size. ``report`` checks the acceptance criteria of the
hemorrhage plugin (CP-LoRA Dice >= pre-trained-only + 0.15, within 0.03 of full fine-tuning, <= 5 % of its trainable
parameters) for the best CP-LoRA rank and writes OUT/report.md, OUT/report.json, OUT/dice_vs_params.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def main(argv=None) -> int:
    from lowrank_vision.core.files import write_json, write_text
    from lowrank_vision.plugins.hemorrhage_seg.config import FINETUNE_STRATEGIES, PRESETS
    from lowrank_vision.plugins.hemorrhage_seg.metrics import plot_dice_vs_params, results_table
    from lowrank_vision.plugins.hemorrhage_seg.recipes import compare, pretrain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["pretrain", "compare", "report"])
    ap.add_argument("--out", default="runs/hseg_gpu")
    ap.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    ap.add_argument("--arch", default="3d", choices=["3d", "multiview"])
    ap.add_argument("--strategies", nargs="+", choices=FINETUNE_STRATEGIES)
    ap.add_argument("--ranks", nargs="+", type=int)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    on_cpu = not torch.cuda.is_available()
    cfg = replace(cfg, net=replace(cfg.net, kind=args.arch),
                  pretrain=replace(cfg.pretrain, mixed_precision=args.mixed_precision, cpu=cfg.pretrain.cpu or on_cpu),
                  train=replace(cfg.train, mixed_precision=args.mixed_precision, cpu=cfg.train.cpu or on_cpu))
    if args.strategies:
        cfg = replace(cfg, strategies=tuple(args.strategies))
    if args.ranks:
        cfg = replace(cfg, ranks=tuple(args.ranks))
    out = Path(args.out) / args.arch
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.stage == "pretrain":
        cfg = replace(cfg, pretrain=replace(cfg.pretrain, output_dir=str(out / "pretrain_run"), checkpoint_every=500, resume=True))
        m = pretrain(cfg, Path(args.out) / "data", out / "tbi_unet.pt")
        m["seconds"] = time.time() - t0
        write_json(out / "pretrain.json", m, indent=1)
        print(json.dumps(m, indent=1))
    elif args.stage == "compare":
        # one folder per strategy, skipped when already done, so a stopped job loses at most one strategy
        for strategy in cfg.strategies:
            dest = out / f"compare_{strategy}"
            if (dest / "results.json").is_file():
                print(f"{strategy}: done already ({dest})")
                continue
            t1 = time.time()
            rows = compare(replace(cfg, strategies=(strategy,)), out / "tbi_unet.pt", Path(args.out) / "data", dest)
            print(f"{strategy}: {len(rows)} rows in {time.time() - t1:.0f} s -> {dest}", flush=True)
        print(f"compare: {time.time() - t0:.0f} s")
    else:
        rows, seen = [], set()
        for f in sorted(out.glob("compare_*/results.json")):
            for r in json.loads(f.read_text())["rows"]:
                key = (r["strategy"], r["rank"])
                if key not in seen:
                    seen.add(key)
                    rows.append({k: v for k, v in r.items() if k != "cases"})
        if not rows:
            print(f"no compare_*/results.json under {out}", file=sys.stderr)
            return 1
        order = {s: i for i, s in enumerate(FINETUNE_STRATEGIES)}
        rows.sort(key=lambda r: (order[r["strategy"]], r["rank"] or 0))
        verdict = acceptance(rows)
        pre = json.loads((out / "pretrain.json").read_text()) if (out / "pretrain.json").is_file() else {}
        text = f"# TBI -> SAH, preset {args.preset}, arch {args.arch}\n\npretrain: {json.dumps(pre)}\n\n" + results_table(rows)
        text += "\n\nacceptance: " + json.dumps(verdict) + "\n"
        write_text(out / "report.md", text)
        write_json(out / "report.json", {"rows": rows, "acceptance": verdict, "pretrain": pre}, indent=1)
        plot_dice_vs_params(rows, out / "dice_vs_params.png")
        print(text)
    return 0


def acceptance(rows: list[dict]) -> dict:
    """Acceptance (docs/results/hemorrhage.md) for the best CP-LoRA rank among those with <= 5 % of full fine-tuning's parameters."""
    by = {(r["strategy"], r["rank"]): r for r in rows}
    none, full = by.get(("none", None)), by.get(("full", None))
    cps = [r for r in rows if r["strategy"] == "cp_lora"]
    if full and any(r["trainable_params"] <= 0.05 * full["trainable_params"] for r in cps):
        cps = [r for r in cps if r["trainable_params"] <= 0.05 * full["trainable_params"]]
    if not (none and full and cps):
        return {"checked": False, "why": "needs rows for none, full and cp_lora"}
    cp = max(cps, key=lambda r: r["dice_mean"])
    res = {"checked": True, "cp_lora_rank": cp["rank"], "cp_dice": cp["dice_mean"], "none_dice": none["dice_mean"],
           "full_dice": full["dice_mean"], "cp_params_pct_of_full": 100.0 * cp["trainable_params"] / full["trainable_params"]}
    res["gain_over_none_ge_0.15"] = cp["dice_mean"] >= none["dice_mean"] + 0.15
    res["within_0.03_of_full"] = cp["dice_mean"] >= full["dice_mean"] - 0.03
    res["params_le_5pct"] = res["cp_params_pct_of_full"] <= 5.0
    res["pass"] = res["gain_over_none_ge_0.15"] and res["within_0.03_of_full"] and res["params_le_5pct"]
    return res


if __name__ == "__main__":
    sys.exit(main())
