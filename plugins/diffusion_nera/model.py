"""A small Stable-Diffusion-shaped pipeline built from configs (no hub download).

UNet2DConditionModel + AutoencoderKL + CLIPTextModel + a word-level tokenizer trained locally
with ``tokenizers`` and wrapped in ``PreTrainedTokenizerFast``, assembled into a stock
``StableDiffusionPipeline`` with a ``DDIMScheduler``. Sizes come from :class:`PipelineConfig`;
``load_pipeline(dir)`` reads any diffusers folder with ``from_pretrained(local_files_only=True)``.
:func:`build_sd3_pipeline` gives the DiT alternative: a stock ``StableDiffusion3Pipeline`` around a
small ``SD3Transformer2DModel`` (MMDiT) on the same latent grid, with CLIP text encoders over the
same tokenizer and a ``FlowMatchEulerDiscreteScheduler``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from lowrank_vision.datasets.diffusion.procedural import vocabulary

from .config import PipelineConfig

__all__ = ["build_tokenizer", "build_pipeline", "build_sd3_pipeline", "load_pipeline", "load_sd3_pipeline", "encode_prompts",
           "ATTENTION_TARGETS", "T5_TOKENS"]

ATTENTION_TARGETS = ("*.to_q", "*.to_k", "*.to_v", "*.to_out.0")
"""The attention projections every adapter wraps (all four, including ``to_out.0``)."""

SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_tokenizer(words: list[str], max_length: int):
    """Word-level tokenizer over ``words`` (trained with ``tokenizers``), CLIP-style bos/eos, padded to ``max_length``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL), min_frequency=1)
    tok.train_from_iterator([" ".join(words)], trainer=trainer)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=max_length)


def build_pipeline(config: PipelineConfig, seed: int = 0):
    """A fresh, randomly initialised ``StableDiffusionPipeline`` of the configured size."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocabulary(), config.max_tokens)
    text_encoder = _clip_text_encoder(config, tokenizer)
    vae = _vae(config)
    vae_ch = tuple(config.vae_channels)
    unet_ch = tuple(config.unet_channels)
    latent = config.image_size // 2 ** (len(vae_ch) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=config.latent_channels, out_channels=config.latent_channels,
        block_out_channels=unet_ch, layers_per_block=1, norm_num_groups=config.norm_groups,
        down_block_types=("CrossAttnDownBlock2D",) * (len(unet_ch) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(unet_ch) - 1),
        cross_attention_dim=config.text_dim, attention_head_dim=config.head_dim)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


T5_TOKENS = 4
"""Prompt tokens of the absent T5 encoder in the DiT pipeline (zeros, as ``StableDiffusion3Pipeline`` pads without it)."""


def _clip_text_encoder(config: PipelineConfig, tokenizer, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_dim, intermediate_size=2 * config.text_dim,
        num_hidden_layers=config.text_layers, num_attention_heads=4, max_position_embeddings=config.max_tokens,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        projection_dim=config.text_dim))


def _vae(config: PipelineConfig, **extra):
    from diffusers import AutoencoderKL

    vae_ch = tuple(config.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=config.latent_channels, block_out_channels=vae_ch,
                         down_block_types=("DownEncoderBlock2D",) * len(vae_ch), up_block_types=("UpDecoderBlock2D",) * len(vae_ch),
                         layers_per_block=1, norm_num_groups=config.norm_groups, sample_size=config.image_size, **extra)


def build_sd3_pipeline(config: PipelineConfig, num_layers: int = 2, num_heads: int = 2, seed: int = 0):
    """A fresh DiT pipeline: ``StableDiffusion3Pipeline`` with a small ``SD3Transformer2DModel`` (MMDiT).

    Two CLIP text encoders with projection (the pipeline's ``text_encoder`` and ``text_encoder_2``) over our
    tokenizer, no T5 (``text_encoder_3=None``: the pipeline pads with :data:`T5_TOKENS` zero tokens), so
    ``joint_attention_dim`` and ``pooled_projection_dim`` are ``2 * text_dim``; a ``FlowMatchEulerDiscreteScheduler``.
    The transformer's joint blocks have ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` on the image stream.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocabulary(), config.max_tokens)
    latent = config.image_size // 2 ** (len(config.vae_channels) - 1)
    transformer = SD3Transformer2DModel(
        sample_size=latent, patch_size=2, in_channels=config.latent_channels, out_channels=config.latent_channels, num_layers=num_layers,
        attention_head_dim=config.head_dim, num_attention_heads=num_heads, joint_attention_dim=2 * config.text_dim,
        caption_projection_dim=config.head_dim * num_heads, pooled_projection_dim=2 * config.text_dim, pos_embed_max_size=latent)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000),
                                    vae=_vae(config, shift_factor=0.0, scaling_factor=1.0),
                                    text_encoder=_clip_text_encoder(config, tokenizer, True), tokenizer=tokenizer,
                                    text_encoder_2=_clip_text_encoder(config, tokenizer, True), tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_sd3_pipeline(directory: str | Path, device: str = "cpu"):
    """``StableDiffusion3Pipeline.from_pretrained(directory, local_files_only=True)``; a folder without T5 loads without it."""
    from diffusers import StableDiffusion3Pipeline

    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(f"--base: {directory} is not a diffusers pipeline folder (no model_index.json)")
    extra = {} if (directory / "text_encoder_3").is_dir() else {"text_encoder_3": None, "tokenizer_3": None}
    with _quiet_dtype_deprecation():
        pipe = StableDiffusion3Pipeline.from_pretrained(str(directory), local_files_only=True, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@contextlib.contextmanager
def _quiet_dtype_deprecation():
    """``torch_dtype`` works in every diffusers we support (>= 0.35); newer ones warn that ``dtype`` replaces it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        yield


def load_pipeline(directory: str | Path, device: str = "cpu"):
    """``StableDiffusionPipeline.from_pretrained(directory, local_files_only=True)`` in float32 (fp16-saved weights are
    upcast, so they run on a CPU and train adapters in full precision) with a clear error for a bad folder."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(f"--base: {directory} is not a diffusers pipeline folder (no model_index.json)")
    with _quiet_dtype_deprecation():
        pipe = StableDiffusionPipeline.from_pretrained(str(directory), local_files_only=True, safety_checker=None, torch_dtype=torch.float32,
                                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states ``[B, T, D]`` for ``prompts`` (what the UNet attends to)."""
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0]
