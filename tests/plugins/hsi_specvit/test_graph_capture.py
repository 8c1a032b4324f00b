"""The recipe's step is capturable as one CUDA graph (``train_config`` asks for it): the augmentation draws a dihedral
transform per patch on the device (it used to read its rot90 / flip choice back to the host, which a graph would have
frozen), the loss returns its accuracy as a 0-d tensor, the model builds its window mask from shapes alone, and the
cyclical LoRA scale is a device tensor filled in place."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lowrank_vision.core as core
from lowrank_vision.datasets.hsi.synthetic import make_synthetic_scene
from lowrank_vision.plugins.hsi_specvit.config import DataConfig, RecipeConfig, train_config
from lowrank_vision.plugins.hsi_specvit.recipes import (_augment, build_model, class_weighted_cross_entropy, prepare, recipe_loss,
                                                        train)
from lowrank_vision.plugins.hsi_specvit.schedule import CyclicalLoRAScale

from ...capture_checks import HostTraffic


def _dihedral(x: torch.Tensor) -> torch.Tensor:
    """``[8, *x.shape]``: rot90 by 0..3 quarter turns, then the same four flipped left-right."""
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return torch.stack(turns + [torch.flip(t, dims=(-1,)) for t in turns])


def test_augment_applies_one_dihedral_transform_per_sample():
    torch.manual_seed(0)
    x = torch.randn(256, 3, 5, 5)
    out = _augment(x)
    matches = (out[None] == _dihedral(x)).flatten(2).all(-1)  # [8, B]: sample b is transform t of its input
    assert matches.sum(0).tolist() == [1] * 256  # each sample is exactly one of the 8 (random inputs: all distinct)
    counts = torch.bincount(matches.float().argmax(0), minlength=8)
    assert counts.min() >= 8, counts  # every transform occurs (expected 32 each; all 8 in one batch: per sample)
    with pytest.raises(ValueError, match=r"square patches \[B, C, P, P\], got \(2, 3, 5, 7\)"):
        _augment(torch.randn(2, 3, 5, 7))


def test_spectral_jitter_is_one_gain_per_sample_and_component():
    torch.manual_seed(0)
    x = torch.rand(512, 4, 3, 3) + 0.5
    out = _augment(x, spectral_jitter=0.1)
    gains = out.flatten(2).sum(-1) / x.flatten(2).sum(-1)  # [B, C]; a sum does not depend on the pixel order
    matches = torch.isclose(out[None] / gains[..., None, None], _dihedral(x), atol=1e-5).flatten(2).all(-1)
    assert matches.sum(0).tolist() == [1] * 512  # a transformed patch times one gain per component
    assert abs(gains.mean().item() - 1.0) < 0.01 and 0.09 < gains.std().item() < 0.11


@pytest.mark.parametrize("method", ["lora", "full", "hybridsn"])
def test_the_loss_step_builds_no_tensor_from_host_data(method):
    torch.manual_seed(0)
    recipe = RecipeConfig(method=method, spectral_jitter=0.05)
    model, _ = build_model(recipe, in_chans=15, num_classes=4, patch=9)
    batch = (torch.randn(16, 15, 9, 9), torch.randint(0, 4, (16,)))
    loss_fn = recipe_loss(recipe, class_weight=torch.tensor([0.5, 1.0, 1.5, 1.0]))
    with HostTraffic() as mode:
        loss, extra = loss_fn(model, batch)
        loss.backward()
    assert mode.count == 0
    assert isinstance(extra["acc"], torch.Tensor) and extra["acc"].ndim == 0 and 0.0 <= float(extra["acc"]) <= 1.0
    assert abs(float(loss.detach()) - math.log(4)) < 0.5  # near-uniform logits at init


def test_the_host_read_check_sees_what_the_old_step_did():
    with HostTraffic() as mode:
        int(torch.randint(0, 4, (1,)))  # the old augmentation's rot90 / flip choice
    assert mode.count == 1
    with HostTraffic() as mode:  # the old loss with class weights (its capture failed on an H200)
        F.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), weight=torch.ones(3), label_smoothing=0.1)
    assert mode.count >= 1


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_class_weighted_cross_entropy_matches_torch(label_smoothing):
    torch.manual_seed(0)
    logits, target, weight = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 5, (32,)), torch.rand(5, dtype=torch.float64) + 0.2
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    assert torch.allclose(class_weighted_cross_entropy(logits, target, weight, label_smoothing), expected, rtol=1e-12)


def test_the_schedule_scale_is_a_device_tensor_filled_in_place_with_the_float_outputs():
    """The cyclical schedule's scale is what a captured graph can follow: a 0-d tensor that keeps its storage from
    step to step, gives the outputs the float scale gave, and costs no host traffic forward or backward."""
    torch.manual_seed(0)
    model, _ = build_model(RecipeConfig(), in_chans=6, num_classes=3, patch=9)
    for n, p in model.named_parameters():  # non-zero B, so the scale matters
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    x = torch.randn(2, 6, 9, 9)
    layers = list(core.adapter_layers(model).values())
    nominal = [float(layer.scale) for layer in layers]
    with torch.no_grad():
        full_by_float = model(x)
        for layer, s in zip(layers, nominal):
            layer.scale = 0.5 * s
        by_float = model(x)
        for layer, s in zip(layers, nominal):
            layer.scale = s
    schedule = CyclicalLoRAScale(cycle_steps=10, f_min=0.25).attach(model)
    storage = [layer.scale.data_ptr() for layer in layers]
    schedule.set_factor(model, 0.5)
    with HostTraffic() as mode:
        by_tensor = model(x)
        by_tensor.sum().backward()
    assert mode.count == 0
    assert all(isinstance(layer.scale, torch.Tensor) and layer.scale.ndim == 0 for layer in layers)
    assert [layer.scale.data_ptr() for layer in layers] == storage  # filled in place, not replaced
    assert torch.allclose(by_tensor, by_float, atol=1e-6) and not torch.allclose(by_tensor, full_by_float, atol=1e-3)
    schedule.finish(model)
    assert [layer.scale for layer in layers] == nominal and all(type(layer.scale) is float for layer in layers)


def _tiny_data():
    cube = make_synthetic_scene(height=24, width=24, bands=8, num_classes=3, cells=6, seed=0)
    return prepare(cube, DataConfig(pca_components=4, patch=5, block=8))


@pytest.mark.parametrize("cyclical", [False, True])
def test_train_records_the_graph_request(cyclical):
    recipe = RecipeConfig(rank=2, batch_size=8, eval_every=0, cyclical=cyclical, train=train_config("lora", steps=2, progress=False))
    model, record = train(recipe, _tiny_data())
    graph = record["cuda_graph"]
    assert recipe.train.cuda_graph and graph["requested"] and not graph["captured"]
    assert graph["fallback_reason"].startswith("device is cpu")
    assert all(isinstance(h["acc"], float) for h in record["history"])  # the 0-d tensor, read after the step
    assert all(type(layer.scale) is float for layer in core.adapter_layers(model).values())  # the schedule finished


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method, options", [
    ("lora", {"cyclical": False, "eval_every": 4}),
    ("lora", {"cyclical": True, "cycle_steps": 4, "eval_every": 4}),
    ("full", {"class_weighting": "sqrt_inverse", "spectral_jitter": 0.05}),
    ("hybridsn", {}),
])
def test_the_recipe_step_is_captured_on_cuda(method, options):
    steps = 12
    recipe = RecipeConfig(method=method, rank=2, batch_size=8, **{"eval_every": 0, **options},
                          train=train_config(method, steps=steps, progress=False))
    _, record = train(recipe, _tiny_data(), device="cuda")
    graph = record["cuda_graph"]
    assert graph["captured"] and graph["fallback_reason"] is None, graph["fallback_reason"]
    assert graph["graph_steps"] == steps - graph["eager_steps"] and graph["graph_steps"] >= 8, graph
    assert math.isfinite(record["final_loss"]) and record["test"]["OA"] > 0.0
