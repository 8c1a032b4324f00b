"""``lowrank-hsi``: hyperspectral classification with LoLA-SpecViT + LoRA.

    lowrank-hsi train     [CUBE --gt GT] [--method lora full hybridsn] [--steps N] [--out DIR]
    lowrank-hsi finetune  [CUBE --gt GT] [--weights SOURCE] [--steps N] [--out DIR]
    lowrank-hsi eval      [CUBE --gt GT] [--weights W] [--split test|val|all] [--out DIR]
    lowrank-hsi predict   [CUBE] [--weights W] [--out PREFIX]      -> PREFIX.tif (GeoTIFF), PREFIX.png, PREFIX.json

CUBE is a ``.mat`` cube (labels in the same file or ``--gt``), an ENVI ``.hdr``, or a
GeoTIFF/raster rasterio opens. Without CUBE every subcommand uses the synthetic default
(``finetune``: the shifted second scene; ``predict``/``eval``: the shipped weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowrank-hsi", description="LoLA-SpecViT hyperspectral classification with LoRA.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, out: str) -> None:
        sp.add_argument("cube", nargs="?", default=None, help="cube file (.mat, .hdr, .tif); default: synthetic scene")
        sp.add_argument("--gt", default=None, help="separate ground-truth file (.mat, ENVI or one-band GeoTIFF)")
        sp.add_argument("--out", default=out, help=f"output folder or prefix (default {out})")
        sp.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")

    def training(sp: argparse.ArgumentParser, steps: int) -> None:
        sp.add_argument("--model", default="lola_specvit_tiny", help="lola_specvit_tiny | small | base")
        sp.add_argument("--rank", type=int, default=8)
        sp.add_argument("--alpha", type=float, default=16.0)
        sp.add_argument("--steps", type=int, default=steps)
        sp.add_argument("--batch-size", type=int, default=64)
        sp.add_argument("--lr", type=float, default=None, help="default 5e-3 for LoRA, 2e-3 otherwise")
        sp.add_argument("--no-cyclical", action="store_true", help="keep the LoRA scale fixed (no cyclical schedule)")
        sp.add_argument("--cycle-steps", type=int, default=40)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--device", default="cpu")

    t = sub.add_parser("train", help="train on a labelled cube with a spatially disjoint block split")
    common(t, "runs/hsi_train")
    training(t, 300)
    t.add_argument("--method", nargs="+", default=["lora"], choices=["lora", "full", "hybridsn"])
    t.add_argument("--patch", type=int, default=9)
    t.add_argument("--pca", type=int, default=15, help="PCA components (fitted on train blocks only)")
    t.add_argument("--block", type=int, default=16)
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--weights-out", default=None, help="also write the first method's bundle here")

    f = sub.add_parser("finetune", help="adapt a pre-trained bundle to another scene (LoRA vs full fine-tuning)")
    common(f, "runs/hsi_finetune")
    training(f, 200)
    f.add_argument("--weights", default=None, help="source bundle (default: the shipped synthetic weights)")
    f.add_argument("--method", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    f.add_argument("--refit-pca", action="store_true", help="fit a new PCA on the target's train blocks")

    e = sub.add_parser("eval", help="OA / AA / kappa / per-class / confusion PNG of a bundle on a labelled cube")
    common(e, "runs/hsi_eval")
    e.add_argument("--weights", default=None, help="bundle (default: the shipped synthetic weights)")
    e.add_argument("--split", default="test", choices=["test", "val", "all"])

    pr = sub.add_parser("predict", help="class map of a cube: GeoTIFF (georeferenced like the input) + PNG")
    common(pr, "runs/hsi_predict/classmap")
    pr.add_argument("--weights", default=None, help="bundle (default: the shipped synthetic weights)")
    return p


def _recipe(args):
    from lowrank_vision.plugins.hsi_specvit.recipes import RecipeConfig

    return RecipeConfig(model=args.model, rank=args.rank, alpha=args.alpha, steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, cyclical=not args.no_cyclical, cycle_steps=args.cycle_steps, seed=args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from lowrank_vision.plugins.hsi_specvit import app_runs as runs
    from lowrank_vision.plugins.hsi_specvit.weights import DEFAULT_WEIGHTS

    weights = Path(getattr(args, "weights", None) or DEFAULT_WEIGHTS)
    try:
        if args.command == "train":
            from lowrank_vision.plugins.hsi_specvit.recipes import DataConfig

            cube = runs.load_input(args.cube, args.gt)
            data_cfg = DataConfig(pca_components=args.pca, patch=args.patch, block=args.block, split_seed=args.split_seed)
            result = runs.run_train(Path(args.out), cube, args.method, _recipe(args), data_cfg,
                                    None if args.weights_out is None else Path(args.weights_out), args.device)
            print(json.dumps(result["rows"], indent=1))
        elif args.command == "finetune":
            cube = runs.load_input(args.cube, args.gt, scene=runs.TARGET_SCENE)
            result = runs.run_finetune(Path(args.out), cube, weights, args.method, _recipe(args),
                                       refit_pca=args.refit_pca, device=args.device)
            print(json.dumps(result["rows"], indent=1))
        elif args.command == "eval":
            cube = runs.load_input(args.cube, args.gt)
            runs.run_eval(Path(args.out), cube, weights, args.split)
        elif args.command == "predict":
            cube = runs.load_input(args.cube, args.gt)
            result = runs.run_predict(cube, Path(args.out), weights)
            print(json.dumps({k: result[k] for k in ("geotiff", "png", "georeferenced", "crs")}, indent=1))
    except (ValueError, FileNotFoundError) as exc:
        print(f"lowrank-hsi {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
