"""``lowrank-hsi``: LoLA-SpecViT + LoRA HSI classification, SVM / RF baselines. CUBE: .mat / ENVI / raster (default: synthetic)."""

import sys
from pathlib import Path

from lowrank_vision.apps._cli import add_command, make_parser, print_json, run
from lowrank_vision.plugins.hsi_specvit import commands
from lowrank_vision.plugins.hsi_specvit.config import DataConfig, RecipeConfig, train_config
from lowrank_vision.plugins.hsi_specvit.weights import DEFAULT_WEIGHTS, load_bundle

RECIPE_OPTIONS = (("rank", int, 8, "LoRA rank"), ("alpha", float, 16.0, "LoRA alpha"), ("batch_size", int, 64, "patches per step"),
                  ("cycle_steps", int, 40, "first LoRA-scale cycle"), ("eval_every", int, 25, "keep the best val weights, every"))


def _recipes(args, model: str) -> list:
    fields = {name: getattr(args, name) for name, *_ in RECIPE_OPTIONS}
    return [RecipeConfig(model=model, method=m, cyclical=not args.no_cyclical, **fields,
                         train=train_config(m, steps=args.steps, lr=args.lr, seed=args.seed)) for m in args.method]


def train_cmd(args):
    data = DataConfig(pca_components=args.pca, patch=args.patch, split=args.split, split_seed=args.split_seed, test_mask=args.test_mask,
                      block=args.block or (29 if args.split == "checkerboard" else 16), train_mask=args.train_mask)
    print_json(commands.train(Path(args.out), commands.load_input(args.cube, args.gt), _recipes(args, args.model), data,
                              args.weights_out, args.device, args.command_line)["rows"])


def finetune_cmd(args):
    runs = _recipes(args, load_bundle(args.weights)[2]["recipe"]["model"])  # the bundle's variant
    cube = commands.load_input(args.cube, args.gt, commands.TARGET_SCENE)
    print_json(commands.finetune(Path(args.out), cube, args.weights, runs, refit_pca=args.refit_pca, device=args.device)["rows"])


def eval_cmd(args):
    r = commands.evaluate(Path(args.out), commands.load_input(args.cube, args.gt), args.weights, args.split, device=args.device)
    print_json({k: r[k] for k in ("split", "OA", "AA", "kappa", "n")})


def predict_cmd(args):
    r = commands.predict(Path(args.out), commands.load_input(args.cube, args.gt), args.weights, device=args.device)
    print_json({k: r[k] for k in ("geotiff", "png", "georeferenced", "crs")})


def build_parser():
    parser, sub = make_parser("lowrank-hsi", __doc__)
    cmds = {n: add_command(sub, n, f, help=h) for n, f, h in [
        ("train", train_cmd, "train networks and SVM / RF baselines on a labelled cube with a spatially disjoint split"),
        ("finetune", finetune_cmd, "adapt a pre-trained bundle to another scene (LoRA vs full fine-tuning)"),
        ("eval", eval_cmd, "OA / AA / kappa / per-class / confusion PNG of a bundle on a labelled cube"),
        ("predict", predict_cmd, "class map: OUT/classmap.tif (georeferenced like the input), .png, .json")]}
    for name, p in cmds.items():
        p.add_argument("cube", nargs="?", type=Path, help="cube file (.mat, .hdr, .tif); default: the synthetic scene")
        p.add_argument("--gt", type=Path, help="separate ground-truth file (.mat, ENVI or one-band GeoTIFF)")
        if name != "train":
            p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="bundle (default: the shipped weights)")
    for name, steps, methods in (("train", 300, ["lora", "svm"]), ("finetune", 200, ["lora", "full"])):
        g = cmds[name].add_argument_group("training")
        g.add_argument("--method", nargs="+", default=methods, choices=["lora", "full"] + ["hybridsn", "svm", "rf"] * (name == "train"))
        g.add_argument("--lr", type=float, help="peak AdamW lr (default 5e-3 for lora, 2e-3 otherwise)")
        g.add_argument("--no-cyclical", action="store_true", help="fixed LoRA scale (no cyclical schedule)")
        for field, typ, default, what in RECIPE_OPTIONS + (("steps", int, steps, "optimizer steps"), ("seed", int, 0, "seed")):
            g.add_argument("--" + field.replace("_", "-"), type=typ, default=default, help=what + " (default %(default)s)")
    t = cmds["train"]
    t.add_argument("--model", default="lola_specvit_tiny", choices=[f"lola_specvit_{s}" for s in ("tiny", "small", "base")])
    t.add_argument("--split", default="regions", choices=["regions", "checkerboard", "masks"], help="regions: class-stratified disjoint")
    for flag, default, what in (("--patch", 9, "patch side"), ("--pca", 15, "PCA components, fitted on train pixels"), ("--block", None,
                                "regions: grid cutting fields (16); checkerboard: cell side (29)"), ("--split-seed", 0, "split seed")):
        t.add_argument(flag, type=int, default=default, help=f"{what} (default %(default)s)")
    [t.add_argument(f"--{w}-mask", help=f"--split masks: {w} map file (nonzero = {w})") for w in ("train", "test")]
    t.add_argument("--weights-out", type=Path, help="also write the first network's bundle here, with its card")
    cmds["finetune"].add_argument("--refit-pca", action="store_true", help="fit a new PCA on the target's train split")
    cmds["eval"].add_argument("--split", default="test", choices=["test", "val", "all"])
    return parser


def main(argv: "list[str] | None" = None) -> int:
    parser = build_parser()
    parser.set_defaults(command_line=" ".join(["lowrank-hsi", *(sys.argv[1:] if argv is None else argv)]))
    return run(parser, argv)
