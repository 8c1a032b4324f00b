"""Training recipes on ``core.train.fit``: base pre-training and adapter fine-tuning of the UNet.

Loss: noise prediction (epsilon MSE) with the pipeline's own scheduler (``add_noise``, its
``num_train_timesteps``); text conditioning through the pipeline's text encoder (trained with the
UNet in pre-training, frozen in fine-tuning); 10 % empty captions in pre-training so classifier-free
guidance works. Latents are the VAE posterior means times ``scaling_factor``, computed once.
Fine-tuning wraps ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of every UNet attention with a core
adapter (``lora``, ``dora`` or ``nera`` = the KAN form ``nera_kan``); EMA of the adapter weights is
an option (a ``fit`` callback; the averaged weights are copied in at the end).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_vision.core import AdapterReport, apply, trainable_parameters
from lowrank_vision.core.train import TrainResult, fit
from lowrank_vision.datasets.diffusion.procedural import make_split

from .config import FinetuneConfig, PretrainConfig

__all__ = ["Denoiser", "core_method", "tokenize", "encode_latents", "denoising_loss", "pretrain_base", "finetune",
           "eval_denoising_loss", "adapter_options"]

UNCOND_PROB = 0.1


def core_method(adapter: str) -> str:
    """Registry name in the core: ``nera`` is the KAN form, registered as ``nera_kan`` until the core renames it."""
    if adapter == "nera":
        import lowrank_vision.core.adapters.nera_kan  # noqa: F401  (registration)

        return "nera_kan"
    return adapter


def adapter_options(config: FinetuneConfig) -> dict:
    return {"grid_size": config.grid_size, "spline_order": config.spline_order} if config.adapter == "nera" else {}


class Denoiser(nn.Module):
    """UNet + text encoder as one module for ``fit``; ``scheduler`` is the pipeline's (not a module).

    ``forward`` is the whole prediction, so the trainer's autocast (bf16) covers both networks.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, scheduler):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.scheduler = scheduler

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, self.text_encoder(input_ids)[0]).sample


def tokenize(pipe, captions: list[str]) -> torch.Tensor:
    return pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_latents(vae, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    images = torch.as_tensor(images)
    device = next(vae.parameters()).device
    out = [vae.encode(images[i:i + batch_size].to(device)).latent_dist.mean for i in range(0, len(images), batch_size)]
    return torch.cat(out).cpu() * vae.config.scaling_factor


def denoising_loss(model: Denoiser, batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE at uniformly drawn timesteps."""
    latents, ids = batch
    n_train = model.scheduler.config.num_train_timesteps
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
    t = torch.randint(0, n_train, (latents.shape[0],), generator=generator, device="cpu").to(latents.device)
    noisy = model.scheduler.add_noise(latents, noise, t)
    pred = model(noisy, t, ids)
    return F.mse_loss(pred.float(), noise.float())


@torch.no_grad()
def eval_denoising_loss(model: Denoiser, latents: torch.Tensor, ids: torch.Tensor, seed: int = 0, repeats: int = 2) -> float:
    """Mean held-out noise-prediction loss with fixed noise/timesteps (comparable between runs)."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.unet.parameters()).device
    losses = []
    for _ in range(repeats):
        for i in range(0, len(latents), 32):
            losses.append(denoising_loss(model, (latents[i:i + 32].to(device), ids[i:i + 32].to(device)), g).item())
    return float(np.mean(losses))


def _loader(*tensors: torch.Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    ds = torch.utils.data.TensorDataset(*tensors)
    return torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(seed))


def pretrain_base(pipe, config: PretrainConfig) -> dict:
    """Train the VAE (reconstruction + KL), set its ``scaling_factor``, then UNet + text encoder on the base textures."""
    images, captions, _ = make_split("train", config.n_images, config.pipeline.image_size)
    x = torch.from_numpy(images)
    vae_history: list = []
    if config.vae_steps:
        def vae_loss(vae, batch):
            (img,) = batch
            post = vae.encode(img).latent_dist
            rec = vae.decode(post.sample()).sample
            kl = post.kl().mean() / img[0].numel()
            mse = F.mse_loss(rec, img)
            return mse + config.kl_weight * kl, {"mse": mse.item()}

        vae_cfg = replace(config.train, max_steps=config.vae_steps, output_dir=None, checkpoint_every=0, resume=False)
        pipe.vae.requires_grad_(True)
        vae_history = fit(pipe.vae, _loader(x, batch_size=config.batch_size, seed=1), vae_loss, vae_cfg).history
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
    result = fit(model, _loader(latents, ids, batch_size=config.batch_size, seed=2), denoising_loss, config.train)
    model.requires_grad_(False).eval()
    return {"vae_history": vae_history, "history": result.history, "scaling_factor": scaling, "final_loss": result.final_loss}


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


def finetune(pipe, config: FinetuneConfig, eval_fn=None, data: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[AdapterReport, TrainResult]:
    """Wrap the UNet's attention projections with ``config.adapter`` and train only the adapter."""
    latents, ids = data if data is not None else concept_data(pipe, config)
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    report = apply(pipe.unet, core_method(config.adapter), rank=config.rank, alpha=config.alpha,
                   targets=list(config.targets), **adapter_options(config))
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler)
    callbacks = []
    ema = _EMA(model, config.ema) if config.ema > 0 else None
    if ema is not None:
        callbacks.append(ema)
    result = fit(model, _loader(latents, ids, batch_size=config.batch_size, seed=config.train.seed), denoising_loss,
                 config.train, callbacks=callbacks, eval_fn=eval_fn)
    if ema is not None:
        ema.copy_to(model)
    pipe.unet.eval()
    return report, result


def copy_pipeline(pipe):
    """A deep copy of ``pipe`` (so several adapters can be trained from one loaded base)."""
    return copy.deepcopy(pipe)
