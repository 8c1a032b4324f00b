"""``lowrank-seg``: TBI -> SAH hemorrhage segmentation with low-rank adapters on MONAI UNets (no arguments: embedded data)."""

from lowrank_vision.apps._cli import add_command, make_parser, print_json, run
from lowrank_vision.plugins.hemorrhage_seg import commands as cmd
from lowrank_vision.plugins.hemorrhage_seg.config import FINETUNE_STRATEGIES, MODULE_GROUPS, PRESETS, from_options
from lowrank_vision.plugins.hemorrhage_seg.weights import WEIGHT_SETS, WEIGHTS_HELP

EXPERIMENT = ("arch", "seed", "pretrain_steps", "finetune_steps", "mixed_precision", "method_lr", "adapter_lr", "alpha_over_rank", "modules",
              "strategies", "ranks", "folds")


def _config(a):
    return from_options(a.preset, device=a.device, **{k: getattr(a, k) for k in EXPERIMENT if getattr(a, k, None) is not None})


def _experiment(p, steps_dest: str, adapters: bool = True) -> None:
    g = p.add_argument_group("experiment")
    g.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="experiment size (default cpu)")
    g.add_argument("--arch", choices=["3d", "multiview"], help="UNet kind (default: the preset's, 3d)")
    g.add_argument("--seed", type=int, help="data, fold and training seed (default 0)")
    g.add_argument("--steps", dest=steps_dest, type=int, help="optimizer steps (default: the preset's)")
    g.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    if adapters:
        g.add_argument("--adapter-lr", type=float, help="lr of every adapter method (replaces the preset's per-method rates)")
        g.add_argument("--method-lr", nargs="+", metavar="METHOD=LR", help="per-method adapter lr, e.g. cp_lora=0.1")
        g.add_argument("--alpha-over-rank", type=float, help="adapter alpha / rank (default 1)")
        g.add_argument("--base", help="pre-trained checkpoint (must exist; default OUT/tbi_unet.pt, else the shipped one)")


def _weights(p) -> None:
    p.add_argument("--weights", default="auto", choices=WEIGHT_SETS, help=WEIGHTS_HELP)
    p.add_argument("--base", help="pre-trained checkpoint (default: the shipped TBI UNet)")
    p.add_argument("--adapter", help="adapter folder (default: the shipped CP-LoRA adapter when --base is not given)")
    p.add_argument("--no-adapter", action="store_true", help="use the base network only")


def build_parser():
    parser, sub = make_parser("lowrank-seg", __doc__)

    def add(name, func, help):
        return add_command(sub, name, lambda a: print_json(func(a)), help=help)

    p = add("pretrain", lambda a: cmd.pretrain(_config(a), a.out, a.resume, a.checkpoint_every), "train the UNet on synthetic TBI")
    _experiment(p, "pretrain_steps", adapters=False)
    p.add_argument("--checkpoint-every", type=int, default=50, help="resumable checkpoint every N steps (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/pretrain_run/checkpoints")
    p = add("finetune", lambda a: cmd.finetune(_config(a), a.out, a.method, a.rank, a.base, a.data, a.weights,
                                                     not (a.adapter_lr or a.method_lr)), "fine-tune on SAH, one strategy")
    p.add_argument("--weights", default="auto", choices=WEIGHT_SETS, help=WEIGHTS_HELP)
    _experiment(p, "finetune_steps")
    p.add_argument("--method", default="cp_lora", choices=FINETUNE_STRATEGIES)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--modules", choices=MODULE_GROUPS, help="where adapters go (default all)")
    p.add_argument("--data", help="folder of SAH image/mask pairs (default: synthetic)")
    p = add("compare", lambda a: cmd.compare(_config(a), a.out, a.base), "strategy x rank grid with k-fold CV")
    _experiment(p, "finetune_steps")
    p.add_argument("--strategies", nargs="+", choices=FINETUNE_STRATEGIES)
    p.add_argument("--ranks", nargs="+", type=int, help="ranks of the adapter methods")
    p.add_argument("--folds", type=int)
    p = add("predict", lambda a: cmd.predict(a.out, a.input, a.output, a.base, a.adapter, a.no_adapter, a.device, a.weights), "segment a NIfTI")
    p.add_argument("input", nargs="?", help="input CT in HU (.nii/.nii.gz or a DICOM series folder); default: a synthetic SAH example")
    p.add_argument("output", nargs="?", help="output mask (.nii.gz); default OUT/example_sah_mask.nii.gz")
    _weights(p)
    p = add("eval", lambda a: cmd.evaluate(a.out, a.data, a.base, a.adapter, a.no_adapter, a.device, a.weights), "metrics on a data folder")
    p.add_argument("--data", help="folder of image/mask pairs (default: held-out synthetic SAH, seed 3)")
    _weights(p)
    p = add("make-weights", lambda a: cmd.make_weights(a.out, a.into, a.measure_only), "train + measure the shipped weights")
    p.add_argument("--measure-only", action="store_true", help="keep the shipped weights; only re-measure and rewrite the numbers")
    p.add_argument("--into", help="write weights, card and bundle files under this folder instead of the package")
    return parser


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
