"""The recipes' training steps are capturable as one CUDA graph (the configs ask for it): the losses draw their noise and
timesteps on the batch's device (they drew on the CPU and copied over, which a capture refuses), the noise table is a
buffer of ``Denoiser`` that moves with it, and with an explicit CPU generator (held-out evaluation) or on a CPU the
losses give the numbers they gave before.

Two checks run on a CPU: ``HostTraffic`` (host reads and tensors built from host data, forward and backward) and
``CopiesToDevice`` on fake CUDA tensors (``FakeTensorMode``: no GPU needed) for the host-to-device copies HostTraffic
cannot see on a CPU; the fake tensors run the forward only (a CUDA backward needs a real device). Both look at a second
step, as the trainer captures after eager warm-up steps (NeRA caches its piece matrix per device on first use).
"""

from __future__ import annotations

import copy
import functools
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lowrank_vision.core import apply
from lowrank_vision.core.functional import nera as nera_functional
from lowrank_vision.core.train import TrainConfig
from lowrank_vision.datasets.diffusion.procedural import make_split
from lowrank_vision.plugins.diffusion_nera.config import FinetuneConfig, PretrainConfig
from lowrank_vision.plugins.diffusion_nera.model import ATTENTION_TARGETS, load_pipeline, load_sd3_pipeline
from lowrank_vision.plugins.diffusion_nera.recipes import (Denoiser, TransformerDenoiser, denoising_loss, eval_denoising_loss, finetune,
                                                           finetune_transformer, flow_matching_loss, pretrain_base, vae_reconstruction_loss)

from ...capture_checks import HostTraffic

CPU_FALLBACK = {"requested": True, "captured": False, "graph_steps": 0, "fallback_reason": "device is cpu: CUDA graphs need a CUDA device"}


