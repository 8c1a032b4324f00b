"""``lowrank-diffusion``: NeRA (KAN form), LoRA and DoRA fine-tuning of a diffusers pipeline.

    lowrank-diffusion pretrain-base [--steps N]              -> a small base pipeline + scene classifier + card
    lowrank-diffusion train   [--adapter nera|lora|dora] [--rank 8] [--steps N] [--base DIR]
    lowrank-diffusion sample  "PROMPT" [...] [--adapter DIR] [--base DIR]
    lowrank-diffusion export  ADAPTER_DIR [--format diffusers|nera]
    lowrank-diffusion compare [--rank 8] [--steps N]          -> loss curves + grid, equal trainable params

Without --base every command uses the shipped base (procedural scenes; the new concept is the
'checkered' texture). --base DIR is any diffusers folder, read with local_files_only=True.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from lowrank_vision.apps._cli import add_command, make_parser, print_json, run

__all__ = ["main", "build_parser"]


def _c():
    from lowrank_vision.plugins.diffusion_nera import commands, config

    return commands, config


def _base(a) -> Optional[Path]:
    if a.base is not None and not (Path(a.base) / "model_index.json").is_file():
        raise FileNotFoundError(f"--base: {a.base} is not a diffusers pipeline folder (no model_index.json)")
    return None if a.base is None else Path(a.base)


def _ft(a):
    _, cfg = _c()
    base = cfg.FinetuneConfig()
    return replace(base, adapter=a.adapter, rank=a.rank, n_images=a.images, ema=a.ema,
                   train=replace(base.train, max_steps=a.steps, lr=a.lr, mixed_precision=a.precision, seed=a.seed))


def _pretrain(a):
    cmd, cfg = _c()
    c = cfg.PretrainConfig()
    c = replace(c, vae_steps=a.vae_steps, train=replace(c.train, max_steps=a.steps, mixed_precision=a.precision))
    print_json(cmd.pretrain_base(c, Path(a.out), a.device, a.classifier_steps, command="lowrank-diffusion " + " ".join(sys.argv[1:])))


def build_parser():
    parser, sub = make_parser("lowrank-diffusion", __doc__)
    p = add_command(sub, "pretrain-base", _pretrain, help="pre-train the small base pipeline and the scene classifier")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--vae-steps", type=int, default=200)
    p.add_argument("--classifier-steps", type=int, default=300)
    p.add_argument("--precision", default="no", choices=["no", "bf16"])
    for name, func, hlp in (("train", lambda a: print_json(_c()[0].train(_ft(a), Path(a.out), _base(a), a.device, a.eval)), "fine-tune one adapter on the new texture"),
                            ("compare", lambda a: print_json(_c()[0].compare(_ft(a), Path(a.out), a.adapters, _base(a), a.device, a.eval)), "lora vs dora vs nera at equal trainable params")):
        p = add_command(sub, name, func, help=hlp)
        p.add_argument("--adapter", default="nera", choices=["nera", "lora", "dora"])
        p.add_argument("--adapters", nargs="+", default=["lora", "dora", "nera"], choices=["nera", "lora", "dora"])
        p.add_argument("--rank", type=int, default=8)
        p.add_argument("--steps", type=int, default=300)
        p.add_argument("--lr", type=float, default=2e-3)
        p.add_argument("--images", type=int, default=64, help="scenes of the new texture to fine-tune on")
        p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the adapter weights (0: off)")
        p.add_argument("--eval", type=int, default=16, help="samples per score (0: no scores)")
        p.add_argument("--precision", default="no", choices=["no", "bf16"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--base", default=None, help="diffusers pipeline folder (default: the shipped base)")
    p = add_command(sub, "sample", lambda a: print_json(_c()[0].sample(a.prompt, Path(a.out) / "samples.png", None if a.adapter is None else Path(a.adapter), _base(a),
                                                                       _c()[1].SampleConfig(steps=a.steps, guidance=a.guidance, seed=a.seed), a.device)), help="sample prompts")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--adapter", default=None, help="adapter folder (core format, diffusers LoRA, or NeRA)")
    p.add_argument("--base", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p = add_command(sub, "export", lambda a: print_json(_c()[0].export(Path(a.adapter), Path(a.out), a.format, _base(a))), help="write a trained adapter for stock diffusers", device=False)
    p.add_argument("adapter", help="core-format adapter folder (train's OUT/adapter)")
    p.add_argument("--format", default="diffusers", choices=["diffusers", "nera"])
    p.add_argument("--base", default=None)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
