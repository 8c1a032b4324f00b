"""Configs of the diffusion_nera plugin (frozen dataclasses; errors name the field)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.core.validate import require

__all__ = ["PipelineConfig", "PretrainConfig", "FinetuneConfig", "SampleConfig", "ADAPTERS"]

ADAPTERS = ("lora", "dora", "nera")



@dataclass(frozen=True)
class PipelineConfig:
    """Size of the small pipeline built from configs."""

    image_size: int = 16
    """Image side in pixels (latents are half of it); 16 keeps the shipped default CPU-sized."""
    latent_channels: int = 4
    """Channels of the VAE latent."""
    vae_channels: tuple[int, ...] = (8, 16)
    """VAE block widths (one 2x down-sampling per extra block)."""
    unet_channels: tuple[int, ...] = (16, 32)
    """UNet block widths (all but the last block have cross-attention)."""
    text_dim: int = 16
    """Width of the CLIP text encoder (= the UNet's cross-attention dim)."""
    text_layers: int = 2
    """Transformer layers of the text encoder."""
    head_dim: int = 8
    """UNet attention head dim."""
    norm_groups: int = 8
    """GroupNorm groups in UNet and VAE."""
    max_tokens: int = 12
    """Tokenizer model_max_length (bos + caption + eos, padded)."""

    def __post_init__(self) -> None:
        require(self, "image_size", isinstance(self.image_size, int) and self.image_size >= 8 and self.image_size % 8 == 0, "a multiple of 8 >= 8")
        require(self, "unet_channels", len(self.unet_channels) >= 2, "at least two widths")


@dataclass(frozen=True)
class PretrainConfig:
    """Training of the small base pipeline on the base textures (VAE first, then UNet + text encoder)."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """Size of the pipeline."""
    n_images: int = 1200
    """Training scenes (split ``train``)."""
    vae_steps: int = 200
    """VAE steps (MSE + small KL)."""
    kl_weight: float = 1e-4
    """Weight of the VAE's KL term."""
    batch_size: int = 16
    """Images per step."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=500, lr=1e-3, warmup_steps=50, log_every=50, progress=False,
                                                                   cuda_graph=True))
    """Trainer settings of the UNet + text-encoder stage (the VAE stage too, with ``vae_steps``); ``cuda_graph``: one
    captured step on a GPU (every batch has one shape; eager on a CPU, the reason in the result's ``cuda_graph``)."""

    def __post_init__(self) -> None:
        require(self, "n_images", isinstance(self.n_images, int) and self.n_images >= 1, "an int >= 1")
        require(self, "vae_steps", isinstance(self.vae_steps, int) and self.vae_steps >= 0, "an int >= 0")
        require(self, "batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an int >= 1")


@dataclass(frozen=True)
class FinetuneConfig:
    """Adapter fine-tuning of the UNet on the new concept (noise-prediction loss, the pipeline's scheduler)."""

    adapter: Literal["lora", "dora", "nera"] = "lora"
    """Adapter family from the core (``nera``: the paper's KAN form)."""
    rank: int = 8
    """Rank r."""
    alpha: Optional[float] = None
    """Scale numerator (``None``: alpha = rank)."""
    targets: tuple[str, ...] = ("*.to_q", "*.to_k", "*.to_v", "*.to_out.0")
    """Module-name globs of the wrapped layers (UNet attention projections by default)."""
    grid_size: int = 4
    """NeRA only: B-spline grid intervals."""
    spline_order: int = 1
    """NeRA only: B-spline order (1: the hat functions of the authors' code; the core's default is cubic, 3)."""
    n_images: int = 64
    """Scenes of split ``concept_train`` (+ as many base ``train`` scenes x ``base_mix`` to limit forgetting)."""
    base_mix: float = 0.0
    """Fraction of base-texture scenes mixed into the fine-tuning set."""
    batch_size: int = 16
    """Images per step."""
    ema: float = 0.0
    """EMA decay of the adapter weights (0: no EMA)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300, lr=2e-3, warmup_steps=10, log_every=10, progress=False,
                                                                   cuda_graph=True))
    """Trainer settings (``cuda_graph`` as in :class:`PretrainConfig`)."""

    def __post_init__(self) -> None:
        require(self, "adapter", self.adapter in ADAPTERS, f"one of {ADAPTERS}")
        require(self, "rank", isinstance(self.rank, int) and self.rank >= 1, "an int >= 1")
        require(self, "n_images", isinstance(self.n_images, int) and self.n_images >= 1, "an int >= 1")
        require(self, "batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an int >= 1")
        require(self, "ema", 0.0 <= self.ema < 1.0, "in [0, 1)")
        require(self, "base_mix", 0.0 <= self.base_mix <= 1.0, "in [0, 1]")
        require(self, "targets", len(self.targets) >= 1, "a non-empty tuple of globs")


@dataclass(frozen=True)
class SampleConfig:
    """Sampling with the stock pipeline call."""

    steps: int = 20
    """DDIM steps."""
    guidance: float = 3.0
    """Classifier-free guidance scale (1: none)."""
    seed: int = 0
    """Seed of the initial latents."""

    def __post_init__(self) -> None:
        require(self, "steps", isinstance(self.steps, int) and self.steps >= 1, "an int >= 1")
        require(self, "guidance", self.guidance >= 1.0, ">= 1")
