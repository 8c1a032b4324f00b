"""``fuse_builds_for_capture``: which adapter layers a whole-step CUDA graph switches to the compiled weight build
(convolutions of every family with a build function, DoRA on Linear too; Linear LoRA / CP-LoRA keep the fused Linear
kernel), and that the trainer records them. The choice is checked on the CPU with the device test patched; the
captured run itself is a GPU test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowrank_vision.core as lr
from lowrank_vision.core.adapters.base import DeltaAdapter, fuse_builds_for_capture


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"linear": nn.Linear(16, 16), "conv2d": nn.Conv2d(4, 8, 3), "conv3d": nn.Conv3d(4, 8, 3),
                          "convT": nn.ConvTranspose2d(8, 4, 3)})


@pytest.mark.parametrize("method, strategy, switched", [
    ("lora", "auto", {"conv2d", "conv3d", "convT"}),
    ("cp_lora", "auto", {"conv2d", "conv3d", "convT"}),
    ("dora", "auto", {"linear", "conv2d", "conv3d", "convT"}),
    ("lora", "weight", set()),  # a strategy the user fixed is left alone
])
def test_layers_switched_to_the_compiled_build(monkeypatch, method, strategy, switched):
    monkeypatch.setattr(DeltaAdapter, "_on_cuda", lambda self: True)
    model = _model()
    lr.apply(model, method, rank=2, alpha=4, strategy=strategy)
    names = fuse_builds_for_capture(model)
    assert {n.split(".")[0] for n in names} == switched
    fused = {name.split(".")[0] for name, m in model.named_modules() if isinstance(m, DeltaAdapter) and m.fused}
    assert fused == switched


def test_nothing_switched_off_cuda_or_twice(monkeypatch):
    model = _model()
    lr.apply(model, "dora", rank=2, alpha=4)
    assert fuse_builds_for_capture(model) == []  # CPU weights
    monkeypatch.setattr(DeltaAdapter, "_on_cuda", lambda self: True)
    assert len(fuse_builds_for_capture(model)) == 4
    assert fuse_builds_for_capture(model) == []  # already fused


def test_merged_layers_are_not_switched(monkeypatch):
    monkeypatch.setattr(DeltaAdapter, "_on_cuda", lambda self: True)
    model = _model()
    lr.apply(model, "lora", rank=2, alpha=4)
    lr.merge(model)
    assert fuse_builds_for_capture(model) == []


@pytest.mark.parametrize("fuse_builds, recorded, fused", [(True, 2, True), (False, None, False)])
def test_graph_runner_switches_before_warm_up_unless_told_not_to(monkeypatch, fuse_builds, recorded, fused):
    from lowrank_vision.core.train import WholeStepGraph

    monkeypatch.setattr(DeltaAdapter, "_on_cuda", lambda self: True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    lr.apply(model, "lora", rank=2, alpha=4)
    runner = WholeStepGraph(model, torch.optim.AdamW(lr.trainable_parameters(model)), lambda m, b: m(b).sum(), None,
                            fuse_builds=fuse_builds)
    got = runner.record["fused_builds"]
    assert (len(got) if got is not None else None) == recorded
    assert [m.fused for m in model.modules() if isinstance(m, DeltaAdapter)] == [fused, fused, False]  # the Linear: never


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_captured_run_with_compiled_conv_and_dora_builds_matches_eager_on_cuda():
    from torch.utils.data import DataLoader, TensorDataset

    from lowrank_vision.core.train import TrainConfig, fit

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        lr.apply(model, "dora", rank=2, alpha=4)
        return model

    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randn(64, 3, 16, 16, generator=g))

    def loss_fn(model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    common = dict(max_steps=12, lr=5e-3, warmup_steps=2, log_every=1, progress=False)
    eager = fit(make(), DataLoader(data, batch_size=8), loss_fn, TrainConfig(**common))
    graphed = fit(make(), DataLoader(data, batch_size=8), loss_fn, TrainConfig(**common, cuda_graph=True))
    rec = graphed.cuda_graph
    assert rec["captured"] is True and rec["fallback_reason"] is None, rec
    assert len(rec["fused_builds"]) == 2
    assert [m["loss"] for m in graphed.history] == pytest.approx([m["loss"] for m in eager.history], rel=1e-3, abs=1e-5)
