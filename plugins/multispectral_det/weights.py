"""Shipped weights: a DLRMamba-t teacher and its distilled rank-0.5 student, trained on the synthetic default.

Files in ``weights/`` are written only by :func:`make_default_weights` (``lowrank-detect make-weights``):
``<name>.safetensors`` (fp16 state dict; the ultralytics model dict, class names and the command
in the metadata), ``card.json`` (data, recipe and the numbers that command measured) and
``README.md`` (the same as text). No pickle: :func:`load_weights` rebuilds the ultralytics
``DetectionModel`` from the stored YAML and loads the tensors; :func:`as_ultralytics_checkpoint`
writes a ``.pt`` when ultralytics' trainer/validator needs one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from lowrank_vision.core.files import atomic_dir, atomic_path, write_json, write_text

__all__ = ["WEIGHTS_DIR", "DEFAULT_TEACHER", "DEFAULT_STUDENT", "save_weights", "load_weights", "as_ultralytics_checkpoint",
           "resolve_model", "make_default_weights", "WeightsError"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_TEACHER = WEIGHTS_DIR / "dlrmamba_t_teacher.safetensors"
DEFAULT_STUDENT = WEIGHTS_DIR / "dlrmamba_t_lr50_student.safetensors"
_META = "lowrank_detect"


class WeightsError(ValueError):
    """A weights file that is missing, corrupt or not made by this plugin."""


def save_weights(model: nn.Module, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """fp16 safetensors of ``model`` with its ultralytics YAML and names in the metadata (atomic)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().cpu()
             for k, v in model.state_dict().items()}
    meta = {"yaml": model.yaml, "names": {int(k): v for k, v in dict(model.names).items()}, **(extra or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={_META: json.dumps(meta)})
    return Path(path)


def load_weights(path: Union[str, Path]) -> nn.Module:
    """Rebuild the float32 ``DetectionModel`` stored by :func:`save_weights` (eval mode)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {path} do not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META, "null"))
        state = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"weights {path}: not a readable safetensors file ({exc})") from None
    if not meta:
        raise WeightsError(f"weights {path}: no '{_META}' metadata; not written by lowrank-detect")
    from .ultralytics_host import offline_environment, register_ultralytics

    offline_environment()
    register_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    cfg = meta["yaml"]
    model = DetectionModel(cfg, ch=cfg.get("channels", 4), nc=cfg["nc"], verbose=False)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise WeightsError(f"weights {path} do not fit the model in their metadata: {str(exc).splitlines()[0]}") from None
    model.names = {int(k): v for k, v in meta["names"].items()}
    model.args = {"imgsz": meta.get("imgsz", 256), "task": "detect"}
    return model.eval()


def as_ultralytics_checkpoint(weights: Union[str, Path], out_path: Union[str, Path]) -> Path:
    """An ultralytics ``.pt`` of a ``.safetensors`` file (a ``.pt`` is returned as it is)."""
    weights = Path(weights)
    if weights.suffix == ".pt":
        if not weights.is_file():
            raise FileNotFoundError(f"checkpoint {weights} does not exist")
        return weights
    from .ultralytics_host import save_detection_model

    return save_detection_model(load_weights(weights), out_path)


def resolve_model(weights: Union[str, Path]) -> nn.Module:
    """A detector from ``.safetensors`` (this plugin's) or an ultralytics ``.pt``."""
    weights = Path(weights)
    if weights.suffix == ".pt":
        from .ultralytics_host import load_detection_model

        return load_detection_model(weights)
    if weights.suffix != ".safetensors":
        raise WeightsError(f"weights must be a .safetensors or ultralytics .pt file, got {weights}")
    return load_weights(weights)


def make_default_weights(work_dir: Union[str, Path], data_config=None, train_config=None, distill_config=None,
                         device: str = "cpu", out_dir: Union[str, Path] = WEIGHTS_DIR,
                         command: str = "lowrank-detect make-weights") -> dict:
    """Train the shipped teacher and student on the synthetic default, evaluate both, write weights + card.

    The CPU recipe uses AdamW (lr 0.002, what ultralytics' ``optimizer=auto`` picks for short runs)
    and no mosaic (it shrinks the objects of 128-px images), instead of DLRMamba's SGD: a from-scratch
    run of a few hundred steps barely moves with SGD. Epoch counts are fixed defaults (not tuned);
    ultralytics keeps the checkpoint with the best validation fitness; the card's headline numbers
    are on the held-out test split.
    """
    from lowrank_vision.datasets.multispectral import SyntheticConfig, write_dataset

    from . import model_yaml
    from .config import DetectTrainConfig, DistillConfig
    from lowrank_vision.core import count_parameters

    from .metrics import interleaved_cpu_latency
    from .recipes import distill_student, evaluate, train_detector

    work_dir = Path(work_dir)
    data_config = data_config or SyntheticConfig(n_train=64, n_val=32, n_test=32, size=128)
    train_config = train_config or DetectTrainConfig(epochs=60, imgsz=128, batch=8, optimizer="AdamW", lr0=0.002, mosaic=0.0)
    distill_config = distill_config or DistillConfig(train=replace(train_config, epochs=24))
    data = write_dataset(work_dir / "data", data_config)
    teacher_run = train_detector(model_yaml("dlrmamba-t"), data["data_yaml"], train_config, work_dir / "runs", "teacher", device)
    student_run = distill_student(teacher_run["checkpoint"], data["data_yaml"], distill_config, work_dir / "runs", "student", device)
    card = {"command": command, "data": {"generator": "lowrank_vision.datasets.multispectral.write_dataset",
                                         "config": asdict(data_config), "class_counts": data["class_counts"]},
            "teacher": {"recipe": asdict(train_config), "model": "dlrmamba-t"},
            "student": {"recipe": asdict(distill_config), "model": "dlrmamba-t, SS2D at rank ratio %g" % distill_config.rank_ratio}}
    from .ultralytics_host import load_detection_model

    out_dir = Path(out_dir)
    runs = {"teacher": teacher_run, "student": student_run}
    models = {k: load_detection_model(r["checkpoint"]) for k, r in runs.items()}
    latency = interleaved_cpu_latency(models, train_config.imgsz, threads=2, warmup=1, rounds=9)
    with atomic_dir(out_dir) as tmp:
        for key, run, target in (("teacher", teacher_run, DEFAULT_TEACHER), ("student", student_run, DEFAULT_STUDENT)):
            model = models[key]
            card[key]["test"] = evaluate(run["checkpoint"], data["data_yaml"], "test", imgsz=train_config.imgsz, device=device)
            card[key]["val"] = {k: v for k, v in evaluate(run["checkpoint"], data["data_yaml"], "val", imgsz=train_config.imgsz,
                                                          device=device).items() if k in ("mAP50", "mAP50-95")}
            card[key]["parameters"] = count_parameters(model)[1]
            card[key]["cpu_latency_ms_at_%d" % train_config.imgsz] = latency[key]["latency_ms"]
            card[key]["cpu_latency_spread_ms"] = [latency[key]["min_ms"], latency[key]["max_ms"]]
            save_weights(model, tmp / target.name, {"command": command, "imgsz": train_config.imgsz})
        write_json(tmp / "card.json", card)
        write_text(tmp / "README.md", _card_text(card))
    return card


def _card_text(card: dict) -> str:
    lines = ["# lowrank-detect shipped weights", "",
             f"Written by `{card['command']}` (numbers measured by that command; test = held-out synthetic test split, "
             "val = the split ultralytics picked best.pt on).", "",
             "| model | params | test mAP50 | test mAP50-95 | val mAP50 | CPU ms (2 threads) |", "|---|---|---|---|---|---|"]
    for key in ("teacher", "student"):
        c = card[key]
        lat = next(v for k, v in c.items() if k.startswith("cpu_latency"))
        lines.append(f"| {key}: {c['model']} | {c['parameters']:,} | {c['test']['mAP50']:.3f} | {c['test']['mAP50-95']:.3f} | "
                     f"{c['val']['mAP50']:.3f} | {lat:.1f} |")
    lines += ["", "The student starts from the teacher's weights (SVD of its SS2D matrices) and trains for its own epochs "
              "on top, so on this short CPU recipe it can score above its under-trained teacher; the converged comparison "
              "is the GPU run (`bench/detect_gpu.py`, docs/results/detect.md). CPU latency is at the training size and "
              "measured on whatever machine ran the command: median of 9 rounds that time teacher and student in turn "
              "(min-max in card.json).", "",
              "Data: `" + json.dumps(card["data"]["config"]) + "`", ""]
    return "\n".join(lines)
