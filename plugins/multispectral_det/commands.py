"""What each ``lowrank-detect`` subcommand does: ``(config, paths) -> result dict``; no argparse here.

Without a data YAML a command generates the synthetic default (the test split the shipped weights
were scored on, regenerated from its seed); without weights it uses the shipped ones
(:mod:`.weights`). Every command writes a ``result.json`` into its output folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from lowrank_vision.core.files import write_json

from .config import BenchConfig, DetectTrainConfig, DistillConfig
from .weights import DEFAULT_STUDENT, DEFAULT_TEACHER, as_ultralytics_checkpoint, resolve_model

__all__ = ["make_data", "train_teacher", "distill", "val", "predict", "export", "bench", "make_weights", "demo",
           "default_data", "MODELS"]

PathLike = Union[str, Path]
MODELS = ("dlrmamba-t", "dlrmamba-n", "yolov8n")
"""Model names ``train-teacher`` accepts besides a YAML or checkpoint path (``yolov8n``: ultralytics' own YAML)."""


def _data_config(size: int = 128):
    from lowrank_vision.datasets.multispectral import SyntheticConfig

    return SyntheticConfig(n_train=64, n_val=32, n_test=32, size=size)


def default_data(out_dir: PathLike, small: bool = False) -> str:
    """The synthetic default data set under ``out_dir/data`` (reused if already there); its data YAML."""
    from dataclasses import replace

    from lowrank_vision.datasets.multispectral import write_dataset

    cfg = _data_config()
    if small:
        cfg = replace(cfg, n_train=16, n_val=8, n_test=8)
    target = Path(out_dir) / "data"
    if not (target / "data.yaml").is_file():
        write_dataset(target, cfg)
    return str(target / "data.yaml")


def make_data(out_dir: PathLike, config=None) -> dict:
    """Generate the synthetic RGB+thermal data set into ``out_dir``."""
    from lowrank_vision.datasets.multispectral import SyntheticConfig, write_dataset

    summary = write_dataset(out_dir, config or SyntheticConfig())
    return summary


def _model_source(model: str) -> str:
    from . import model_yaml

    if model in ("dlrmamba-t", "dlrmamba-n"):
        return model_yaml(model)
    if model == "yolov8n":
        return "yolov8n.yaml"
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"--model: expected one of {MODELS} or a model YAML / .pt path, got {model!r}")
    return str(path)


def train_teacher(out_dir: PathLike, model: str = "dlrmamba-t", data_yaml: Optional[PathLike] = None,
                  config: DetectTrainConfig = DetectTrainConfig(), device: str = "cpu") -> dict:
    """Train a full-rank detector (or the plain YOLOv8n baseline) with ultralytics; scores it on the test split."""
    from .recipes import evaluate, train_detector

    out_dir = Path(out_dir)
    source = _model_source(model)
    data_yaml = data_yaml or default_data(out_dir)
    result = train_detector(source, data_yaml, config, out_dir / "runs", "teacher", device)
    result["test"] = evaluate(result["checkpoint"], data_yaml, "test", imgsz=config.imgsz, device=device)
    result.update(model=model, data_yaml=str(data_yaml), config=asdict(config))
    write_json(out_dir / "result.json", result)
    return result


def distill(out_dir: PathLike, teacher: Optional[PathLike] = None, data_yaml: Optional[PathLike] = None,
            config: DistillConfig = DistillConfig(), device: str = "cpu") -> dict:
    """Distil the low-rank student of ``teacher`` (default: the shipped teacher) and score it on the test split."""
    from .recipes import distill_student, evaluate

    out_dir = Path(out_dir)
    teacher_ckpt = as_ultralytics_checkpoint(teacher or DEFAULT_TEACHER, out_dir / "teacher.pt")
    data_yaml = data_yaml or default_data(out_dir)
    result = distill_student(teacher_ckpt, data_yaml, config, out_dir / "runs", "student", device)
    result["test"] = evaluate(result["checkpoint"], data_yaml, "test", imgsz=config.train.imgsz, device=device)
    result.update(teacher=str(teacher or DEFAULT_TEACHER), data_yaml=str(data_yaml), config=asdict(config))
    write_json(out_dir / "result.json", result)
    return result


