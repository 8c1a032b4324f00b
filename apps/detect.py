"""``lowrank-detect``: RGB+IR detection with DLRMamba (low-rank SS2D + structure-aware distillation) in ultralytics.

make-data -> train-teacher -> distill --rank-ratio 0.5 -> val / predict IMAGES / export onnx / bench. Without --data
a synthetic RGB+thermal default is generated; without --weights the shipped weights are used.
"""

from __future__ import annotations

import sys
from lowrank_vision.apps._cli import add_command, make_parser, print_json, run

__all__ = ["main", "build_parser"]


def _cmd(name: str):
    def call(a):
        from lowrank_vision.datasets.multispectral import SyntheticConfig
        from lowrank_vision.plugins.multispectral_det import commands as c
        from lowrank_vision.plugins.multispectral_det.config import BenchConfig, DetectTrainConfig, DistillConfig
        keys = ("epochs", "imgsz", "batch", "lr0", "seed")
        train = DetectTrainConfig(**{k: getattr(a, k) for k in keys}) if hasattr(a, "epochs") else None
        off = dict(w_svd=0.0, w_state=0.0, w_feat=0.0) if getattr(a, "no_distill", False) else {}
        run_ = {
            "make-data": lambda: c.make_data(a.out, SyntheticConfig(a.train, a.val, a.val, a.size, a.seed)),
            "train-teacher": lambda: c.train_teacher(a.out, a.model, a.data, train, a.device),
            "distill": lambda: c.distill(a.out, a.teacher, a.data, DistillConfig(rank_ratio=a.rank_ratio, train=train, **off), a.device),
            "val": lambda: c.val(a.out, a.weights, a.data, a.split, a.imgsz, a.device, a.by_condition),
            "predict": lambda: c.predict(a.out, a.images or None, a.weights, a.imgsz, a.conf, device=a.device),
            "export": lambda: c.export(a.out, a.weights, a.format, a.imgsz),
            "bench": lambda: c.bench(a.out, a.weights, BenchConfig(imgsz=a.imgsz, threads=a.threads or 2, repeats=a.repeats)),
            "make-weights": lambda: c.make_weights(a.out, a.device, quick=a.quick, full=a.full),
        }
        print_json(run_[name]())
    return call


def build_parser():
    parser, sub = make_parser("lowrank-detect", __doc__)
    p = add_command(sub, "make-data", _cmd("make-data"), help="generate the synthetic RGB+thermal data set")
    p.add_argument("--train", type=int, default=240, help="training images (default 240; val and test get --val)")
    p.add_argument("--val", type=int, default=60, help="validation and test images each (default 60)")
    p.add_argument("--size", type=int, default=256, help="image side, multiple of 32 (default 256)")
    p.add_argument("--seed", type=int, default=0)  # make-data's; train-teacher and distill get theirs below
    for name, help_ in (("train-teacher", "train the full-rank DLRMamba teacher (or yolov8n) with ultralytics"),
                        ("distill", "train the low-rank student with structure-aware distillation from a teacher")):
        p = add_command(sub, name, _cmd(name), help=help_)
        p.add_argument("--data", default=None, help="ultralytics data YAML with channels: 4 (default: synthetic)")
        p.add_argument("--epochs", type=int, default=24)
        p.add_argument("--imgsz", type=int, default=128)
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--lr0", type=float, default=0.01)
        p.add_argument("--seed", type=int, default=0)
    sub.choices["train-teacher"].add_argument("--model", default="dlrmamba-t", help="dlrmamba-t | dlrmamba-n | yolov8n | YAML/.pt path")
    sub.choices["distill"].add_argument("--teacher", default=None, help="teacher .pt/.safetensors (default: shipped)")
    sub.choices["distill"].add_argument("--rank-ratio", type=float, default=0.5, help="student rank ratio (default 0.5)")
    sub.choices["distill"].add_argument("--no-distill", action="store_true", help="task loss only (the ablation baseline)")
    for name, help_ in (("val", "mAP50 / mAP50-95 with ultralytics' validator"), ("predict", "draw detections of 4-channel TIFFs to PNG"),
                        ("export", "export to ONNX and check it in onnxruntime"), ("bench", "parameters, GFLOPs, CPU latency")):
        p = add_command(sub, name, _cmd(name), help=help_)
        p.add_argument("--weights", default=None, nargs="+" if name == "bench" else None, help="weights (default: shipped)")
        p.add_argument("--imgsz", type=int, default=640 if name == "bench" else 128)
    sub.choices["val"].add_argument("--data", default=None, help="data YAML (default: synthetic)")
    sub.choices["val"].add_argument("--split", default="test", choices=["train", "val", "test"])
    sub.choices["val"].add_argument("--by-condition", action="store_true", help="also mAP per condition (night, fog...)")
    sub.choices["predict"].add_argument("images", nargs="*", help="4-channel TIFFs (default: synthetic test scenes)")
    sub.choices["predict"].add_argument("--conf", type=float, default=0.1, help="score threshold (default 0.1)")
    sub.choices["export"].add_argument("format", nargs="?", default="onnx", choices=["onnx"])
    sub.choices["bench"].add_argument("--repeats", type=int, default=3)
    p = add_command(sub, "make-weights", _cmd("make-weights"), help="retrain the shipped weights and write their card")
    p.add_argument("--quick", action="store_true", help="tiny run (tests); writes into --out/weights, not the package")
    p.add_argument("--full", action="store_true", help="GPU-sized recipe (1000 images, 60 + 30 epochs)")
    return parser


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
