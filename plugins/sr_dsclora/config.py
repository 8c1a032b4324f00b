"""Configs of the SR plugin: the SPAN network, DSCLoRA fine-tuning and the SR training data.

Frozen dataclasses validated on construction; an error names ``<Class>.<field>``. Derived
configs are made with :func:`dataclasses.replace`, never by mutating one. Training-loop settings
(steps, learning rate, seed, checkpoints, device) live in the nested
:class:`lowrank_vision.core.train.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.core.validate import require, require_ints

__all__ = ["SPANConfig", "DSCLoRAConfig", "SRTrainConfig", "TrainConfig", "SCALES", "sr_train_defaults"]

SCALES = (2, 3, 4)
"""Upscaling factors SPAN is built for."""


@dataclass(frozen=True)
class SPANConfig:
    """Hyper-parameters of :class:`~.model.SPAN`."""

    scale: Literal[2, 3, 4] = 4
    """Upscaling factor."""
    channels: int = 26
    """Feature channels (SPAN uses 48, the DSCLoRA challenge model 26)."""
    in_channels: int = 3
    """Channels of the input image."""
    out_channels: int = 3
    """Channels of the output image."""
    gain: int = 2
    """Channel expansion inside each Conv3XC's training form."""
    img_range: float = 255.0
    """The mean-subtracted input is multiplied by this (and the output divided)."""

    def __post_init__(self) -> None:
        require(self, "scale", self.scale in SCALES, "2, 3 or 4")
        require_ints(self, "channels", "in_channels", "out_channels", "gain", expected="a positive int")
        require(self, "img_range", self.img_range > 0, "> 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DSCLoRAConfig:
    """Ranks and loss weights of DSCLoRA fine-tuning."""

    block_rank: int = 2
    """ConvLoRA rank in the 18 block convs (the SConvLBs)."""
    block_alpha: float = 4.0
    """ConvLoRA alpha in the block convs (scale = alpha / rank)."""
    tail_rank: int = 8
    """ConvLoRA rank on ``conv_2`` and the pixel-shuffle conv."""
    tail_alpha: float = 16.0
    """ConvLoRA alpha on the two tail convs."""
    lambda_rec: float = 1.0
    """Weight of the L1 reconstruction loss against HR."""
    lambda_ts: float = 0.0
    """Weight of the L1 loss between student and teacher outputs."""
    lambda_ad: float = 1.0
    """Weight of the spatial-affinity distillation loss."""
    affinity_side: int = 16
    """Features are average-pooled to at most this side before the HW x HW affinity."""

    def __post_init__(self) -> None:
        require_ints(self, "block_rank", "tail_rank", "affinity_side", expected="a positive int")
        for name in ("block_alpha", "tail_alpha"):
            require(self, name, getattr(self, name) > 0, "> 0")
        for name in ("lambda_rec", "lambda_ts", "lambda_ad"):
            require(self, name, getattr(self, name) >= 0, ">= 0")
        if self.lambda_rec == self.lambda_ts == self.lambda_ad == 0:
            raise ValueError("DSCLoRAConfig: at least one of lambda_rec, lambda_ts, lambda_ad must be > 0")

    @classmethod
    def from_ranks(cls, block_rank: int = 2, tail_rank: int = 8, **kwargs) -> "DSCLoRAConfig":
        """Ranks with ``alpha = 2 * rank`` (the paper's ratio), other fields as given."""
        return cls(block_rank=block_rank, block_alpha=2.0 * block_rank, tail_rank=tail_rank, tail_alpha=2.0 * tail_rank, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)


def sr_train_defaults(**overrides) -> TrainConfig:
    """The SR loop settings: cosine schedule, no gradient clipping, 300 steps at lr 1e-3; on a GPU the whole step is
    one captured CUDA graph (fixed patch batches; the trainer runs eagerly where it cannot, e.g. on a CPU or with the
    distillation loss's host metrics, and says why in ``TrainResult.cuda_graph``)."""
    values = dict(max_steps=300, lr=1e-3, scheduler="cosine", max_grad_norm=None, cuda_graph=True)
    values.update(overrides)
    return TrainConfig(**values)


@dataclass(frozen=True)
class SRTrainConfig:
    """Model size and training data of ``train`` / ``finetune``; the loop settings are in ``train``."""

    scale: Literal[2, 3, 4] = 4
    """Upscaling factor."""
    channels: int = 26
    """SPAN feature channels (``finetune`` and ``train --init`` take them from the checkpoint)."""
    batch_size: int = 16
    """Patches per optimizer step."""
    lr_patch: int = 32
    """LR patch side; the HR patch is ``scale`` times larger."""
    data: Optional[str] = None
    """Folder of HR images (``None``: the bundled train photos)."""
    lr_dir: Optional[str] = None
    """Folder of matching LR images (paired data); ``None``: bicubic LR from ``data``."""
    num_workers: int = 0
    """DataLoader worker processes."""
    train_form: Literal["branches", "deployed"] = "branches"
    """``"branches"``: SPAN's re-parameterisable training form (the paper); ``"deployed"``: train the
    folded 3x3 convs directly (about 4x cheaper, used for the short CPU runs)."""
    train: TrainConfig = field(default_factory=sr_train_defaults)
    """The training loop (:func:`lowrank_vision.core.train.fit`): steps, lr, seed, device, checkpoints."""

    def __post_init__(self) -> None:
        require(self, "scale", self.scale in SCALES, "2, 3 or 4")
        require_ints(self, "channels", "batch_size", expected="a positive int")
        require(self, "lr_patch", isinstance(self.lr_patch, int) and self.lr_patch >= 8, "an int >= 8")
        require(self, "num_workers", isinstance(self.num_workers, int) and self.num_workers >= 0, "an int >= 0")
        require(self, "train_form", self.train_form in ("branches", "deployed"), "'branches' or 'deployed'")
        require(self, "train", isinstance(self.train, TrainConfig), "a TrainConfig")
        if self.lr_dir is not None and self.data is None:
            raise ValueError(f"SRTrainConfig.lr_dir needs data (the HR folder) as well, got data=None and lr_dir={self.lr_dir!r}")

    def to_dict(self) -> dict:
        return asdict(self)
