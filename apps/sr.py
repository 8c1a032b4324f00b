"""``lowrank-sr``: SPAN + DSCLoRA efficient super-resolution.

Subcommands (each runs with no arguments on the bundled photos, on a CPU, in a few minutes):

  train                 train SPAN from scratch (bundled train photos, or --data HR folder)
  finetune --dsclora    DSCLoRA fine-tuning of a SPAN (default: the shipped one); without --dsclora,
                        full fine-tuning (the control)
  eval [DIR]            Y-PSNR/SSIM of a checkpoint vs bicubic (default: the bundled eval photos)
  upscale [IN] [OUT]    super-resolve an image, tiled (default: a down-scaled bundled photo)
  export                SPAN-layout state dict (.pth), deployed safetensors, ONNX
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _common_train(p: argparse.ArgumentParser, steps: int, lr: float) -> None:
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch", type=int, default=32, help="LR patch side (default %(default)s)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    p.add_argument("--data", default=None, help="folder of HR images (default: the bundled train photos)")
    p.add_argument("--lr-dir", default=None, help="folder of paired LR images (default: bicubic from --data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="force the CPU")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--save", default=None, help="also write the weights to this path")
    p.add_argument("--eval-dir", default=None, help="evaluation folder (default: the bundled eval photos)")


def _weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="checkpoint (.safetensors); default: the shipped one")
    p.add_argument("--kind", default="dsclora", choices=("span", "dsclora"), help="which shipped weights (default %(default)s)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowrank-sr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train SPAN")
    _common_train(p, steps=300, lr=1e-3)
    p.add_argument("--channels", type=int, default=26)
    p.add_argument("--init", default=None, help="continue from this deployed SPAN checkpoint (implies --train-form deployed)")
    p.add_argument("--train-form", default="branches", choices=("branches", "deployed"),
                   help="branches: SPAN's re-parameterisable form (paper); deployed: plain 3x3 convs, ~4x cheaper")
    p.add_argument("--out", default="runs/sr/train")

    p = sub.add_parser("finetune", help="DSCLoRA (--dsclora) or full fine-tuning of a SPAN")
    _common_train(p, steps=200, lr=5e-4)
    p.add_argument("--dsclora", action="store_true", help="ConvLoRA + spatial-affinity distillation (the paper)")
    p.add_argument("--teacher", default=None, help="SPAN checkpoint to start from (default: shipped span_x<scale>)")
    p.add_argument("--block-rank", type=int, default=2)
    p.add_argument("--tail-rank", type=int, default=8)
    p.add_argument("--lambda-ts", type=float, default=0.0, help="weight of L1(student, teacher output) (default %(default)s)")
    p.add_argument("--lambda-ad", type=float, default=1.0, help="weight of the spatial-affinity loss (default %(default)s)")
    p.add_argument("--out", default="runs/sr/finetune")

    p = sub.add_parser("eval", help="PSNR/SSIM on Y vs bicubic")
    p.add_argument("dir", nargs="?", default=None, help="HR folder or paired folder (HR/ + LR_bicubic/X<s>/)")
    _weights_args(p)
    p.add_argument("--tile", type=int, default=0)
    p.add_argument("--out", default="runs/sr/eval")

    p = sub.add_parser("upscale", help="super-resolve one image (tiled)")
    p.add_argument("input", nargs="?", default=None, help="input image (default: a down-scaled bundled photo)")
    p.add_argument("output", nargs="?", default="runs/sr/upscale.png")
    _weights_args(p)
    p.add_argument("--tile", type=int, default=128, help="LR tile side, 0 = whole image (default %(default)s)")

    p = sub.add_parser("export", help="SPAN state dict + ONNX")
    _weights_args(p)
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--out", default="runs/sr/export")
    return parser


def _train_config(args: argparse.Namespace, channels: int = 26):
    extra = {"train_form": args.train_form} if hasattr(args, "train_form") else {}
    from lowrank_vision.plugins.sr_dsclora.recipes import SRTrainConfig

    return SRTrainConfig(
        scale=args.scale, channels=channels, steps=args.steps, batch_size=args.batch_size, lr_patch=args.patch,
        lr=args.lr, warmup_steps=args.warmup, data=args.data, lr_dir=args.lr_dir, seed=args.seed, output_dir=None, cpu=args.cpu,
        mixed_precision=args.mixed_precision, **extra,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    from lowrank_vision.plugins.sr_dsclora import pipeline

    if args.command == "train":
        out = pipeline.run_train(_train_config(args, args.channels), args.out, save=args.save, eval_dir=args.eval_dir, init=args.init)
        keys = ("eval_psnr", "eval_ssim", "bicubic_psnr", "params", "weights")
    elif args.command == "finetune":
        from lowrank_vision.plugins.sr_dsclora.distill import DSCLoRAConfig

        dcfg = DSCLoRAConfig(block_rank=args.block_rank, block_alpha=2.0 * args.block_rank, tail_rank=args.tail_rank,
                             tail_alpha=2.0 * args.tail_rank, lambda_ts=args.lambda_ts, lambda_ad=args.lambda_ad)
        out = pipeline.run_finetune(_train_config(args), args.out, teacher=args.teacher, dsclora=args.dsclora, dsclora_cfg=dcfg, save=args.save,
                                   eval_dir=args.eval_dir)
        keys = ("method", "teacher_psnr", "eval_psnr", "delta_psnr", "eval_ssim", "params_teacher", "params_student", "trainable_params", "weights")
    elif args.command == "eval":
        out = pipeline.run_eval(args.dir, args.weights, args.kind, args.scale, args.out, tile=args.tile)
        keys = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "cost")
    elif args.command == "upscale":
        out = pipeline.run_upscale(args.input, args.output, args.weights, args.kind, args.scale, tile=args.tile)
        keys = ("output", "lr_size", "sr_size", "psnr", "bicubic_psnr")
    else:
        out = pipeline.run_export(args.weights, args.kind, args.scale, args.out, onnx=not args.no_onnx)
        keys = ("files", "params", "onnx_max_abs_diff")
    print(json.dumps({k: out[k] for k in keys if k in out}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
