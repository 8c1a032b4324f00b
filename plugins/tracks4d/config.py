"""Configuration of the tracks4d plugin (frozen dataclasses; every field checked on construction).

Paper values (TracksTo4D, arXiv 2404.07097 and its released configs) are given next to the CPU-sized
defaults; :func:`paper_model` returns the paper-sized network for GPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.datasets.tracks.synthetic import SceneConfig
from lowrank_vision.core.validate import require, require_ints

__all__ = ["ModelConfig", "LossConfig", "TrainRunConfig", "FinetuneConfig", "BaselineConfig", "paper_model"]



@dataclass(frozen=True)
class ModelConfig:
    """The track encoder and its heads."""

    width: int = 32
    """Token width (paper: 256)."""
    depth: int = 2
    """Alternating blocks, each = attention across frames then across points (paper: 3)."""
    heads: int = 4
    """Attention heads (paper: 16)."""
    mlp_ratio: int = 2
    """MLP width / token width (paper: 2048/256 = 8)."""
    octaves: int = 6
    """Positional-encoding octaves of the track coordinates (paper: 12)."""
    num_basis: int = 8
    """K, the number of basis points per track; basis 0 is the static one (paper: 12). K = 1 is rigid."""
    conv_kernel: int = 9
    """Temporal kernel of the per-frame head, circular padding (paper: 31; released config 15)."""
    focal_range: float = 0.05
    """Per-frame focal = f0 · (1 + focal_range · x) when the focal is not known (paper: 0.05)."""
    init_depth: float = 5.0
    """Depth of the initial back-projection of each track (sets the scene scale; metrics are scale-free)."""
    gamma_scale: float = 0.01
    """γ = gamma_scale · (ELU(x) + 1) + 1e-5, in normalised image units (paper: scale 1)."""

    def __post_init__(self) -> None:
        require_ints(self, "width", "depth", "heads", "mlp_ratio", "octaves", "num_basis", "conv_kernel")
        require(self, "width", self.width % self.heads == 0, f"divisible by heads={self.heads}")
        require(self, "conv_kernel", self.conv_kernel % 2 == 1, "odd")
        require(self, "focal_range", 0 <= self.focal_range < 1, "in [0, 1)")
        require(self, "init_depth", self.init_depth > 0, "> 0")
        require(self, "gamma_scale", self.gamma_scale > 0, "> 0")


def paper_model() -> ModelConfig:
    """The network size of the paper (for GPU training; far too slow for the CPU default)."""
    return ModelConfig(width=256, depth=3, heads=16, mlp_ratio=8, octaves=12, num_basis=12, conv_kernel=15)


@dataclass(frozen=True)
class LossConfig:
    """Weights of the unsupervised losses (paper: 1, 50, 1, 0.001)."""

    static_weight: float = 1.0
    """γ-weighted static reprojection, mean over visible of log(γ + r²/γ)."""
    dynamic_weight: float = 50.0
    """Reprojection of the full low-rank model, mean over visible of |r|."""
    negative_depth_weight: float = 1.0
    """Mean of max(min_depth - z, 0) over every point and frame."""
    sparsity_weight: float = 0.001
    """Mean |B_k| / stopgrad(γ) over the non-static basis (k >= 1)."""
    min_depth: float = 0.01
    """Depth below which a point is penalised, and the clamp of z in the projection."""

    def __post_init__(self) -> None:
        for n in ("static_weight", "dynamic_weight", "negative_depth_weight", "sparsity_weight", "min_depth"):
            require(self, n, getattr(self, n) >= 0, ">= 0")
        require(self, "min_depth", self.min_depth > 0, "> 0")


@dataclass(frozen=True)
class TrainRunConfig:
    """Training of the encoder on generated scenes (``lowrank-tracks4d train``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Network."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    scene: SceneConfig = field(default_factory=lambda: SceneConfig(frames=16, points=64))
    """Generated scenes (frames, points, noise, occlusion); CPU-sized by default."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1500, lr=1e-3, warmup_steps=20, log_every=20, cuda_graph=True))
    """Optimizer and loop (core.train.fit). ``cuda_graph``: on a GPU the whole step replays as one captured CUDA graph
    (the batches have static shapes; the CPU trainer ignores it and records "device is cpu")."""
    train_scenes: int = 256
    """Number of training scenes (seeds from the 'train' range)."""
    val_scenes: int = 8
    """Number of validation scenes (seeds from the 'val' range)."""
    batch_size: int = 4
    """Scenes per batch."""
    rigid_warmup_steps: int = 500
    """First optimizer steps that fit the static basis alone with a plain L1 reprojection (as the baseline's
    rigid stage; stands in for the paper's pose pre-training phase). Without it the CPU encoder settled in the
    depth-reversed solution (val AbsRel 2.01 -> 0.23 with 500 of 1500 steps). After a resume the count restarts
    at the first step of the resumed run."""
    rotation_first_steps: int = 0
    """First steps of the rigid warm-up in which the cameras only rotate (translation held at zero), so that the
    shared image motion goes to the rotation and the translation's sign comes from parallax (the docstring of
    recipes.py: it fixes per-scene fits but did not keep the encoder out of the depth-reversed solution on small
    CPU runs, hence off by default); at most ``rigid_warmup_steps``."""

    def __post_init__(self) -> None:
        require_ints(self, "train_scenes", "val_scenes", "batch_size")
        require(self, "rigid_warmup_steps", isinstance(self.rigid_warmup_steps, int) and self.rigid_warmup_steps >= 0, "an int >= 0")
        require(self, "rotation_first_steps", isinstance(self.rotation_first_steps, int)
                and 0 <= self.rotation_first_steps <= self.rigid_warmup_steps, f"an int in [0, rigid_warmup_steps={self.rigid_warmup_steps}]")


@dataclass(frozen=True)
class FinetuneConfig:
    """Test-time fine-tuning of the encoder on one video with the same unsupervised loss."""

    steps: int = 0
    """Adam steps (0: plain feed-forward inference; paper: 500)."""
    lr: float = 3e-4
    """Learning rate (paper: 1e-4)."""
    method: Literal["full", "lora"] = "full"
    """'full' tunes every weight; 'lora' tunes LoRA adapters (lowrank_vision.core) on the linear layers."""
    rank: int = 8
    """LoRA rank when method='lora'."""
    rigid_steps: int = 0
    """First steps that fit the static basis alone with a plain L1 reprojection (as the baseline's rigid stage)
    before the full loss; the lowest-loss iterate is picked after them."""

    def __post_init__(self) -> None:
        require(self, "steps", isinstance(self.steps, int) and self.steps >= 0, "an int >= 0")
        require(self, "lr", self.lr > 0, "> 0")
        require(self, "method", self.method in ("full", "lora"), "one of 'full', 'lora'")
        require_ints(self, "rank")
        require(self, "rigid_steps", isinstance(self.rigid_steps, int) and 0 <= self.rigid_steps < max(self.steps, 1),
                "an int >= 0 and < steps")


@dataclass(frozen=True)
class BaselineConfig:
    """Per-scene optimisation of the same motion model, no network (the baseline)."""

    steps: int = 1000
    """Adam steps."""
    lr: float = 5e-3
    """Learning rate (5e-3 chosen over 1e-2 on val scene 200000: 1e-2 fell into the mirrored solution)."""
    num_basis: int = 8
    """K of the per-scene model."""
    rigid_fraction: float = 0.3
    """Fraction of the steps that fit the static term only (cameras first), before the motion basis."""
    starts: int = 2
    """Initial camera sweeps tried in the rigid stage (+x, -x, +y, -y, diagonals; at most 8)."""

    def __post_init__(self) -> None:
        require_ints(self, "steps", "num_basis")
        require(self, "rigid_fraction", 0.0 <= self.rigid_fraction < 1.0, "in [0, 1)")
        require(self, "starts", isinstance(self.starts, int) and 1 <= self.starts <= 8, "an int in [1, 8]")
        require(self, "lr", self.lr > 0, "> 0")
