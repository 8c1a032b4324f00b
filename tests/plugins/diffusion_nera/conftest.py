"""A tiny pipeline built from configs once per session (no hub: HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("diffusers")

TINY = dict(image_size=16, vae_channels=(8, 16), unet_channels=(16, 32), text_dim=16, text_layers=1)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    import torch

    from lowrank_vision.plugins.diffusion_nera.config import PipelineConfig
    from lowrank_vision.plugins.diffusion_nera.model import build_pipeline

    torch.set_num_threads(2)
    directory = tmp_path_factory.mktemp("tiny_pipe")
    pipe = build_pipeline(PipelineConfig(**TINY), seed=0)
    pipe.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    """A tiny StableDiffusion3Pipeline (SD3Transformer2DModel, two CLIP encoders, no T5) saved once."""
    import torch

    from lowrank_vision.plugins.diffusion_nera.config import PipelineConfig
    from lowrank_vision.plugins.diffusion_nera.model import build_sd3_pipeline

    torch.set_num_threads(2)
    directory = tmp_path_factory.mktemp("tiny_sd3")
    build_sd3_pipeline(PipelineConfig(**TINY), num_layers=2, seed=0).save_pretrained(str(directory))
    return directory
