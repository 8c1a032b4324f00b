"""``lowrank-diffusion``: NeRA (KAN form), LoRA and DoRA fine-tuning of a diffusers pipeline.

    lowrank-diffusion pretrain-base [--steps N]          -> base pipeline + scene classifier + card
    lowrank-diffusion train   [--adapter nera|lora|dora] [--rank 8] [--steps N] [--base DIR]
    lowrank-diffusion sample  "PROMPT" [...] [--adapter DIR] [--base DIR]
    lowrank-diffusion export  ADAPTER_DIR [--format diffusers|nera]
    lowrank-diffusion compare [--rank 8] [--steps N]      -> loss curves + grid at equal trainable params

Default base: the shipped pipeline (procedural scenes; new concept: the 'checkered' texture); --base DIR: any diffusers folder.
"""

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from lowrank_vision.apps._cli import add_command, make_parser, print_json, run

__all__ = ["main", "build_parser"]
ADAPTERS = ["nera", "lora", "dora"]


def _c():
    from lowrank_vision.plugins.diffusion_nera import commands, config; return commands, config  # noqa: E702


def _ft(a):
    c = _c()[1].FinetuneConfig()
    return replace(c, adapter=getattr(a, "adapter", "lora"), rank=a.rank, n_images=a.images, ema=a.ema,
                   train=replace(c.train, max_steps=a.steps, lr=a.lr, mixed_precision=a.precision, seed=a.seed))


def _pretrain(a):
    c = _c()[1].PretrainConfig()
    c = replace(c, vae_steps=a.vae_steps, train=replace(c.train, max_steps=a.steps, mixed_precision=a.precision))
    cmd = f"lowrank-diffusion pretrain-base --steps {a.steps} --vae-steps {a.vae_steps} --classifier-steps {a.classifier_steps} --precision {a.precision} --device {a.device}"
    print_json(_c()[0].pretrain_base(c, Path(a.out), a.device, a.classifier_steps, command=cmd))


def _sample(a):
    print_json(_c()[0].sample(a.prompt, Path(a.out) / "samples.png", a.adapter and Path(a.adapter), a.base and Path(a.base),
                              _c()[1].SampleConfig(steps=a.steps, guidance=a.guidance, seed=a.seed), a.device))


def build_parser():
    parser, sub = make_parser("lowrank-diffusion", __doc__)
    p = add_command(sub, "pretrain-base", _pretrain, help="pre-train the small base pipeline and the scene classifier")
    [p.add_argument(flag, type=int, default=default) for flag, default in (("--steps", 500), ("--vae-steps", 200), ("--classifier-steps", 300))]
    p.add_argument("--precision", default="no", choices=["no", "bf16"])
    for name, hlp in (("train", "fine-tune one adapter on the new texture"), ("compare", "lora vs dora vs nera at equal trainable params")):
        p = add_command(sub, name, lambda a: print_json(_c()[0].train(_ft(a), Path(a.out), (a.base and Path(a.base)), a.device, a.eval) if a.command == "train"
                                                        else _c()[0].compare(_ft(a), Path(a.out), a.adapters, (a.base and Path(a.base)), a.device, a.eval)), help=hlp)
        p.add_argument(*(["--adapter"] if name == "train" else ["--adapters"]), **(dict(default="nera", choices=ADAPTERS) if name == "train" else dict(nargs="+", default=["lora", "dora", "nera"], choices=ADAPTERS)))
        for flag, kind, default, text in (("--rank", int, 8, "rank (compare: LoRA's; the others get the largest rank within its parameter count)"),
                                          ("--steps", int, 300, "optimizer steps"), ("--lr", float, 2e-3, "peak learning rate"),
                                          ("--images", int, 64, "scenes of the new texture to fine-tune on"),
                                          ("--ema", float, 0.0, "EMA decay of the adapter weights (0: off)"),
                                          ("--eval", int, 16, "samples per score (0: no scores)"), ("--seed", int, 0, "seed")):
            p.add_argument(flag, type=kind, default=default, help=text)
        p.add_argument("--precision", default="no", choices=["no", "bf16"])
        p.add_argument("--base", "--pretrained", dest="base", default=None, help="diffusers pipeline folder, read with from_pretrained(local_files_only=True) (default: the shipped base)")
    p = add_command(sub, "sample", _sample, help="sample prompts with the base (and an adapter)")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--adapter", default=None, help="adapter folder (core format, diffusers LoRA, or NeRA)")
    p.add_argument("--base", "--pretrained", dest="base", default=None, help="diffusers pipeline folder, read with from_pretrained(local_files_only=True) (default: the shipped base)")
    [p.add_argument(flag, type=kind, default=default) for flag, kind, default in (("--steps", int, 20), ("--guidance", float, 3.0), ("--seed", int, 0))]
    p = add_command(sub, "export", lambda a: print_json(_c()[0].export(Path(a.adapter), Path(a.out), a.format, (a.base and Path(a.base)))),
                    help="write a trained adapter for stock diffusers (lora/dora) or load_nera (nera)", device=False)
    p.add_argument("adapter", help="core-format adapter folder (train's OUT/adapter)")
    p.add_argument("--format", default="diffusers", choices=["diffusers", "nera"])
    p.add_argument("--base", "--pretrained", dest="base", default=None, help="diffusers pipeline folder the adapter was trained on (default: the shipped base)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
