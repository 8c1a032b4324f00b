"""Training, distillation and evaluation recipes, all run by ultralytics' own trainer and validator.

* :func:`train_detector` -- any model YAML or checkpoint (the DLRMamba teacher ``dlrmamba-n``, or
  ``yolov8n.yaml`` as the plain baseline) on a multispectral data YAML.
* :func:`distill_student` -- the low-rank student of a trained teacher with structure-aware
  distillation (:mod:`.distill`); all alignment weights 0 gives the same student trained on the
  task loss only (the ablation's "low-rank, no distillation").
* :func:`evaluate` -- mAP50 and mAP50-95 (COCO-style, ultralytics' validator) on a split.
* :func:`evaluate_by_condition` -- the same on the images of a generated split that share a condition
  (night, fog, glare, thermal crossover, or none of them: ``clear``), from its ``conditions.json``.

Offline: ``amp=False`` (ultralytics' AMP check downloads weights), ``plots=False`` (plots download a
font), ``YOLO_OFFLINE=1`` (no connectivity probes), and every data YAML carries an absolute ``path``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

from .config import DetectTrainConfig, DistillConfig
from .ultralytics_host import offline_environment

__all__ = ["train_detector", "distill_student", "evaluate", "evaluate_by_condition", "check_data_yaml", "plateau_stopper", "batch_change_note",
           "CONDITIONS"]

Callbacks = Optional[Mapping[str, Callable]]

CONDITIONS = ("night", "fog", "glare", "crossover")


def check_data_yaml(data_yaml: Union[str, Path]) -> Path:
    """Validate a multispectral data YAML (labels, channel count) before ultralytics sees it."""
    from lowrank_vision.datasets.multispectral import validate_dataset

    validate_dataset(data_yaml, splits=("train", "val"), check_images=1)
    return Path(data_yaml).resolve()


def _yolo(source: Union[str, Path]):
    offline_environment()
    from ultralytics import YOLO

    from .ultralytics_host import register_ultralytics

    register_ultralytics()
    return YOLO(str(source), task="detect")


def plateau_stopper(patience: int = 3, min_delta: float = 0.005, metric: str = "metrics/mAP50(B)") -> Callable:
    """An ultralytics ``on_fit_epoch_end`` callback: stop training once ``metric`` (validation) has not beaten its
    best by ``min_delta`` for ``patience`` epochs. ``trainer.plateau`` records ``{"epoch", "best", "best_epoch"}``
    when it fires (ultralytics' own ``patience`` watches its fitness, mostly mAP50-95, and keeps no record). Calls made
    while ``trainer.stop`` is already set are ignored: ultralytics runs the event once more after training, on best.pt."""
    if not (isinstance(patience, int) and patience >= 1) or min_delta < 0:
        raise ValueError(f"plateau_stopper: patience must be an int >= 1 and min_delta >= 0, got {patience!r}, {min_delta!r}")
    state = {"best": float("-inf"), "best_epoch": 0}

    def on_fit_epoch_end(trainer) -> None:
        if trainer.stop:  # stopping anyway (last epoch, time up), or ultralytics' final_eval re-running the event on best.pt
            return
        value = float((trainer.metrics or {}).get(metric, float("nan")))
        epoch = int(trainer.epoch) + 1
        if value > state["best"] + min_delta:
            state.update(best=value, best_epoch=epoch)
        elif epoch - state["best_epoch"] >= patience:
            trainer.stop = True
            trainer.plateau = {"epoch": epoch, "best": state["best"], "best_epoch": state["best_epoch"]}

    return on_fit_epoch_end


def batch_change_note(requested: int, used: int) -> Optional[str]:
    """What to tell a user whose run ultralytics trained with another batch than asked (it halves the batch, up to
    three times, after a CUDA out-of-memory error in the first epoch); ``None`` when the batch was kept."""
    if used == requested:
        return None
    return (f"ultralytics trained this run with batch {used}, not the requested {requested} (it halves the batch after a CUDA "
            "out-of-memory error in the first epoch): the learning-rate warm-up and the results differ from the recipe's; "
            "free GPU memory or ask for that batch")


def _run(yolo, data_yaml: Path, cfg: DetectTrainConfig, out_dir: Path, name: str, device: str, trainer=None,
         callbacks: Callbacks = None) -> dict:
    from .ultralytics_host import detection_trainer

    trainer = trainer or detection_trainer()
    for event, fn in (callbacks or {}).items():
        yolo.add_callback(event, fn)
    last = Path(out_dir).resolve() / name / "weights" / "last.pt"
    if cfg.resume and last.is_file():  # continue an interrupted run from its last epoch (ultralytics' resume)
        yolo = _yolo(last)
        yolo.train(resume=True, trainer=trainer)
    else:
        args = cfg.ultralytics_args()
        yolo.train(data=str(data_yaml), project=str(Path(out_dir).resolve()), name=name, device=device, trainer=trainer, **args)
    tr = yolo.trainer
    batch_used = int(tr.batch_size)
    if (note := batch_change_note(cfg.batch, batch_used)) is not None:
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    best = Path(tr.best) if Path(tr.best).exists() else Path(tr.last)
    return {"checkpoint": str(best), "save_dir": str(tr.save_dir), "epochs": cfg.epochs, "epochs_run": int(tr.epoch) + 1,
            "batch_used": batch_used,
            "epochs_planned": int(tr.epochs), "stopped_by_time": bool(cfg.time_s) and int(tr.epoch) + 1 < int(tr.epochs),
            "val_metrics": {k: float(v) for k, v in (tr.metrics or {}).items()}, "plateau": getattr(tr, "plateau", None)}


def train_detector(model: Union[str, Path], data_yaml: Union[str, Path], cfg: DetectTrainConfig, out_dir: Union[str, Path],
                   name: str = "train", device: str = "cpu", callbacks: Callbacks = None) -> dict:
    """Train ``model`` (YAML or ``.pt``) on ``data_yaml``; returns the best checkpoint path and validation metrics.

    ``callbacks``: ``{ultralytics event: function(trainer)}``, e.g. ``{"on_fit_epoch_end": plateau_stopper()}``."""
    data_yaml = check_data_yaml(data_yaml)
    return _run(_yolo(model), data_yaml, cfg, Path(out_dir), name, device, callbacks=callbacks)


def distill_student(teacher_checkpoint: Union[str, Path], data_yaml: Union[str, Path], cfg: DistillConfig,
                    out_dir: Union[str, Path], name: str = "distill", device: str = "cpu", callbacks: Callbacks = None) -> dict:
    """Train the rank-``cfg.rank_ratio`` student of ``teacher_checkpoint`` (SVD-initialised) with DLRMamba's loss."""
    from . import model_yaml
    from .distill import make_sad_trainer

    teacher_checkpoint = Path(teacher_checkpoint)
    if not teacher_checkpoint.is_file():
        raise FileNotFoundError(f"teacher checkpoint {teacher_checkpoint} does not exist")
    data_yaml = check_data_yaml(data_yaml)
    trainer = make_sad_trainer(teacher_checkpoint, cfg)
    result = _run(_yolo(model_yaml("dlrmamba-n-lr50")), data_yaml, cfg.train, Path(out_dir), name, device, trainer=trainer,
                  callbacks=callbacks)
    result.update(rank_ratio=cfg.rank_ratio, distilled=cfg.distills, align_norm=cfg.align_norm,
                  weights={"task": cfg.w_task, "svd": cfg.w_svd, "state": cfg.w_state, "feat": cfg.w_feat})
    return result


def evaluate(checkpoint: Union[str, Path], data_yaml: Union[str, Path], split: str = "test", imgsz: int = 256,
             batch: int = 8, device: str = "cpu", out_dir: Optional[Union[str, Path]] = None) -> dict:
    """mAP50 / mAP50-95 (all classes and per class) of a checkpoint on ``split`` with ultralytics' validator."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    data_yaml = check_data_yaml(data_yaml)
    yolo = _yolo(checkpoint)
    extra = {"project": str(Path(out_dir).resolve()), "name": f"val_{split}", "exist_ok": True} if out_dir else {}
    m = yolo.val(data=str(data_yaml), split=split, imgsz=imgsz, batch=batch, device=device, plots=False, verbose=False,
                 workers=0, save_json=False, **extra)
    names = m.names
    per_class = {names[int(c)]: {"mAP50": float(m.box.ap50[i]), "mAP50-95": float(m.box.ap[i])}
                 for i, c in enumerate(m.box.ap_class_index)}
    return {"split": split, "mAP50": float(m.box.map50), "mAP50-95": float(m.box.map), "precision": float(m.box.mp),
            "recall": float(m.box.mr), "per_class": per_class, "checkpoint": str(checkpoint)}


def evaluate_by_condition(checkpoint: Union[str, Path], data_yaml: Union[str, Path], work_dir: Union[str, Path], split: str = "test",
                          imgsz: int = 256, batch: int = 8, device: str = "cpu") -> dict:
    """mAP50 / mAP50-95 per condition of a generated data set's ``split`` (``{condition: {"images": n, ...}}``).

    Each subset is a data set under ``work_dir/<condition>`` whose files link to the originals (no copies).
    Conditions with no image in ``split`` are left out.
    """
    import json
    import os

    from lowrank_vision.core.files import atomic_dir, write_text
    from lowrank_vision.datasets.multispectral.labels import read_data_yaml

    data_yaml = Path(data_yaml).resolve()
    table = data_yaml.parent / "conditions.json"
    if not table.is_file():
        raise FileNotFoundError(f"{table} does not exist (evaluate_by_condition needs a set written by write_dataset)")
    images = {k.split("/", 1)[1]: c for k, c in json.loads(table.read_text())["images"].items() if k.startswith(f"{split}/")}
    if not images:
        raise ValueError(f"evaluate_by_condition: split must be one of the generated splits, got {split!r} (no images)")
    groups = {c: [s for s, cond in images.items() if cond[c]] for c in CONDITIONS}
    groups["clear"] = [s for s, cond in images.items() if not any(cond[c] for c in CONDITIONS)]
    data = read_data_yaml(data_yaml)
    names = "".join(f"  {i}: {n}\n" for i, n in data["names"].items())
    out = {}
    for cond, stems in groups.items():
        if not stems:
            continue
        target = Path(work_dir).resolve() / cond
        with atomic_dir(target) as tmp:
            for kind, suffix in (("images", ".tif"), ("labels", ".txt")):
                (tmp / kind / "val").mkdir(parents=True)
                for stem in stems:
                    os.symlink(data_yaml.parent / kind / split / f"{stem}{suffix}", tmp / kind / "val" / f"{stem}{suffix}")
            write_text(tmp / "data.yaml", f"path: {target}\ntrain: images/val\nval: images/val\nchannels: {data['channels']}\n"
                                          f"nc: {data['nc']}\nnames:\n{names}")
        m = evaluate(checkpoint, target / "data.yaml", "val", imgsz=imgsz, batch=batch, device=device)
        out[cond] = {"images": len(stems), "mAP50": m["mAP50"], "mAP50-95": m["mAP50-95"], "per_class": m["per_class"]}
    return out
