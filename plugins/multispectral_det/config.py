"""Configs of the multispectral_det recipes (frozen dataclasses; errors name the field).

Training runs on ultralytics' own trainer (its data pipeline, augmentation, TAL assignment and
validation are what a user of ultralytics expects), so :class:`DetectTrainConfig` maps onto
ultralytics' train arguments instead of nesting ``core.train.TrainConfig``. Defaults are DLRMamba's
(SGD, momentum 0.937, weight decay 5e-4, lr 0.01, batch 8) except the epoch count, which the paper
sets to 300 on real data sets and the synthetic default does not need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from lowrank_vision.core.validate import require

from .ss2d import LOW_RANK_TARGETS

__all__ = ["DetectTrainConfig", "DistillConfig", "BenchConfig"]


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
    time_s: Optional[float] = None
    """Wall-clock training budget in seconds (ultralytics' ``time=``: after each epoch it resizes the epoch count
    and the lr schedule to end on time, and stops at the budget); None trains for ``epochs``."""
    save_period: int = -1
    """Also keep ``weights/epoch<i>.pt`` (``i`` counts from 0) after every ``save_period`` epochs (-1: off)."""
    cache: bool = False
    """Keep decoded images in RAM (ultralytics' ``cache="ram"``): no TIFF decoding after the first epoch."""

    def __post_init__(self) -> None:
        require(self, "epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an int >= 1")
        require(self, "imgsz", isinstance(self.imgsz, int) and self.imgsz >= 32 and self.imgsz % 32 == 0, "a multiple of 32 >= 32")
        require(self, "batch", isinstance(self.batch, int) and self.batch >= 1, "an int >= 1")
        require(self, "optimizer", self.optimizer in ("SGD", "AdamW"), "'SGD' or 'AdamW'")
        require(self, "lr0", self.lr0 > 0, "> 0")
        require(self, "momentum", 0 <= self.momentum < 1, "in [0, 1)")
        require(self, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, "warmup_epochs", self.warmup_epochs >= 0, ">= 0")
        require(self, "mosaic", 0 <= self.mosaic <= 1, "in [0, 1]")
        require(self, "fraction", 0 < self.fraction <= 1, "in (0, 1]")
        require(self, "workers", isinstance(self.workers, int) and self.workers >= 0, "an int >= 0")
        require(self, "save_period", isinstance(self.save_period, int) and (self.save_period >= 1 or self.save_period == -1),
                "-1 or an int >= 1")
        require(self, "time_s", self.time_s is None or self.time_s > 0, "None or > 0 seconds")

    def ultralytics_args(self) -> dict:
        """Keyword arguments for ``YOLO.train`` (offline-safe: no AMP check download, no plots, no fonts)."""
        args = asdict(self)
        args.pop("resume")
        time_s = args.pop("time_s")
        if time_s is not None:
            args["time"] = time_s / 3600.0
        args["cache"] = "ram" if args["cache"] else False
        args.update(amp=False, plots=False, deterministic=True, verbose=False, exist_ok=True, val=True)
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
    align_norm: Literal["mse", "relative"] = "mse"
    """Scale of each alignment term (the paper writes squared norms and leaves it open): ``mse`` = mean over entries;
    ``relative`` = squared error over the teacher target's squared norm, so the three terms are unit-free and on
    comparable scales (under ``mse`` the hidden states are ~1e-4 in size and their term vanishes next to the others)."""
    train: DetectTrainConfig = field(default_factory=DetectTrainConfig)
    """The ultralytics run that trains the student."""

    def __post_init__(self) -> None:
        require(self, "rank_ratio", 0 < self.rank_ratio <= 1, "in (0, 1]")
        unknown = sorted(set(self.targets) - set(LOW_RANK_TARGETS))
        require(self, "targets", not unknown and len(self.targets) > 0, f"a non-empty subset of {LOW_RANK_TARGETS}")
        for name in ("w_task", "w_svd", "w_state", "w_feat"):
            require(self, name, getattr(self, name) >= 0, ">= 0")
        require(self, "w_task", self.w_task > 0, "> 0")
        require(self, "align_norm", self.align_norm in ("mse", "relative"), "'mse' or 'relative'")

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
        require(self, "imgsz", isinstance(self.imgsz, int) and self.imgsz >= 32 and self.imgsz % 32 == 0, "a multiple of 32 >= 32")
        require(self, "threads", isinstance(self.threads, int) and self.threads >= 1, "an int >= 1")
        require(self, "warmup", isinstance(self.warmup, int) and self.warmup >= 0, "an int >= 0")
        require(self, "repeats", isinstance(self.repeats, int) and self.repeats >= 1, "an int >= 1")
