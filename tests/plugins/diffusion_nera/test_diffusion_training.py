"""A few fine-tuning steps with each core adapter lower the noise-prediction loss; configs reject bad values."""

from __future__ import annotations

import pytest
import torch

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.plugins.diffusion_nera.config import FinetuneConfig, PipelineConfig
from lowrank_vision.plugins.diffusion_nera.model import load_pipeline
from lowrank_vision.plugins.diffusion_nera.recipes import Denoiser, concept_data, eval_denoising_loss, finetune


@pytest.mark.parametrize("adapter,lr,steps", [("lora", 2e-2, 6), ("nera", 1e-2, 4)])
def test_few_steps_lower_the_loss(tiny_pipeline_dir, adapter, lr, steps):
    pipe = load_pipeline(tiny_pipeline_dir)
    config = FinetuneConfig(adapter=adapter, rank=4, n_images=8, batch_size=8, grid_size=3, spline_order=2, ema=0.5,
                            train=TrainConfig(max_steps=steps, lr=lr, warmup_steps=0, scheduler="constant", log_every=1, progress=False))
    latents, ids = concept_data(pipe, config)
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler)
    before = eval_denoising_loss(model, latents, ids, repeats=3)
    report, result = finetune(pipe, config, data=(latents, ids))
    after = eval_denoising_loss(Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler), latents, ids, repeats=3)
    assert result.steps == steps and len(report.wrapped) == 32
    assert report.trainable_params == report.adapter_params  # only the adapter trains
    assert after < 0.97 * before, (before, after)


def test_configs_name_the_bad_field():
    with pytest.raises(ValueError, match=r"FinetuneConfig.adapter must be one of"):
        FinetuneConfig(adapter="loha")
    with pytest.raises(ValueError, match=r"FinetuneConfig.ema must be in \[0, 1\)"):
        FinetuneConfig(ema=1.0)
    with pytest.raises(ValueError, match=r"PipelineConfig.image_size must be a multiple of 8"):
        PipelineConfig(image_size=12)
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("adapter,lr", [("lora", 3e-2), ("nera", 2e-2)])
def test_transformer_few_steps_lower_the_loss(tiny_sd3_dir, adapter, lr):
    """DiT path: adapters on every to_q/to_k/to_v/to_out.0 of a small SD3Transformer2DModel; the flow-matching loss drops."""
    from lowrank_vision.plugins.diffusion_nera.model import load_sd3_pipeline
    from lowrank_vision.plugins.diffusion_nera.recipes import TransformerDenoiser, finetune_transformer, flow_matching_loss, sd3_concept_data

    pipe = load_sd3_pipeline(tiny_sd3_dir)
    config = FinetuneConfig(adapter=adapter, rank=4, n_images=8, batch_size=8, grid_size=3, spline_order=1,
                            train=TrainConfig(max_steps=6, lr=lr, warmup_steps=0, scheduler="constant", log_every=1, progress=False))
    data = sd3_concept_data(pipe, config)
    assert data[1].shape[1:] == (12 + 4, 32) and data[2].shape[1:] == (32,)  # CLIP tokens + zero T5 tokens; two pooled CLIPs
    model = TransformerDenoiser(pipe.transformer, pipe.scheduler)
    before = eval_denoising_loss(model, *data, repeats=3, loss_fn=flow_matching_loss)
    report, result = finetune_transformer(pipe, config, data=data)
    after = eval_denoising_loss(model, *data, repeats=3, loss_fn=flow_matching_loss)
    assert result.steps == 6 and len(report.wrapped) == 8
    assert sorted({name.rsplit(".attn.", 1)[1] for name in report.wrapped}) == ["to_k", "to_out.0", "to_q", "to_v"]
    assert report.trainable_params == report.adapter_params
    assert after < 0.97 * before, (before, after)
