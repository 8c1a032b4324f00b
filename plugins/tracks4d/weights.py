"""Shipped encoder weights: save/load (safetensors + JSON metadata) and the command that makes them.

:func:`make_default_weights` trains one encoder per candidate learning rate on generated *train*
scenes, picks the candidate with the lowest mean depth AbsRel on the *val* scenes, scores it on the
*test* scenes (feed-forward; and the per-scene baseline on the first few), and writes the weights,
``tracks4d_small.json`` (config, seeds, numbers) and ``README.md`` (the card) itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import torch

from lowrank_vision.core.files import atomic_path, write_json, write_text

from .config import BaselineConfig, FinetuneConfig, ModelConfig, TrainRunConfig
from .model import TracksTo4DNet

__all__ = ["DEFAULT_WEIGHTS", "WeightsError", "save_weights", "load_weights", "make_default_weights"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "tracks4d_small.safetensors"
_META_KEY = "lowrank_tracks4d"


class WeightsError(ValueError):
    """A weights file that is missing its metadata, or made for another model."""


def save_weights(path: Path, model: TracksTo4DNet, meta: dict, dtype: Optional[torch.dtype] = None) -> Path:
    """Write the encoder's state dict and ``meta`` (plus its ModelConfig) to one safetensors file, atomically.

    ``dtype`` (e.g. ``torch.float16``) stores the floating tensors at that precision (half the size);
    :func:`load_weights` loads them into a float32 model.
    """
    from safetensors.torch import save_file

    meta = {**meta, "model_config": asdict(model.config)}
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    return path


def load_weights(path: Optional[Path] = None, device: str = "cpu") -> tuple[TracksTo4DNet, dict]:
    """The encoder and its metadata from ``path`` (default: the shipped weights)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path or DEFAULT_WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
        state = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise WeightsError(f"{path}: no '{_META_KEY}' metadata; not a tracks4d weights file")
    meta = json.loads(raw)
    model = TracksTo4DNet(ModelConfig(**meta["model_config"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: tensors do not match the recorded model config ({exc})") from exc
    return model.to(device).eval(), meta


def make_default_weights(out_dir: Path = WEIGHTS_DIR, config: TrainRunConfig = TrainRunConfig(),
                         learning_rates: tuple[float, ...] = (1e-3, 3e-3), test_scenes: int = 8, baseline_scenes: int = 2,
                         baseline: BaselineConfig = BaselineConfig(), device: str = "cpu", command: str = "") -> dict:
    """Train, select on val, score on test, and write weights + JSON + card into ``out_dir``."""
    from .commands import evaluate_scenes

    candidates = []
    for lr in learning_rates:
        cfg = replace(config, train=replace(config.train, lr=lr, progress=False))
        start = time.perf_counter()
        model, history = _train(cfg, device)
        seconds = time.perf_counter() - start
        val = evaluate_scenes(model, "val", config.val_scenes, config.scene, methods=("feedforward",), device=device)
        candidates.append({"lr": lr, "train_seconds": seconds, "final_train_loss": history[-1]["loss"],
                           "val": val["summary"]["feedforward"], "model": model, "history": history})
    best = min(candidates, key=lambda c: c["val"]["depth_abs_rel"])
    methods = ("feedforward", "finetune", "baseline")
    test = evaluate_scenes(best["model"], "test", test_scenes, config.scene, methods=("feedforward",), device=device)
    compare = evaluate_scenes(best["model"], "test", baseline_scenes, config.scene, methods=methods, device=device,
                              finetune=FinetuneConfig(steps=100), baseline=baseline)
    from lowrank_vision.datasets.tracks import split_seeds

    record = {
        "command": command or "lowrank-tracks4d train --make-default-weights",
        "data": {"generator": "lowrank_vision.datasets.tracks.make_scene", "scene_config": asdict(config.scene),
                 "train_seeds": [split_seeds("train", config.train_scenes)[0], split_seeds("train", config.train_scenes)[-1]],
                 "val_seeds": split_seeds("val", config.val_scenes), "test_seeds": split_seeds("test", test_scenes)},
        "selection": {"criterion": "lowest mean depth AbsRel on the val scenes (feed-forward)",
                      "candidates": [{k: c[k] for k in ("lr", "train_seconds", "final_train_loss", "val")} for c in candidates],
                      "chosen_lr": best["lr"]},
        "train_config": json.loads(json.dumps(asdict(replace(config, train=replace(config.train, lr=best["lr"]))), default=str)),
        "test_feedforward": test["summary"]["feedforward"],
        "test_comparison": {"scenes": baseline_scenes, "summary": compare["summary"]},
        "device": device, "torch": torch.__version__,
    }
    out_dir = Path(out_dir)
    save_weights(out_dir / DEFAULT_WEIGHTS.name, best["model"], {"card": "README.md", **{k: record[k] for k in ("command", "data")}})
    write_json(out_dir / "tracks4d_small.json", record)
    write_text(out_dir / "README.md", _card(record))
    return record


def _train(cfg: TrainRunConfig, device: str):
    from .recipes import train_model

    return train_model(cfg, device=device)


def _fmt(summary: dict, keys=("depth_abs_rel", "depth_abs_rel_static", "depth_delta_1_25", "ate", "rpe_rot_deg", "reprojection_px", "seconds")) -> str:
    return " | ".join(f"{summary.get(k, float('nan')):.4g}" for k in keys)


def _card(record: dict) -> str:
    """The weights card, written from the measured record (no number typed by hand)."""
    head = "| method | depth AbsRel | AbsRel static | δ<1.25 | ATE | RPE rot (deg) | reprojection (px) | seconds/scene |\n|---|---|---|---|---|---|---|---|\n"
    comp = record["test_comparison"]["summary"]
    rows = "".join(f"| {m} | {_fmt(s)} |\n" for m, s in comp.items())
    cands = "".join(f"| {c['lr']:g} | {c['val']['depth_abs_rel']:.4g} | {c['val']['reprojection_px']:.4g} | {c['train_seconds']:.0f} |\n"
                    for c in record["selection"]["candidates"])
    d = record["data"]
    return (
        "# tracks4d_small: TracksTo4D-style encoder trained on generated scenes (CPU)\n\n"
        f"Made by `{record['command']}` (this file, `tracks4d_small.json` and the weights are written by that command).\n\n"
        f"Data: scenes from `{d['generator']}` with {d['scene_config']}; train seeds {d['train_seeds'][0]}..{d['train_seeds'][1]}, "
        f"val seeds {d['val_seeds'][0]}..{d['val_seeds'][-1]}, test seeds {d['test_seeds'][0]}..{d['test_seeds'][-1]} (disjoint ranges).\n\n"
        f"Learning rate chosen on **val** ({record['selection']['criterion']}):\n\n| lr | val AbsRel | val reprojection (px) | train s |\n|---|---|---|---|\n{cands}\n"
        f"Held-out **test** scenes, feed-forward only: {_fmt(record['test_feedforward'])} "
        "(AbsRel | AbsRel static | δ<1.25 | ATE | RPE rot | reprojection px | s).\n\n"
        f"Test comparison on the first {record['test_comparison']['scenes']} test scenes (finetune = 100 Adam steps of test-time fine-tuning):\n\n"
        f"{head}{rows}\n"
        "This is a small CPU model trained for minutes; it is a default for the app, not the paper's model. "
        "`bench/tracks4d_gpu.py` trains the paper-sized encoder on a GPU.\n"
    )
