"""``lowrank-nerf``: NeRF fields in pure PyTorch and Progressive Volume Distillation between them.

    make-scene [--width 64] [--views 40]                  generated scene: transforms.json + PNG splits
    train   [--data DIR] [--field hash|mlp|tensorf_vm|grid] [--steps N]
    distill [--teacher CKPT] [--student tensorf_vm] [--steps N] [--active-learning | --teacher-cache N] [--coarse-every K] [--data DIR]
    eval | render | export [--checkpoint CKPT]            PSNR/SSIM; orbit PNG frames + MP4 [--size PX]; PLY points [--mesh]
Defaults: the generated scene (no --data), the shipped weights (no --teacher/--checkpoint)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lowrank_vision.apps._cli import add_command, make_parser, print_json, run

FIELDS = ["hash", "mlp", "tensorf_vm", "grid"]
OPTIONS = (("train", "--field", dict(choices=FIELDS, default="hash")), ("distill", "--student", dict(choices=FIELDS, default="tensorf_vm")),
    ("distill", "--teacher", dict(help="teacher .safetensors (default: the shipped hash teacher)")),
    ("distill", "--active-learning", dict(action="store_true", help="PVD-AL: hard rays and points")), ("render", "--frames", dict(type=int, default=24)),
    ("distill", "--teacher-cache", dict(type=int, default=0, metavar="N", help="teacher renders N steps' rays at once, each used 4 times")),
    ("distill", "--coarse-every", dict(type=int, default=1, metavar="K", help="student on the teacher's importance + every K-th stratified sample")),
    ("eval", "--data", dict(help="dataset folder; default: the generated scene")), ("export", "--threshold", dict(type=float, default=5.0)),
    ("eval", "--split", dict(choices=["train", "val", "test"], default="test")), ("export", "--resolution", dict(type=int, default=96)),
    ("render", "--size", dict(type=int, help="frame width, px")), ("render", "--elevation", dict(type=float, help="degrees (default: mid cameras)")),
    ("export", "--mesh", dict(action="store_true", help="iso-surface mesh (marching cubes) instead of points")))  # command, flag, kwargs

def _ckpt(path):
    from lowrank_vision.plugins.nerf_pvd.weights import shipped_checkpoint
    return Path(path) if path else shipped_checkpoint("teacher")

def _cmds():
    from lowrank_vision.plugins.nerf_pvd import commands
    return commands

def make_scene(a):
    from lowrank_vision.datasets.nerf import SceneConfig
    print_json(_cmds().make_scene_cmd(Path(a.out), SceneConfig(width=a.width, n_train=a.views, seed=a.seed)))

def train(a):
    cfg = replace(_cmds().cpu_fit_config(a.field, steps=a.steps, seed=a.seed), rays_per_step=a.rays)
    print_json(_cmds().train_cmd(a.data and Path(a.data), cfg, Path(a.out), a.device))

def distill(a):
    cfg = _cmds().cpu_distill_config(a.student, a.steps, a.seed, active_learning=a.active_learning)
    cfg = replace(cfg, rays_per_step=a.rays, teacher_cache_batches=a.teacher_cache, coarse_every=a.coarse_every)
    print_json(_cmds().distill_cmd(_ckpt(a.teacher), cfg, Path(a.out), a.device, a.data and Path(a.data)))

def evaluate(a):
    print_json(_cmds().eval_cmd(_ckpt(a.checkpoint), a.data and Path(a.data), Path(a.out), a.split, device=a.device))

def render(a):
    print_json(_cmds().render_cmd(_ckpt(a.checkpoint), Path(a.out), a.frames, a.elevation, size=a.size, device=a.device))

def export(a):
    cfg = _cmds().ExportConfig(a.resolution, a.threshold, kind="mesh" if a.mesh else "points")
    print_json(_cmds().export_cmd(_ckpt(a.checkpoint), Path(a.out), cfg, a.device))

def build_parser():
    parser, sub = make_parser("lowrank-nerf", __doc__)
    p = add_command(sub, "make-scene", make_scene, help="generate the procedural scene (transforms.json + PNG splits)", device=False)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--views", type=int, default=40, help="training views (val and test: 8 each)")
    p.add_argument("--seed", type=int, default=0)
    for name, func, steps, hlp in (("train", train, 600, "train a field from scratch on the images"),
                                   ("distill", distill, 400, "PVD: distil a teacher checkpoint into another architecture")):
        p = add_command(sub, name, func, help=hlp)
        p.add_argument("--data", help="dataset folder (transforms.json); default: the generated scene")
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--rays", type=int, default=1024, help="rays per step")
        p.add_argument("--seed", type=int, default=0)
    for name, func, hlp in (("eval", evaluate, "PSNR / SSIM of a checkpoint on a split"),
                            ("render", render, "orbit: PNG frames + MP4 (GIF without imageio-ffmpeg)"),
                            ("export", export, "PLY point cloud (or --mesh: iso-surface) of the dense regions")):
        add_command(sub, name, func, help=hlp).add_argument("--checkpoint", help="field .safetensors (default: the shipped teacher)")
    for command, flag, kw in OPTIONS:
        sub.choices[command].add_argument(flag, **kw)
    return parser

def main(argv=None) -> int:
    return run(build_parser(), argv)
