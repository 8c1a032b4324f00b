"""Configs of the multispectral_det recipes (frozen dataclasses; errors name the field).

Training runs on ultralytics' own trainer (its data pipeline, augmentation, TAL assignment and
validation are what a user of ultralytics expects), so :class:`DetectTrainConfig` maps onto
ultralytics' train arguments instead of nesting ``core.train.TrainConfig``. Defaults are DLRMamba's
(SGD, momentum 0.937, weight decay 5e-4, lr 0.01, batch 8) except the epoch count, which the paper
sets to 300 on real data sets and the synthetic default does not need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from .ss2d import LOW_RANK_TARGETS

__all__ = ["DetectTrainConfig", "DistillConfig", "BenchConfig"]


def _need(obj: object, ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"{type(obj).__name__}.{name} must be {expected}, got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class DetectTrainConfig:
    """One ultralytics training run."""

    epochs: int = 30
    """Epochs over the training split."""
    imgsz: int = 256
    """Training/validation image size (multiple of 32)."""
    batch: int = 8
    """Images per batch (DLRMamba: 8)."""
    optimizer: Literal["SGD", "AdamW"] = "SGD"
    """Optimizer (DLRMamba: SGD)."""
    lr0: float = 0.01
    """Initial learning rate (DLRMamba: 0.01)."""
    momentum: float = 0.937
    """SGD momentum / Adam beta1 (DLRMamba: 0.937)."""
    weight_decay: float = 5e-4
    """Weight decay (DLRMamba: 5e-4)."""
    warmup_epochs: float = 1.0
    """Linear warm-up epochs (ultralytics' default is 3)."""
    mosaic: float = 1.0
    """Mosaic augmentation probability."""
    close_mosaic: int = 5
    """Turn mosaic off for the last N epochs."""
    fraction: float = 1.0
    """Fraction of the training split to use."""
    seed: int = 0
    """Seed of ultralytics' run (``deterministic=True``)."""
    workers: int = 0
    """Data-loader workers (0: in the main process)."""
    patience: int = 100
    """Early-stopping patience in epochs on validation fitness."""
    resume: bool = False
    """Continue ``<out>/<name>/weights/last.pt`` if an interrupted run left one (else start fresh)."""

    def __post_init__(self) -> None:
        _need(self, isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "an int >= 1")
        _need(self, isinstance(self.imgsz, int) and self.imgsz >= 32 and self.imgsz % 32 == 0, "imgsz", "a multiple of 32 >= 32")
        _need(self, isinstance(self.batch, int) and self.batch >= 1, "batch", "an int >= 1")
        _need(self, self.optimizer in ("SGD", "AdamW"), "optimizer", "'SGD' or 'AdamW'")
        _need(self, self.lr0 > 0, "lr0", "> 0")
        _need(self, 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        _need(self, self.weight_decay >= 0, "weight_decay", ">= 0")
        _need(self, self.warmup_epochs >= 0, "warmup_epochs", ">= 0")
        _need(self, 0 <= self.mosaic <= 1, "mosaic", "in [0, 1]")
        _need(self, 0 < self.fraction <= 1, "fraction", "in (0, 1]")
        _need(self, isinstance(self.workers, int) and self.workers >= 0, "workers", "an int >= 0")

    def ultralytics_args(self) -> dict:
        """Keyword arguments for ``YOLO.train`` (offline-safe: no AMP check download, no plots, no fonts)."""
        args = asdict(self)
        args.pop("resume")
        args.update(amp=False, plots=False, deterministic=True, verbose=False, exist_ok=True, cache=False, val=True)
        return args


@dataclass(frozen=True)
class DistillConfig:
    """Structure-aware distillation (DLRMamba Sec. III-C) of a low-rank student from a full-rank teacher."""

    rank_ratio: float = 0.5
    """Parameter ratio of every factorised matrix and state-mode ratio of the student's SS2D."""
    targets: tuple[str, ...] = LOW_RANK_TARGETS
    """What the student factorises: in_proj, out_proj, x_proj, dt_proj, A, state."""
    w_task: float = 1.0
    """Weight of ultralytics' detection loss (DLRMamba: 1.0)."""
    w_svd: float = 0.5
    """Weight of the SVD alignment of the student's factors with the teacher's truncated SVD (DLRMamba: 0.5)."""
    w_state: float = 0.1
    """Weight of the hidden-state alignment (DLRMamba: 0.1)."""
    w_feat: float = 1.5
    """Weight of the SS2D output (feature) reconstruction (DLRMamba: 1.5)."""
    train: DetectTrainConfig = field(default_factory=DetectTrainConfig)
    """The ultralytics run that trains the student."""

    def __post_init__(self) -> None:
        _need(self, 0 < self.rank_ratio <= 1, "rank_ratio", "in (0, 1]")
        unknown = sorted(set(self.targets) - set(LOW_RANK_TARGETS))
        _need(self, not unknown and len(self.targets) > 0, "targets", f"a non-empty subset of {LOW_RANK_TARGETS}")
        for name in ("w_task", "w_svd", "w_state", "w_feat"):
            _need(self, getattr(self, name) >= 0, name, ">= 0")
        _need(self, self.w_task > 0, "w_task", "> 0")

    @property
    def distills(self) -> bool:
        """False when every alignment weight is 0 (the 'student without distillation' baseline)."""
        return (self.w_svd, self.w_state, self.w_feat) != (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class BenchConfig:
    """Speed measurement."""

    imgsz: int = 640
    """Input side (DLRMamba and ultralytics report 640)."""
    threads: int = 2
    """CPU threads."""
    warmup: int = 1
    """Untimed runs first."""
    repeats: int = 3
    """Timed runs (the median is reported)."""

    def __post_init__(self) -> None:
        _need(self, isinstance(self.imgsz, int) and self.imgsz >= 32 and self.imgsz % 32 == 0, "imgsz", "a multiple of 32 >= 32")
        _need(self, isinstance(self.threads, int) and self.threads >= 1, "threads", "an int >= 1")
        _need(self, isinstance(self.warmup, int) and self.warmup >= 0, "warmup", "an int >= 0")
        _need(self, isinstance(self.repeats, int) and self.repeats >= 1, "repeats", "an int >= 1")
