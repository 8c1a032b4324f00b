"""``lowrank-seg``: TBI -> SAH hemorrhage segmentation with low-rank adapters on MONAI UNets.

Subcommands (each runs with no arguments on the embedded synthetic data, preset ``cpu``):
  pretrain   train the UNet on synthetic TBI            -> OUT/tbi_unet.pt, OUT/pretrain.json
  finetune   adapt it to SAH (--method cp_lora --rank 8) -> OUT/sah_<method>_r<rank>/, finetune.json
  compare    strategy x rank grid, k-fold CV            -> OUT/compare/results.{json,md}, dice_vs_params.png
  predict    IN.nii.gz OUT.nii.gz: mask with the input's affine; prints blood volume in mL
  eval       Dice / volume metrics on a folder of image/mask pairs -> OUT/eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path


def _config(args):
    from lowrank_vision.plugins.hemorrhage_seg.models import UNetConfig
    from lowrank_vision.plugins.hemorrhage_seg.recipe import PRESETS

    cfg = PRESETS[args.preset]
    changes = {}
    if getattr(args, "arch", None):
        changes["net"] = replace(cfg.net, kind=args.arch)
    for name in ("pretrain_steps", "finetune_steps", "seed", "folds", "n_sah", "n_tbi", "modules", "adapter_lr",
                 "alpha_over_rank"):
        v = getattr(args, name, None)
        if v is not None:
            changes[name] = v
    if getattr(args, "strategies", None):
        changes["strategies"] = tuple(args.strategies)
    if getattr(args, "ranks", None):
        changes["ranks"] = tuple(args.ranks)
    if getattr(args, "method_lr", None):
        pairs = []
        for item in args.method_lr:
            method, sep, lr = item.partition("=")
            try:
                value = float(lr) if sep else None
            except ValueError:
                value = None
            if value is None:
                raise ValueError(f"--method-lr expects METHOD=LR (e.g. cp_lora=0.1), got {item!r}")
            pairs.append((method, value))
        changes["adapter_lr_by_method"] = tuple(pairs)
    elif getattr(args, "adapter_lr", None) is not None:
        changes["adapter_lr_by_method"] = ()  # --adapter-lr alone sets every adapter method's rate
    if getattr(args, "gpu", False):
        changes["cpu"] = False
    if getattr(args, "mixed_precision", None):
        changes["mixed_precision"] = args.mixed_precision
    return replace(cfg, **changes) if changes else cfg


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp_" + path.name)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _base_for(args, out: Path):
    from lowrank_vision.plugins.hemorrhage_seg.inference import DEFAULT_BASE

    if args.base:
        return Path(args.base)
    mine = out / "tbi_unet.pt"
    return mine if mine.is_file() else DEFAULT_BASE


def cmd_pretrain(args) -> dict:
    from lowrank_vision.plugins.hemorrhage_seg.recipe import pretrain

    cfg, out = _config(args), Path(args.out)
    m = pretrain(cfg, out / "data", out / "tbi_unet.pt", run_dir=out / "pretrain_run", resume=args.resume,
                 checkpoint_every=args.checkpoint_every)
    _write_json(out / "pretrain.json", m)
    return m


def cmd_finetune(args) -> dict:
    from lowrank_vision.core import save
    from lowrank_vision.plugins.hemorrhage_seg.models import load_checkpoint, save_checkpoint
    from lowrank_vision.plugins.hemorrhage_seg.recipe import evaluate, finetune, fold_indices, load_dataset, make_synthetic_data
    from lowrank_vision.plugins.hemorrhage_seg.metrics import summarize_cases
    from lowrank_vision.plugins.hemorrhage_seg.strategies import ADAPTER_METHODS

    cfg, out = _config(args), Path(args.out)
    base_path = _base_for(args, out)
    base, arch, ckpt = load_checkpoint(base_path)
    cfg = replace(cfg, net=arch, windows=tuple(ckpt["windows"]))
    sah_root = Path(args.data) if args.data else make_synthetic_data(cfg, out / "data")[1]
    sah = load_dataset(sah_root, cfg.windows)
    test = fold_indices(len(sah), cfg.folds, cfg.seed)[0]
    train = [i for i in range(len(sah)) if i not in test]
    model, n_train = finetune(base, sah, train, args.method, args.rank, cfg)
    name = f"sah_{args.method}_r{args.rank}" if args.method in ADAPTER_METHODS else f"sah_{args.method}"
    if args.method in ADAPTER_METHODS:
        saved = save(model, out / name)
    else:
        saved = save_checkpoint(model, arch, out / f"{name}.pt", cfg.windows)
    before = summarize_cases(evaluate(base, sah, arch.divisor, test))
    after = summarize_cases(evaluate(model, sah, arch.divisor, test))
    m = {"base": str(base_path), "method": args.method, "rank": args.rank, "saved": str(saved), "trainable_params": n_train,
         "total_params_base": sum(p.numel() for p in base.parameters()), "heldout_cases": len(test),
         "dice_before": before["dice_mean"], "dice_after": after["dice_mean"], "heldout": after}
    _write_json(out / "finetune.json", m)
    return m


def cmd_compare(args) -> dict:
    from lowrank_vision.plugins.hemorrhage_seg.recipe import compare, pretrain

    cfg, out = _config(args), Path(args.out)
    base = Path(args.base) if args.base else out / "tbi_unet.pt"
    if not base.is_file():
        print(f"no pre-trained UNet at {base}; running pretrain first", file=sys.stderr)
        _write_json(out / "pretrain.json", pretrain(cfg, out / "data", base))
    rows = compare(cfg, base, out / "data", out / "compare")
    return {"rows": [{k: v for k, v in r.items() if k != "cases"} for r in rows], "table": str(out / "compare" / "results.md")}


def cmd_predict(args) -> dict:
    from lowrank_vision.plugins.hemorrhage_seg.inference import DEFAULT_ADAPTER, load_model, segment_file

    out = Path(args.out)
    src = args.input
    if src is None:  # embedded default: one synthetic SAH volume
        from lowrank_vision.datasets.ct_synthetic import synthesize_case
        from lowrank_vision.datasets.ct_synthetic import _save_nifti_atomic
        from lowrank_vision.plugins.hemorrhage_seg.recipe import PRESETS

        dcfg = PRESETS["cpu"].data
        image, mask, info = synthesize_case("sah", 1000, 0, dcfg)
        out.mkdir(parents=True, exist_ok=True)
        src = out / "example_sah.nii.gz"
        _save_nifti_atomic(image, dcfg.affine, src)
        _save_nifti_atomic(mask, dcfg.affine, out / "example_sah_truth.nii.gz")
        print(f"wrote example input {src} (true blood volume {info['blood_ml']:.2f} mL)")
    dst = args.output or str(out / "example_sah_mask.nii.gz")
    adapter = None if args.no_adapter else (args.adapter or (DEFAULT_ADAPTER if not args.base else None))
    model, arch, windows = load_model(args.base, adapter)
    m = segment_file(src, dst, model, arch, windows)
    print(f"blood volume: {m['blood_ml']:.2f} mL -> {dst}")
    return m


def cmd_eval(args) -> dict:
    from lowrank_vision.plugins.hemorrhage_seg.inference import DEFAULT_ADAPTER, load_model
    from lowrank_vision.plugins.hemorrhage_seg.metrics import summarize_cases
    from lowrank_vision.plugins.hemorrhage_seg.recipe import PRESETS, evaluate, load_dataset, make_synthetic_data

    out = Path(args.out)
    adapter = None if args.no_adapter else (args.adapter or (DEFAULT_ADAPTER if not args.base else None))
    model, arch, windows = load_model(args.base, adapter)
    folder = Path(args.data) if args.data else make_synthetic_data(replace(PRESETS["cpu"], seed=1), out / "eval_data")[1]
    cases = evaluate(model, load_dataset(folder, windows), arch.divisor, progress=True)
    m = {"data": str(folder), "base": str(args.base or "default"), "adapter": str(adapter), **summarize_cases(cases), "cases": cases}
    _write_json(out / "eval.json", m)
    return {k: v for k, v in m.items() if k != "cases"}


def build_parser() -> argparse.ArgumentParser:
    from lowrank_vision.plugins.hemorrhage_seg.strategies import STRATEGIES

    ap = argparse.ArgumentParser(prog="lowrank-seg", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a shared machine)")
    sub = ap.add_subparsers(dest="command")

    def common(p, data=True):
        p.add_argument("--out", default="runs/seg", help="output folder (default runs/seg)")
        p.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"], help="experiment size (default cpu)")
        p.add_argument("--arch", choices=["3d", "multiview"], help="UNet kind (default: the preset's, 3d)")
        p.add_argument("--seed", type=int)
        p.add_argument("--gpu", action="store_true", help="use the GPU if there is one")
        p.add_argument("--mixed-precision", dest="mixed_precision", choices=["no", "bf16", "fp16"])
        if data:
            p.add_argument("--data", help="folder of SAH image/mask pairs (default: synthetic)")

    p = sub.add_parser("pretrain", help="train the UNet on synthetic TBI")
    common(p, data=False)
    p.add_argument("--steps", dest="pretrain_steps", type=int)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from OUT/pretrain_run/checkpoints")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune on SAH with one strategy")
    common(p)
    p.add_argument("--method", default="cp_lora", choices=STRATEGIES)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", dest="finetune_steps", type=int)
    p.add_argument("--modules", choices=["all", "encoder", "decoder"])
    p.add_argument("--adapter-lr", dest="adapter_lr", type=float, help="learning rate of every adapter strategy, replacing the preset's per-method rates unless --method-lr is given")
    p.add_argument("--alpha-over-rank", dest="alpha_over_rank", type=float, help="adapter alpha / rank (default: the preset's)")
    p.add_argument("--method-lr", dest="method_lr", nargs="+", metavar="METHOD=LR",
                   help="per-method adapter learning rates, replacing the preset's (e.g. cp_lora=0.1)")
    p.add_argument("--base", help="pre-trained checkpoint (default OUT/tbi_unet.pt, else the shipped one)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("compare", help="strategy x rank grid with k-fold CV")
    common(p)
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES)
    p.add_argument("--ranks", nargs="+", type=int)
    p.add_argument("--folds", type=int)
    p.add_argument("--steps", dest="finetune_steps", type=int)
    p.add_argument("--adapter-lr", dest="adapter_lr", type=float, help="learning rate of every adapter strategy, replacing the preset's per-method rates unless --method-lr is given")
    p.add_argument("--alpha-over-rank", dest="alpha_over_rank", type=float, help="adapter alpha / rank (default: the preset's)")
    p.add_argument("--method-lr", dest="method_lr", nargs="+", metavar="METHOD=LR",
                   help="per-method adapter learning rates, replacing the preset's (e.g. cp_lora=0.1)")
    p.add_argument("--base", help="pre-trained checkpoint (default OUT/tbi_unet.pt; made if missing)")
    p.set_defaults(func=cmd_compare)

    for name, fn, hlp in (("predict", cmd_predict, "segment one NIfTI volume"), ("eval", cmd_eval, "metrics on a data folder")):
        p = sub.add_parser(name, help=hlp)
        if name == "predict":
            p.add_argument("input", nargs="?", help="input CT in HU (.nii/.nii.gz); default: a synthetic SAH example")
            p.add_argument("output", nargs="?", help="output mask path (.nii.gz)")
        else:
            p.add_argument("--data", help="folder of image/mask pairs (default: synthetic SAH)")
        p.add_argument("--out", default="runs/seg")
        p.add_argument("--base", help="pre-trained checkpoint (default: shipped TBI UNet)")
        p.add_argument("--adapter", help="adapter folder (default: shipped CP-LoRA SAH adapter when --base is not given)")
        p.add_argument("--no-adapter", action="store_true", help="use the base network only")
        p.set_defaults(func=fn)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.command is None:
        ap.print_help()
        return 0
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lowrank-seg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
