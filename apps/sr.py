"""``lowrank-sr``: SPAN + DSCLoRA super-resolution: train | finetune [--dsclora] | eval [DIR] | upscale [IN] [OUT] | export | make-data.
Every subcommand but make-data runs with no arguments on the bundled photos and the shipped weights, on the CPU (outputs: runs/sr/<command>)."""

from __future__ import annotations

from lowrank_vision.apps._cli import add_command, make_parser, print_json, run

TRAIN_OPTIONS = (
    ("--scale", dict(type=int, default=4, choices=(2, 3, 4))), ("--batch-size", dict(type=int, default=16)),
    ("--patch", dict(type=int, default=32, help="LR patch side")), ("--warmup", dict(type=int, default=0, help="warm-up steps")),
    ("--data", dict(help="folder of HR images (default: the bundled train photos)")), ("--seed", dict(type=int, default=0)),
    ("--lr-dir", dict(help="folder of paired LR images (default: bicubic from --data)")), ("--save", dict(help="also write the weights here")),
    ("--mixed-precision", dict(default="no", choices=("no", "bf16", "fp16"))), ("--eval-dir", dict(help="eval folder (default: bundled photos)")))


def _call(name: str, *args, **kwargs) -> None:
    from lowrank_vision.plugins.sr_dsclora import commands
    print_json(getattr(commands, name)(*args, **kwargs))


def _config(a, channels: int = 26, train_form: str = "branches"):
    from lowrank_vision.plugins.sr_dsclora.config import SRTrainConfig, sr_train_defaults
    loop = sr_train_defaults(max_steps=a.steps, lr=a.lr, warmup_steps=a.warmup, seed=a.seed, cpu=a.device == "cpu", mixed_precision=a.mixed_precision)
    return SRTrainConfig(scale=a.scale, channels=channels, batch_size=a.batch_size, lr_patch=a.patch, data=a.data, lr_dir=a.lr_dir,
                         train_form=train_form, train=loop)


def _dsclora(a):
    from lowrank_vision.plugins.sr_dsclora.config import DSCLoRAConfig
    return DSCLoRAConfig.from_ranks(a.block_rank, a.tail_rank, lambda_ts=a.lambda_ts, lambda_ad=a.lambda_ad) if a.dsclora else None


def build_parser():
    parser, sub = make_parser("lowrank-sr", __doc__)
    t = add_command(sub, "train", lambda a: _call("train", _config(a, a.channels, a.train_form), a.out, save=a.save, eval_dir=a.eval_dir,
                                                   init=a.init), help="train SPAN (L1)")
    f = add_command(sub, "finetune", lambda a: _call("finetune", _config(a), a.out, teacher=a.teacher, dsclora=_dsclora(a), save=a.save,
                                                      eval_dir=a.eval_dir), help="DSCLoRA (--dsclora) or full fine-tuning of a SPAN")
    for p, steps, lr in ((t, 300, 1e-3), (f, 200, 5e-4)):
        p.add_argument("--steps", type=int, default=steps, help="optimizer steps (default %(default)s)")
        p.add_argument("--lr", type=float, default=lr, help="peak learning rate (default %(default)s)")
        for flag, kw in TRAIN_OPTIONS:
            p.add_argument(flag, **kw)
    t.add_argument("--channels", type=int, default=26)
    t.add_argument("--init", help="continue from this deployed SPAN checkpoint (implies --train-form deployed)")
    t.add_argument("--train-form", default="branches", choices=("branches", "deployed"), help="deployed: plain 3x3 convs, ~4x cheaper")
    f.add_argument("--dsclora", action="store_true", help="ConvLoRA + spatial-affinity distillation (the paper)")
    f.add_argument("--teacher", help="SPAN checkpoint to start from (default: shipped span_x<scale>)")
    for flag, value, kind in (("--block-rank", 2, int), ("--tail-rank", 8, int), ("--lambda-ts", 0.0, float), ("--lambda-ad", 1.0, float)):
        f.add_argument(flag, type=kind, default=value, help="(default %(default)s)")
    e = add_command(sub, "eval", lambda a: _call("evaluate", a.out, a.dir, a.weights, a.kind, a.scale, a.tile, device=a.device),
                    help="Y-PSNR/SSIM vs bicubic")
    u = add_command(sub, "upscale", lambda a: _call("upscale", a.out, a.input, a.output, a.weights, a.kind, a.scale, a.tile, a.device),
                    help="super-resolve one image (tiled)")
    x = add_command(sub, "export", lambda a: _call("export", a.out, a.weights, a.kind, a.scale, onnx=not a.no_onnx),
                    help="SPAN state dict + deployed safetensors + ONNX")
    for p in (e, u, x):
        p.add_argument("--weights", help="checkpoint (.safetensors); default: the shipped one")
        p.add_argument("--kind", default="dsclora", choices=("span", "dsclora"), help="which shipped weights (default %(default)s)")
        p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    e.add_argument("dir", nargs="?", help="HR folder or paired folder (HR/ + LR_bicubic/X<s>/)")
    u.add_argument("input", nargs="?", help="input image (default: a down-scaled bundled photo)")
    u.add_argument("output", nargs="?", help="output image (default: <--out>/<name>_x<scale>.png)")
    for p, tile in ((e, 0), (u, 128)):
        p.add_argument("--tile", type=int, default=tile, help="LR tile side, 0 = whole image (default %(default)s)")
    x.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    m = add_command(sub, "make-data", lambda a: _call("make_data", a.out, a.root, a.images, a.crop, a.extra_train), help="SR photo sets")
    m.add_argument("--root", action="append", help="folder the Debian packages are installed or unpacked in (default /; repeatable)")
    m.add_argument("--images", help="train on this folder of photos instead (refused if it overlaps the evaluation set)")
    m.add_argument("--crop", type=int, default=320, help="side of each training crop after /2 down-scaling (default %(default)s)")
    m.add_argument("--extra-train", action="append", help="also train on this catalogue source's photos (repeatable): plasma")
    return parser


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