def val(out_dir: PathLike, weights: Optional[PathLike] = None, data_yaml: Optional[PathLike] = None, split: str = "test",
        imgsz: int = 128, device: str = "cpu", by_condition: bool = False) -> dict:
    """mAP50 / mAP50-95 of ``weights`` (default: the shipped student) on a split; with ``by_condition`` also
    per condition (night, fog, glare, crossover, clear) of a generated set, under ``by_condition`` in the result."""
    from .recipes import evaluate, evaluate_by_condition

    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val or test, got {split!r}")
    out_dir = Path(out_dir)
    ckpt = as_ultralytics_checkpoint(weights or DEFAULT_STUDENT, out_dir / "model.pt")
    data_yaml = data_yaml or default_data(out_dir)
    result = evaluate(ckpt, data_yaml, split, imgsz=imgsz, device=device)
    result.update(weights=str(weights or DEFAULT_STUDENT), data_yaml=str(data_yaml))
    if by_condition:
        result["by_condition"] = evaluate_by_condition(ckpt, data_yaml, out_dir / "by_condition", split, imgsz, device=device)
    write_json(out_dir / "result.json", result)
    return result


def _letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    import cv2

    h, w = image.shape[:2]
    r = size / max(h, w)
    nh, nw = round(h * r), round(w * r)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    resized = resized if resized.ndim == 3 else resized[..., None]
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size, image.shape[-1]), 114, np.uint8)
    out[top:top + nh, left:left + nw] = resized
    return out, r, (left, top)


def predict(out_dir: PathLike, images: Optional[Sequence[PathLike]] = None, weights: Optional[PathLike] = None,
            imgsz: int = 128, conf: float = 0.1, iou: float = 0.7, device: str = "cpu") -> dict:
    """Detect objects in 4-channel TIFFs; one PNG per image (RGB and thermal panels with boxes) + boxes JSON."""
    import torch

    from lowrank_vision.datasets.multispectral.readers import read_multichannel

    from .metrics import plot_detections

    out_dir = Path(out_dir)
    if not 0 <= conf <= 1:
        raise ValueError(f"--conf must be in [0, 1], got {conf!r}")
    if images is None:
        data_yaml = Path(default_data(out_dir, small=True))
        images = sorted((data_yaml.parent / "images" / "test").glob("*.tif"))[:4]
    images = [Path(p) for p in images]
    for p in images:
        if not p.is_file():
            raise FileNotFoundError(f"image {p} does not exist")
    model = resolve_model(weights or DEFAULT_STUDENT).to(device)
    channels = model.yaml.get("channels", 4)
    from ultralytics.utils.nms import non_max_suppression

    rows = []
    for path in images:
        image = read_multichannel(path)
        if image.shape[-1] != channels:
            raise ValueError(f"{path}: has {image.shape[-1]} channels, the model expects {channels} (stack RGB+IR into a TIFF)")
        boxed, r, (left, top) = _letterbox(image, imgsz)
        x = torch.from_numpy(boxed).permute(2, 0, 1)[None].float().div(255).to(device)
        with torch.inference_mode():
            pred = model(x)
        det = non_max_suppression(pred[0] if isinstance(pred, (tuple, list)) else pred, conf, iou)[0].cpu().numpy()
        boxes = (det[:, :4] - [left, top, left, top]) / r
        png = plot_detections(image, boxes, det[:, 5].astype(int), det[:, 4], model.names, out_dir / f"{path.stem}.png")
        rows.append({"image": str(path), "png": str(png), "boxes_xyxy": boxes.round(1).tolist(),
                     "classes": [model.names[int(c)] for c in det[:, 5]], "scores": det[:, 4].round(3).tolist()})
    result = {"weights": str(weights or DEFAULT_STUDENT), "images": rows}
    write_json(out_dir / "result.json", result)
    return result


def export(out_dir: PathLike, weights: Optional[PathLike] = None, fmt: str = "onnx", imgsz: int = 128) -> dict:
    """Export ``weights`` (default: the shipped student) to ONNX and check it in onnxruntime against PyTorch."""
    from .metrics import export_onnx, onnx_max_difference

    if fmt != "onnx":
        raise ValueError(f"export: format must be 'onnx', got {fmt!r}")
    out_dir = Path(out_dir)
    weights = Path(weights or DEFAULT_STUDENT)
    model = resolve_model(weights)
    path = export_onnx(model, out_dir / f"{weights.stem}.onnx", imgsz)
    check = onnx_max_difference(model, path, imgsz)
    result = {"onnx": str(path), "imgsz": imgsz, "weights": str(weights), **check}
    write_json(out_dir / "result.json", result)
    return result


