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
