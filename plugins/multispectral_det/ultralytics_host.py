"""Explicit registration of this plugin's modules with ultralytics, and small helpers around its model objects.

ultralytics has no plugin hook: ``parse_model`` (``ultralytics/nn/tasks.py``) looks every YAML module
name up in that module's globals. :func:`register_ultralytics` puts :class:`.model.RGBIRFusion` and
:class:`.ss2d.VSSBlock` there (an existing different object under the same name is an error, not a
silent overwrite). Both blocks keep their channel count, which is what ``parse_model`` assumes for
a module it does not know (``c2 = ch[f]``), and a YAML passes their input channels as the string
``c2`` -- ``parse_model`` resolves string arguments that name one of its locals, and ``c2`` holds
the previous layer's output channels at that point. Checkpoints (``best.pt``) pickle the classes
under this package's module paths, so loading one needs this package installed (not registered).
Importing the plugin registers automatically, right after ``ultralytics.nn.tasks`` is imported (``plugins/_on_import.py``).

polars: ultralytics' trainer reads its own ``results.csv`` back with polars when it saves a checkpoint
(``BaseTrainer.read_results_csv``), the only place training needs it. :func:`detection_trainer` is
its ``DetectionTrainer`` with that one method reading the CSV with the standard library, so
training works where polars is not installed (every recipe here trains through it).
"""

from __future__ import annotations

import csv
import functools
import io
import os
from pathlib import Path
from typing import Union

from torch import nn

__all__ = ["register_ultralytics", "REGISTERED_MODULES", "load_detection_model", "save_detection_model", "offline_environment",
           "detection_trainer", "read_results_csv"]


def _modules() -> dict[str, type]:
    from .model import RGBIRFusion
    from .ss2d import VSSBlock

    return {"RGBIRFusion": RGBIRFusion, "VSSBlock": VSSBlock}


REGISTERED_MODULES = ("RGBIRFusion", "VSSBlock")


def offline_environment() -> None:
    """Ultralytics settings for offline use: no connectivity checks (``YOLO_OFFLINE``); call before importing it."""
    os.environ.setdefault("YOLO_OFFLINE", "1")


def register_ultralytics() -> dict[str, type]:
    """Make the plugin's modules resolvable by name in ultralytics model YAMLs; returns what was registered."""
    from ultralytics.nn import tasks

    modules = _modules()
    for name, cls in modules.items():
        existing = tasks.__dict__.get(name)
        if existing is not None and existing is not cls:
            raise RuntimeError(f"register_ultralytics: ultralytics.nn.tasks already defines {name!r} ({existing!r}); "
                               "refusing to overwrite it")
        setattr(tasks, name, cls)
    return modules


def read_results_csv(data: bytes) -> dict[str, list]:
    """``{column: [values]}`` of an ultralytics ``results.csv`` (numbers as float), as its polars reader returns it."""
    rows = list(csv.reader(io.StringIO(data.decode())))
    if not rows:
        return {}

    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text.strip()

    header = [h.strip() for h in rows[0]]
    return {h: [value(r[i]) for r in rows[1:] if len(r) == len(header)] for i, h in enumerate(header)}


@functools.cache
def detection_trainer() -> type:
    """ultralytics' ``DetectionTrainer`` whose ``results.csv`` reader needs no polars."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    class DetectionTrainerNoPolars(DetectionTrainer):
        """``DetectionTrainer`` with a standard-library ``read_results_csv``."""

        def read_results_csv(self):
            try:
                return read_results_csv(self.csv.read_bytes())
            except (OSError, UnicodeDecodeError, csv.Error):
                return {}

    return DetectionTrainerNoPolars


def load_detection_model(path: Union[str, Path]) -> nn.Module:
    """The float32 ``DetectionModel`` inside an ultralytics checkpoint (``best.pt``/``last.pt``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    offline_environment()
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(path), device="cpu")
    return model.float().eval()


def save_detection_model(model: nn.Module, path: Union[str, Path], train_args: dict | None = None) -> Path:
    """Write ``model`` as a minimal ultralytics checkpoint that ``YOLO(path)`` loads (atomically)."""
    import copy
    from datetime import datetime, timezone

    import torch

    from lowrank_vision.core.files import atomic_path

    ckpt = {"date": datetime.now(timezone.utc).isoformat(), "model": copy.deepcopy(model).half(), "ema": None,
            "train_args": dict(train_args or {}), "epoch": -1, "best_fitness": None, "optimizer": None}
    if hasattr(ckpt["model"], "criterion"):
        ckpt["model"].criterion = None
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