class CopiesToDevice(TorchDispatchMode):
    """Counts the ops that take a CPU tensor to another device (``.count``): under a ``FakeTensorMode`` whose tensors
    say ``cuda``, the host-to-device copies a captured step refuses."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        sources = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        self.count += "cpu" in sources and any(t.device.type != "cpu" for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def _denoising_loss_before(model, batch, generator=None):
    """``denoising_loss`` before the change, verbatim: draws on the CPU copied to the batch's device, the scheduler's add_noise."""
    latents, ids = batch
    n_train = model.scheduler.config.num_train_timesteps
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
    t = torch.randint(0, n_train, (latents.shape[0],), generator=generator, device="cpu").to(latents.device)
    noisy = model.scheduler.add_noise(latents, noise, t)
    pred = model(noisy, t, ids)
    return F.mse_loss(pred.float(), noise.float())


def _flow_matching_loss_before(model, batch, generator=None):
    """``flow_matching_loss`` before the change, verbatim."""
    latents, prompt_embeds, pooled = batch
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
    sigma = torch.rand(latents.shape[0], generator=generator, device="cpu").to(latents)
    s = sigma.view(-1, *([1] * (latents.dim() - 1)))
    pred = model((1 - s) * latents + s * noise, sigma * model.scheduler.config.num_train_timesteps, prompt_embeds, pooled)
    return F.mse_loss(pred.float(), (noise - latents).float())


def _unet_step(directory, adapter):
    """``(Denoiser, denoising_loss, batch)``: adapters on the UNet's attention, or (``None``) pre-training's UNet + text encoder."""
    pipe = load_pipeline(directory)
    if adapter is not None:
        apply(pipe.unet, adapter, rank=2, targets=list(ATTENTION_TARGETS))
    torch.manual_seed(0)
    return Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler), denoising_loss, (torch.randn(4, 4, 8, 8), torch.randint(4, 20, (4, 12)))


def _dit_step(directory, adapter):
    pipe = load_sd3_pipeline(directory)
    apply(pipe.transformer, adapter, rank=2, targets=list(ATTENTION_TARGETS), **({"grid_size": 3, "spline_order": 2} if adapter == "nera" else {}))
    torch.manual_seed(0)
    return TransformerDenoiser(pipe.transformer, pipe.scheduler), flow_matching_loss, (torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32),
                                                                                       torch.randn(2, 32))


def _vae_step(directory):
    torch.manual_seed(0)
    return load_pipeline(directory).vae, functools.partial(vae_reconstruction_loss, kl_weight=1e-4), (torch.rand(2, 3, 16, 16) * 2 - 1,)


STEPS = {
    "pretrain": lambda sd_dir, sd3_dir: _unet_step(sd_dir, None),
    "lora": lambda sd_dir, sd3_dir: _unet_step(sd_dir, "lora"),
    "dora": lambda sd_dir, sd3_dir: _unet_step(sd_dir, "dora"),
    "dit lora": lambda sd_dir, sd3_dir: _dit_step(sd3_dir, "lora"),
    "dit nera": lambda sd_dir, sd3_dir: _dit_step(sd3_dir, "nera"),
    "vae": lambda sd_dir, sd3_dir: _vae_step(sd_dir),
}
"""Each recipe's step; NeRA runs on the DiT only (the same core layer as on the UNet's projections, at a fifth of the ops)."""
COPY_CHECKED = ("lora", "dit lora", "dit nera", "vae")
"""The steps also run on fake CUDA tensors: one per loss (the copies came from the losses), and NeRA for its cache."""


def _loss(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _second_step_copies_to_cuda(model, loss_fn, batch) -> int:
    """Host-to-device copies in the second forward of ``loss_fn`` on fake CUDA tensors (the first fills per-device caches).

    No stream captures here (the core's adapters ask, and without a CUDA driver asking raises). NeRA's per-device cache
    is put back afterwards: a fake CUDA matrix left in it would reach a later real CUDA step."""
    model, cached = copy.deepcopy(model), dict(nera_functional._MATRICES)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), mock.patch.object(torch.cuda, "is_current_stream_capturing", return_value=False):
            model = model.to("cuda")
            batch = tuple(t.to("cuda") for t in batch)
            loss_fn(model, batch)
            with CopiesToDevice() as mode:
                loss = _loss(loss_fn(model, batch))
            assert loss.device.type == "cuda"
    finally:
        nera_functional._MATRICES.clear()
        nera_functional._MATRICES.update(cached)
    return mode.count


@pytest.mark.parametrize("step", list(STEPS))
def test_the_training_step_makes_no_host_traffic(tiny_pipeline_dir, tiny_sd3_dir, step):
    model, loss_fn, batch = STEPS[step](tiny_pipeline_dir, tiny_sd3_dir)
    if step in COPY_CHECKED:
        assert _second_step_copies_to_cuda(model, loss_fn, batch) == 0
    loss_fn(model, batch)
    with HostTraffic() as mode:
        out = loss_fn(model, batch)
        loss = _loss(out)
        loss.backward()
    assert mode.count == 0
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in (out[1].values() if isinstance(out, tuple) else ()))
    assert math.isfinite(float(loss.detach())) and any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("loss_before", [_denoising_loss_before, _flow_matching_loss_before], ids=["denoising", "flow matching"])
def test_the_copy_check_sees_what_the_old_losses_did(tiny_pipeline_dir, tiny_sd3_dir, loss_before):
    model, _, batch = STEPS["lora" if loss_before is _denoising_loss_before else "dit lora"](tiny_pipeline_dir, tiny_sd3_dir)
    assert _second_step_copies_to_cuda(model, loss_before, batch) == 2  # the noise and the timesteps (or s), drawn on the CPU


def test_the_losses_give_the_numbers_they_gave_before(tiny_pipeline_dir, tiny_sd3_dir):
    """On a CPU, with an explicit CPU generator (held-out evaluation) or the global seed (training), to the bit."""
    for step, loss_before in (("lora", _denoising_loss_before), ("dit nera", _flow_matching_loss_before)):
        model, loss_fn, batch = STEPS[step](tiny_pipeline_dir, tiny_sd3_dir)
        for explicit in (True, False):
            losses = []
            for fn in (loss_fn, loss_before):
                torch.manual_seed(7)
                losses.append(fn(model, batch, torch.Generator().manual_seed(3) if explicit else None))
            assert torch.equal(*losses), (step, explicit, losses)
        assert not torch.equal(loss_fn(model, batch), losses[0])  # a new draw: the comparison is not of constants


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler"])
def test_denoiser_add_noise_is_the_schedulers_to_the_bit(tiny_pipeline_dir, scheduler_name):
    import diffusers

    pipe = load_pipeline(tiny_pipeline_dir)
    scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config)
    model = Denoiser(pipe.unet, pipe.text_encoder, scheduler)
    assert "alphas_cumprod" not in model.state_dict()  # not saved: it comes from the scheduler
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        latents, noise = torch.randn(6, 4, 8, 8, dtype=dtype), torch.randn(6, 4, 8, 8, dtype=dtype)
        t = torch.tensor([0, 1, 250, 500, 998, 999])
        assert torch.equal(model.add_noise(latents, noise, t), scheduler.add_noise(latents, noise, t))
    with pytest.raises(TypeError, match="DDPM-family scheduler with alphas_cumprod, got FlowMatchEulerDiscreteScheduler"):
        Denoiser(pipe.unet, pipe.text_encoder, diffusers.FlowMatchEulerDiscreteScheduler())


def test_the_default_configs_request_the_graph():
    assert PretrainConfig().train.cuda_graph and FinetuneConfig().train.cuda_graph


def _steps(n: int, **options) -> TrainConfig:
    return TrainConfig(max_steps=n, lr=1e-3, warmup_steps=0, log_every=1, progress=False, cuda_graph=True, **options)


def _held_out(*data: torch.Tensor, loss_fn=denoising_loss):
    """``eval_fn`` for ``fit``: the held-out loss on CPU ``data`` (explicit CPU generator, copied over: eager, between replays)."""
    return lambda model: {"val": eval_denoising_loss(model, *data, loss_fn=loss_fn)}


def test_a_recipe_fit_on_the_cpu_records_why_it_ran_eager(tiny_pipeline_dir, tiny_sd3_dir):
    _, result = finetune(load_pipeline(tiny_pipeline_dir), FinetuneConfig(rank=2, n_images=4, batch_size=4, train=_steps(2)))
    assert result.cuda_graph == {**CPU_FALLBACK, "eager_steps": 2}
    config = FinetuneConfig(adapter="nera", rank=2, n_images=4, batch_size=4, grid_size=3, spline_order=1, train=_steps(2))
    _, result = finetune_transformer(load_sd3_pipeline(tiny_sd3_dir), config)
    assert result.cuda_graph == {**CPU_FALLBACK, "eager_steps": 2}
    images, captions, _ = make_split("train", 4, 16)
    out = pretrain_base(load_pipeline(tiny_pipeline_dir), PretrainConfig(vae_steps=1, batch_size=4, train=_steps(2)), data=(images, captions))
    assert out["vae_cuda_graph"] == {**CPU_FALLBACK, "eager_steps": 1} and out["cuda_graph"] == {**CPU_FALLBACK, "eager_steps": 2}
    assert isinstance(out["vae_history"][-1]["mse"], float)  # the 0-d tensor metric, read after the step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("recipe", ["pretrain", "lora", "dora", "nera", "dit lora", "dit nera"])
def test_the_recipe_steps_are_captured_on_cuda(tiny_pipeline_dir, tiny_sd3_dir, recipe):
    """Every step after the trainer's three eager warm-up steps is a replay; the held-out loss (explicit CPU generator, eager)
    runs between replays; the EMA callback reads the parameters the graph updates."""
    steps = 10
    if recipe == "pretrain":
        images, captions, _ = make_split("train", 16, 16)
        out = pretrain_base(load_pipeline(tiny_pipeline_dir, device="cuda"), PretrainConfig(vae_steps=steps, batch_size=8, train=_steps(steps)),
                            data=(images, captions))
        records, losses = [out["vae_cuda_graph"], out["cuda_graph"]], [out["vae_history"][-1]["loss"], out["final_loss"]]
    else:
        adapter = recipe.removeprefix("dit ")
        config = FinetuneConfig(adapter=adapter, rank=2, n_images=16, batch_size=8, grid_size=3, spline_order=1, ema=0.5,
                                train=_steps(steps, eval_every=5))
        if recipe.startswith("dit"):
            held_out = _held_out(torch.randn(8, 4, 8, 8), torch.randn(8, 16, 32), torch.randn(8, 32), loss_fn=flow_matching_loss)
            _, result = finetune_transformer(load_sd3_pipeline(tiny_sd3_dir, device="cuda"), config, eval_fn=held_out)
        else:
            held_out = _held_out(torch.randn(8, 4, 8, 8), torch.randint(4, 20, (8, 12)))
            _, result = finetune(load_pipeline(tiny_pipeline_dir, device="cuda"), config, eval_fn=held_out)
        assert [h["step"] for h in result.history if "eval_val" in h] == [5, 10]
        records, losses = [result.cuda_graph], [result.final_loss]
    for record in records:
        assert record["captured"] and record["fallback_reason"] is None, record
        assert record["eager_steps"] == 3 and record["graph_steps"] == steps - 3, record
    assert all(math.isfinite(loss) for loss in losses), losses
