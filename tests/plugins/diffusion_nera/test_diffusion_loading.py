"""Stock diffusers loads our LoRA/DoRA exports with the same images; NeRA save -> load_nera is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_vision.core import adapter_layers, apply
from lowrank_vision.plugins.diffusion_nera import export_diffusers, load_nera, save_nera, unload_nera
from lowrank_vision.plugins.diffusion_nera.model import ATTENTION_TARGETS, T5_TOKENS, load_pipeline, load_sd3_pipeline

PROMPT = ["a checkered red circle on the left"]
TOL = 1e-5  # float32, same seed: the stock PEFT path and ours differ only by summation order


def _images(pipe):
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=2.0, height=16, width=16, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def _adapted(directory, method, **options):
    pipe = load_pipeline(directory)
    apply(pipe.unet, method, rank=4, alpha=8.0, targets=list(ATTENTION_TARGETS), **options)
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking weights (the up-projections start at zero)
        for layer in adapter_layers(pipe.unet, "default").values():
            for _, p in layer.adapter_parameters():
                p.add_(torch.randn_like(p) * 0.3)
    return pipe


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_load_lora_weights_gives_our_images(tiny_pipeline_dir, tmp_path, method):
    ours = _adapted(tiny_pipeline_dir, method)
    layers = adapter_layers(ours.unet, "default")
    assert len(layers) == 32 and sum(n.endswith("to_out.0") for n in layers) == 8
    expected = _images(ours)
    export_diffusers(ours, tmp_path / "lora")
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["pytorch_lora_weights.safetensors"]

    stock = load_pipeline(tiny_pipeline_dir)
    base = _images(stock)
    stock.load_lora_weights(str(tmp_path / "lora"), adapter_name="ours")
    got = _images(stock)
    assert np.abs(got - expected).max() < TOL
    assert np.abs(base - expected).max() > 0.05  # the adapter changes the images
    stock.fuse_lora()
    assert np.abs(_images(stock) - expected).max() < 1e-4
    stock.unfuse_lora()
    assert np.abs(_images(stock) - expected).max() < 1e-4
    if method == "lora":  # DoRA's trained magnitude stays on at weight 0 (PEFT semantics)
        stock.set_adapters(["ours"], adapter_weights=[0.0])
        assert np.abs(_images(stock) - base).max() < 1e-4


def test_nera_save_load_nera_exact(tiny_pipeline_dir, tmp_path):
    ours = _adapted(tiny_pipeline_dir, "nera", grid_size=3, spline_order=2)
    expected = _images(ours)
    save_nera(ours, tmp_path / "nera")
    with pytest.raises(ValueError, match="LoRA-shaped"):
        export_diffusers(ours, tmp_path / "nope")
    assert not (tmp_path / "nope").exists()

    stock = load_pipeline(tiny_pipeline_dir)
    base = _images(stock)
    load_nera(stock, tmp_path / "nera")
    assert np.array_equal(_images(stock), expected)
    x, t, states = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 12, 16)
    with torch.no_grad():
        assert torch.equal(stock.unet(x, t, states).sample, ours.unet(x, t, states).sample)
    assert unload_nera(stock) == 32
    assert np.array_equal(_images(stock), base)
    with pytest.raises(FileNotFoundError, match="no NeRA adapter"):
        load_nera(stock, tmp_path)


def _sd3_images(pipe):
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=2.0, height=16, width=16, output_type="np", max_sequence_length=T5_TOKENS,
                generator=torch.Generator().manual_seed(0)).images


def _randomize(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(module, "default").values():
            for _, p in layer.adapter_parameters():
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_dit_pipeline_load_lora_weights_gives_our_images(tiny_sd3_dir, tmp_path, method):
    """StableDiffusion3Pipeline: adapters on the transformer export to its layout and load with the stock loader."""
    ours = load_sd3_pipeline(tiny_sd3_dir)
    apply(ours.transformer, method, rank=4, alpha=8.0, targets=list(ATTENTION_TARGETS))
    _randomize(ours.transformer)
    expected = _sd3_images(ours)
    export_diffusers(ours, tmp_path / "lora")
    stock = load_sd3_pipeline(tiny_sd3_dir)
    base = _sd3_images(stock)
    stock.load_lora_weights(str(tmp_path / "lora"), adapter_name="ours")
    assert np.abs(_sd3_images(stock) - expected).max() < TOL
    assert np.abs(base - expected).max() > 0.05
    stock.fuse_lora()
    assert np.abs(_sd3_images(stock) - expected).max() < 1e-4
    stock.unfuse_lora()
    assert np.abs(_sd3_images(stock) - expected).max() < 1e-4


def test_dit_pipeline_nera_save_load_exact(tiny_sd3_dir, tiny_pipeline_dir, tmp_path):
    ours = load_sd3_pipeline(tiny_sd3_dir)
    apply(ours.transformer, "nera", rank=2, alpha=4.0, targets=list(ATTENTION_TARGETS), grid_size=3, spline_order=1)
    _randomize(ours.transformer)
    expected = _sd3_images(ours)
    save_nera(ours, tmp_path / "nera")
    assert (tmp_path / "nera" / "transformer").is_dir()
    stock = load_sd3_pipeline(tiny_sd3_dir)
    base = _sd3_images(stock)
    with pytest.raises(ValueError, match="for pipe.transformer, but this StableDiffusionPipeline has a unet"):
        load_nera(load_pipeline(tiny_pipeline_dir), tmp_path / "nera")
    load_nera(stock, tmp_path / "nera")
    assert np.array_equal(_sd3_images(stock), expected)
    assert unload_nera(stock) == 8
    assert np.array_equal(_sd3_images(stock), base)


def test_fp16_saved_pipeline_loads_in_float32(tiny_pipeline_dir, tmp_path):
    """A base saved in half precision (what the GPU run brings back) loads as float32 with the same outputs up to fp16 rounding."""
    pipe = load_pipeline(tiny_pipeline_dir)
    pipe.to(torch.float16).save_pretrained(str(tmp_path / "fp16"))
    half = load_pipeline(tmp_path / "fp16")
    assert {p.dtype for name in ("unet", "vae", "text_encoder") for p in getattr(half, name).parameters()} == {torch.float32}
    assert np.abs(_images(half) - _images(load_pipeline(tiny_pipeline_dir))).max() < 0.02
