"""Training recipes on ``core.train.fit``: base pre-training and adapter fine-tuning of the UNet.

Loss: noise prediction (epsilon MSE) with the pipeline's own noise schedule (its scheduler's ``alphas_cumprod``
and ``num_train_timesteps``, noised as DDPM/DDIM ``add_noise`` does); text conditioning through the pipeline's
text encoder (trained with the UNet in pre-training, frozen in fine-tuning); 10 % empty captions in pre-training
so classifier-free guidance works. Latents are the VAE posterior means times ``scaling_factor``, computed once.
Fine-tuning wraps ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of every UNet attention with a core
adapter (``lora``, ``dora`` or ``nera``, the paper's KAN form); EMA of the adapter weights is
an option (a ``fit`` callback; the averaged weights are copied in at the end).
The DiT path (:func:`finetune_transformer`) trains the same adapters on an ``SD3Transformer2DModel``
with its own objective, rectified flow: ``x_s = (1 - s) x_0 + s noise``, target ``noise - x_0``,
``s`` uniform in (0, 1) (SD3 samples ``s`` logit-normally; uniform is our choice), timestep
``s * num_train_timesteps`` of its ``FlowMatchEulerDiscreteScheduler``.
Time budgets: :func:`fit_within` runs ``fit`` with a :class:`Deadline` callback that stops it at a
wall-clock deadline (the run is then reported as cut short, with the steps it reached), and
:func:`steps_for_seconds` sizes ``max_steps`` from a measured step time so a cosine schedule ends
inside the budget.
Whole-step CUDA graphs (``TrainConfig.cuda_graph``, on in the configs' defaults; the loaders drop the short last
batch, so every batch has one shape): a training loss draws its noise and timesteps on the batch's device with that
device's default generator, which a captured step replays with fresh values; only an explicit generator (held-out
evaluation: fixed noise on every device) draws where it lives and is copied over. The noise table is a buffer of
:class:`Denoiser`, moved to the device with the module, never inside the step. On a CPU every loss gives the numbers
it gave before (same generator, same draws, same ops); the trainer ignores ``cuda_graph`` there and records why.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_vision.core import AdapterReport, apply, trainable_parameters
from lowrank_vision.core.train import StopTraining, fit
from lowrank_vision.datasets.diffusion.procedural import make_split

from .config import FinetuneConfig, PretrainConfig

__all__ = ["Denoiser", "tokenize", "encode_latents", "denoising_loss", "pretrain_base", "finetune", "vae_reconstruction_loss",
           "eval_denoising_loss", "adapter_options", "TransformerDenoiser", "flow_matching_loss", "finetune_transformer",
           "sd3_concept_data", "Deadline", "TimeUp", "fit_within", "steps_for_seconds", "make_loader"]

UNCOND_PROB = 0.1


def adapter_options(config: FinetuneConfig) -> dict:
    return {"grid_size": config.grid_size, "spline_order": config.spline_order} if config.adapter == "nera" else {}


class Denoiser(nn.Module):
    """UNet + text encoder as one module for ``fit``; ``scheduler`` is the pipeline's (not a module).

    ``forward`` is the whole prediction, so the trainer's autocast (bf16) covers both networks. The scheduler's
    ``alphas_cumprod`` is copied into a non-persistent buffer, so it moves with the module (``fit`` puts the module on
    its device before the first step): the scheduler's own ``add_noise`` moves its table on first use, a host copy a
    captured step must not contain, and Euler / DPM-Solver ones look timesteps up on the host.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, scheduler):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.scheduler = scheduler
        if not isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor):
            raise TypeError(f"Denoiser needs a DDPM-family scheduler with alphas_cumprod, got {type(scheduler).__name__}")
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.detach().clone(), persistent=False)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, self.text_encoder(input_ids)[0]).sample

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(a_t) x_0 + sqrt(1 - a_t) noise`` (DDPM's forward process), op for op what DDPM/DDIM/PNDM ``add_noise``
        compute; the ``.to`` calls copy only when the module is elsewhere than the batch (eager evaluation)."""
        alphas = self.alphas_cumprod.to(device=latents.device, dtype=latents.dtype)[timesteps.to(latents.device)]
        per_sample = (-1,) + (1,) * (latents.dim() - 1)
        return (alphas ** 0.5).view(per_sample) * latents + ((1 - alphas) ** 0.5).view(per_sample) * noise


class TransformerDenoiser(nn.Module):
    """SD3 transformer for ``fit``: predicts the flow velocity ``noise - x_0`` from precomputed prompt embeddings.

    The text encoders are frozen in fine-tuning, so the pipeline's own ``encode_prompt`` runs once per
    caption (:func:`sd3_concept_data`) instead of every step.
    """

    def __init__(self, transformer: nn.Module, scheduler):
        super().__init__()
        self.transformer = transformer
        self.scheduler = scheduler

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.transformer(hidden_states=noisy, encoder_hidden_states=prompt_embeds, pooled_projections=pooled, timestep=timesteps).sample


def _draw_device(latents: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Where a loss draws its noise and timesteps: on an explicit ``generator``'s device (a CPU generator gives the same
    draws on every device), else on the batch's device with its default generator (capturable; see the module docstring)."""
    return generator.device if generator is not None else latents.device


def flow_matching_loss(model: TransformerDenoiser, batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rectified-flow MSE at uniformly drawn ``s`` (see the module docstring); ``batch = (latents, prompt_embeds, pooled)``."""
    latents, prompt_embeds, pooled = batch
    device = _draw_device(latents, generator)
    noise = torch.randn(latents.shape, generator=generator, device=device).to(latents)
    sigma = torch.rand(latents.shape[0], generator=generator, device=device).to(latents)
    s = sigma.view(-1, *([1] * (latents.dim() - 1)))
    pred = model((1 - s) * latents + s * noise, sigma * model.scheduler.config.num_train_timesteps, prompt_embeds, pooled)
    return F.mse_loss(pred.float(), (noise - latents).float())


@torch.no_grad()
def sd3_concept_data(pipe, config: FinetuneConfig, split: str = "concept_train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(latents, prompt_embeds, pooled)`` of a split for the DiT pipeline (its VAE shift/scale, its ``encode_prompt``)."""
    from .model import T5_TOKENS

    size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    images, captions, _ = make_split(split, config.n_images, size)
    vae = pipe.vae
    shift = vae.config.shift_factor or 0.0
    latents = encode_latents(vae, images) / vae.config.scaling_factor
    latents = (latents - shift) * vae.config.scaling_factor
    device = next(pipe.transformer.parameters()).device
    embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, device=device, do_classifier_free_guidance=False,
                                              max_sequence_length=T5_TOKENS)
    return latents, embeds.cpu(), pooled.cpu()


def tokenize(pipe, captions: list[str]) -> torch.Tensor:
    return pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_latents(vae, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    images = torch.as_tensor(images)
    device = next(vae.parameters()).device
    out = [vae.encode(images[i:i + batch_size].to(device)).latent_dist.mean for i in range(0, len(images), batch_size)]
    return torch.cat(out).cpu() * vae.config.scaling_factor


def denoising_loss(model: Denoiser, batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE at uniformly drawn timesteps (noised by :meth:`Denoiser.add_noise`)."""
    latents, ids = batch
    n_train = model.scheduler.config.num_train_timesteps
    device = _draw_device(latents, generator)
    noise = torch.randn(latents.shape, generator=generator, device=device).to(latents)
    t = torch.randint(0, n_train, (latents.shape[0],), generator=generator, device=device).to(latents.device)
    noisy = model.add_noise(latents, noise, t)
    pred = model(noisy, t, ids)
    return F.mse_loss(pred.float(), noise.float())


@torch.no_grad()
def eval_denoising_loss(model: nn.Module, *data: torch.Tensor, seed: int = 0, repeats: int = 2, loss_fn=denoising_loss) -> float:
    """Mean held-out loss (``loss_fn``: noise prediction by default) on ``data`` tensors, with fixed noise/timesteps."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = []
    for _ in range(repeats):
        for i in range(0, len(data[0]), 32):
            losses.append(loss_fn(model, tuple(t[i:i + 32].to(device) for t in data), g).item())
    return float(np.mean(losses))


class TimeUp(StopTraining):
    """Raised by :class:`Deadline` inside ``fit`` to stop a run at its wall-clock deadline (``fit`` returns normally)."""


class Deadline:
    """``fit`` callback: records every step (time, metrics) and raises :class:`TimeUp` past ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value (``None``: never stops).
    """

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.times: list[float] = []
        self.history: list[dict] = []

    def __call__(self, step: int, model: nn.Module, metrics: dict) -> None:
        self.times.append(time.monotonic())
        self.history.append(dict(metrics))
        if self.deadline is not None and self.times[-1] > self.deadline:
            raise TimeUp(f"deadline reached after step {step}")

    def seconds_per_step(self, skip: int = 3) -> float:
        """Median time between recorded steps, ignoring the first ``skip`` (warm-up, kernel selection)."""
        gaps = np.diff(self.times[skip:]) if len(self.times) > skip + 1 else np.diff(self.times)
        return float(np.median(gaps)) if len(gaps) else float("nan")


@dataclass
class BudgetedResult:
    """What :func:`fit_within` returns: ``fit``'s numbers, and whether the deadline cut the run short."""

    steps: int
    final_loss: float
    history: list
    cut_short: bool
    seconds: float
    seconds_per_step: float
    cuda_graph: dict | None = None
    """``TrainResult.cuda_graph`` (captured or not, and why), for a cut run too."""


def fit_within(model: nn.Module, loader, loss_fn, config, deadline: float | None, callbacks=(), eval_fn=None) -> BudgetedResult:
    """``fit`` that stops at ``deadline`` (monotonic seconds); a cut run keeps its logged steps (``cut_short=True``)."""
    clock = Deadline(deadline)
    start = time.monotonic()
    result = fit(model, loader, loss_fn, config, callbacks=[*callbacks, clock], eval_fn=eval_fn)
    if result.stopped is None:
        return BudgetedResult(result.steps, result.final_loss, result.history, False, time.monotonic() - start, clock.seconds_per_step(),
                              result.cuda_graph)
    history = [h for h in clock.history if h["step"] % config.log_every == 0 or h is clock.history[-1]]
    return BudgetedResult(len(clock.history), float(clock.history[-1]["loss"]), history, True, time.monotonic() - start,
                          clock.seconds_per_step(), result.cuda_graph)


def steps_for_seconds(seconds: float, seconds_per_step: float, lo: int = 1, hi: int = 10**6) -> int:
    """How many steps of ``seconds_per_step`` fit in ``seconds`` (clipped to ``[lo, hi]``)."""
    if not (seconds_per_step > 0):
        return lo
    return int(min(hi, max(lo, seconds // seconds_per_step)))


def make_loader(*tensors: torch.Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    return _loader(*tensors, batch_size=batch_size, seed=seed)


def _loader(*tensors: torch.Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    ds = torch.utils.data.TensorDataset(*tensors)
    return torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(seed))


def _budgeted(model: nn.Module, loader, loss_fn, config, seconds: float | None, probe_steps: int = 12):
    """``config`` with ``max_steps`` sized so the run fits in ``seconds`` (step time measured on a copy), and its deadline."""
    if seconds is None:
        return config, None
    start = time.monotonic()
    probe = fit_within(copy.deepcopy(model), loader, loss_fn, replace(config, max_steps=probe_steps, output_dir=None, checkpoint_every=0,
                                                                     resume=False, progress=False, log_every=probe_steps), None)
    left = seconds - (time.monotonic() - start)
    steps = steps_for_seconds(0.92 * left, probe.seconds_per_step, lo=2)
    config = replace(config, max_steps=steps, warmup_steps=min(config.warmup_steps, steps // 5), log_every=max(1, steps // 60))
    return config, start + seconds


def vae_reconstruction_loss(vae: nn.Module, batch, kl_weight: float) -> tuple[torch.Tensor, dict]:
    """MSE of the reconstruction of a posterior sample (drawn on the images' device) + ``kl_weight`` x the KL per pixel."""
    (img,) = batch
    post = vae.encode(img).latent_dist
    rec = vae.decode(post.sample()).sample
    kl = post.kl().mean() / img[0].numel()
    mse = F.mse_loss(rec.float(), img.float())
    return mse + kl_weight * kl.float(), {"mse": mse.detach()}  # a 0-d tensor: capturable by a CUDA graph


def pretrain_base(pipe, config: PretrainConfig, vae_seconds: float | None = None, unet_seconds: float | None = None,
                  data: tuple | None = None) -> dict:
    """Train the VAE (reconstruction + KL), set its ``scaling_factor``, then UNet + text encoder on the base textures.

    With ``vae_seconds`` / ``unet_seconds`` each stage's ``max_steps`` is sized from a measured step time to end
    inside that many seconds (a deadline stops it if the device slows down; the result then says ``cut_short``).
    ``data``: ``(images, captions)`` instead of ``make_split("train", config.n_images, ...)``.
    """
    images, captions = data if data is not None else make_split("train", config.n_images, config.pipeline.image_size)[:2]
    x = torch.as_tensor(images)
    out: dict = {"vae_history": [], "vae_cut_short": False}
    if config.vae_steps:
        vae_loss = functools.partial(vae_reconstruction_loss, kl_weight=config.kl_weight)
        pipe.vae.requires_grad_(True)
        vae_loader = _loader(x, batch_size=config.batch_size, seed=1)
        vae_cfg = replace(config.train, max_steps=config.vae_steps, output_dir=None, checkpoint_every=0, resume=False)
        vae_cfg, deadline = _budgeted(pipe.vae, vae_loader, vae_loss, vae_cfg, vae_seconds)
        vae = fit_within(pipe.vae, vae_loader, vae_loss, vae_cfg, deadline)
        out.update(vae_history=vae.history, vae_cut_short=vae.cut_short, vae_steps=vae.steps, vae_seconds=round(vae.seconds, 1),
                   vae_cuda_graph=vae.cuda_graph)
    pipe.vae.requires_grad_(False).eval()
    pipe.vae.register_to_config(scaling_factor=1.0)
    latents = encode_latents(pipe.vae, x)
    scaling = float(1.0 / latents.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    drop = np.random.default_rng(config.train.seed).random(len(captions)) < UNCOND_PROB
    ids = tokenize(pipe, ["" if d else c for c, d in zip(captions, drop)])
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler)
    model.requires_grad_(True)
    loader = _loader(latents, ids, batch_size=config.batch_size, seed=2)
    train_cfg, deadline = _budgeted(model, loader, denoising_loss, config.train, unet_seconds)
    result = fit_within(model, loader, denoising_loss, train_cfg, deadline)
    model.requires_grad_(False).eval()
    return {**out, "history": result.history, "scaling_factor": scaling, "final_loss": result.final_loss, "steps": result.steps,
            "planned_steps": train_cfg.max_steps, "cut_short": result.cut_short, "seconds": round(result.seconds, 1),
            "seconds_per_step": result.seconds_per_step, "cuda_graph": result.cuda_graph}


class _EMA:
    """Exponential moving average of the trainable parameters, updated after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in trainable_parameters(model)}

    @torch.no_grad()
    def __call__(self, step: int, model: nn.Module, metrics: dict) -> None:
        for n, p in trainable_parameters(model):
            self.shadow[n].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for n, p in trainable_parameters(model):
            p.copy_(self.shadow[n])


def concept_data(pipe, config: FinetuneConfig, split: str = "concept_train") -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and token ids of the fine-tuning set (new texture, plus ``base_mix`` base scenes)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images, captions, _ = make_split(split, config.n_images, size)
    n_base = int(round(config.base_mix * config.n_images))
    if n_base:
        base_images, base_captions, _ = make_split("train" if split == "concept_train" else "val", n_base, size)
        images, captions = np.concatenate([images, base_images]), captions + base_captions
    return encode_latents(pipe.vae, images), tokenize(pipe, captions)


def finetune(pipe, config: FinetuneConfig, eval_fn=None, data: tuple[torch.Tensor, torch.Tensor] | None = None,
             deadline: float | None = None) -> tuple[AdapterReport, BudgetedResult]:
    """Wrap the UNet's attention projections with ``config.adapter`` and train only the adapter (noise prediction).

    ``deadline`` (``time.monotonic()`` seconds): stop there; the result then says ``cut_short``.
    """
    data = data if data is not None else concept_data(pipe, config)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    return _train_adapter(Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler), pipe.unet, denoising_loss, data, config, eval_fn, deadline)


def finetune_transformer(pipe, config: FinetuneConfig, eval_fn=None, data: tuple | None = None,
                         deadline: float | None = None) -> tuple[AdapterReport, BudgetedResult]:
    """The same for the DiT pipeline's ``SD3Transformer2DModel`` (rectified-flow loss); ``data`` from :func:`sd3_concept_data`."""
    data = data if data is not None else sd3_concept_data(pipe, config)
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False)
    return _train_adapter(TransformerDenoiser(pipe.transformer, pipe.scheduler), pipe.transformer, flow_matching_loss, data, config,
                          eval_fn, deadline)


def _train_adapter(model: nn.Module, backbone: nn.Module, loss_fn, data: tuple, config: FinetuneConfig, eval_fn, deadline):
    report = apply(backbone, config.adapter, rank=config.rank, alpha=config.alpha, targets=list(config.targets), **adapter_options(config))
    callbacks = []
    ema = _EMA(model, config.ema) if config.ema > 0 else None
    if ema is not None:
        callbacks.append(ema)
    result = fit_within(model, _loader(*data, batch_size=config.batch_size, seed=config.train.seed), loss_fn,
                        config.train, deadline, callbacks=callbacks, eval_fn=eval_fn)
    if ema is not None:
        ema.copy_to(model)
    backbone.eval()
    return report, result


def copy_pipeline(pipe):
    """A deep copy of ``pipe`` (so several adapters can be trained from one loaded base)."""
    return copy.deepcopy(pipe)