def bench(out_dir: PathLike, weights: Optional[Sequence[PathLike]] = None, config: BenchConfig = BenchConfig()) -> dict:
    """Parameters, GFLOPs and CPU latency (batch 1) of each model (default: shipped teacher and student)."""
    from lowrank_vision.core import count_parameters

    from .metrics import count_flops, interleaved_cpu_latency

    out_dir = Path(out_dir)
    weights = [Path(w) for w in (weights or [DEFAULT_TEACHER, DEFAULT_STUDENT])]
    models = {f"{i}:{w.stem}": resolve_model(w) for i, w in enumerate(weights)}
    latency = interleaved_cpu_latency(models, config.imgsz, config.threads, config.warmup, config.repeats)
    rows = [{"name": w.stem, "weights": str(w), "parameters": count_parameters(m)[1], **count_flops(m, config.imgsz),
             **latency[k]} for (k, m), w in zip(models.items(), weights)]
    if len(rows) > 1:
        for r in rows[1:]:
            r["speedup_vs_first"] = rows[0]["latency_ms"] / r["latency_ms"]
    result = {"config": asdict(config), "models": rows}
    write_json(out_dir / "result.json", result)
    return result


def make_weights(out_dir: PathLike, device: str = "cpu", quick: bool = False, full: bool = False) -> dict:
    """Train and write the shipped weights and their card into the package.

    Default: the CPU-sized recipe (64 training images at 128 px). ``full``: 1000 training images,
    60 + 30 epochs -- for a GPU (minutes on one H200). ``quick``: a tiny run into ``out_dir/weights``
    (tests; the package is left alone).
    """
    from dataclasses import replace

    from .weights import WEIGHTS_DIR, make_default_weights

    out_dir = Path(out_dir)
    if quick and full:
        raise ValueError("make-weights: --quick and --full exclude each other")
    if quick:
        from lowrank_vision.datasets.multispectral import SyntheticConfig

        tiny = DetectTrainConfig(epochs=1, imgsz=64, batch=4, mosaic=0.0)
        return make_default_weights(out_dir, SyntheticConfig(n_train=8, n_val=4, n_test=4, size=64), tiny,
                                    DistillConfig(train=tiny), device, out_dir / "weights", "lowrank-detect make-weights --quick")
    if full:
        data = replace(_data_config(), n_train=1000, n_val=100, n_test=100)
        teacher = DetectTrainConfig(epochs=60, imgsz=128, batch=32, workers=4, optimizer="AdamW", lr0=0.002, mosaic=0.0)
        student = DistillConfig(train=replace(teacher, epochs=30))
        return make_default_weights(out_dir, data, teacher, student, device, WEIGHTS_DIR,
                                    f"lowrank-detect make-weights --full --device {device}")
    return make_default_weights(out_dir, device=device, out_dir=WEIGHTS_DIR)


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """Short CPU run for ``lowrank demo``: score the shipped teacher and student on the synthetic test split, draw one."""
    out_dir = Path(out_dir)
    data_yaml = default_data(out_dir)
    teacher = val(out_dir / "teacher", DEFAULT_TEACHER, data_yaml, device=device)
    student = val(out_dir / "student", DEFAULT_STUDENT, data_yaml, device=device)
    images = sorted((Path(data_yaml).parent / "images" / "test").glob("*.tif"))[:1]
    shown = predict(out_dir / "predict", images, DEFAULT_STUDENT, device=device)
    speed = bench(out_dir / "bench", config=BenchConfig(imgsz=256, repeats=2))
    t, s = speed["models"]
    return {
        "teacher_test_mAP50": teacher["mAP50"], "student_test_mAP50": student["mAP50"],
        "teacher_test_mAP50_95": teacher["mAP50-95"], "student_test_mAP50_95": student["mAP50-95"],
        "teacher_params": t["parameters"], "student_params": s["parameters"],
        "cpu_speedup_at_256": s.get("speedup_vs_first"),
        "figures": [{"path": shown["images"][0]["png"],
                     "caption": "Shipped low-rank student (rank ratio 0.5) on a synthetic RGB+thermal test scene: boxes on RGB and thermal"}],
        "summary": (f"DLRMamba-t teacher and its distilled rank-0.5 student (shipped weights) scored with ultralytics' validator on the "
                    f"held-out synthetic RGB+thermal test split: mAP50 {teacher['mAP50']:.3f} vs {student['mAP50']:.3f} with "
                    f"{t['parameters']:,} vs {s['parameters']:,} parameters; CPU speed-up at 256 px {s.get('speedup_vs_first', 0):.2f}x."),
    }
