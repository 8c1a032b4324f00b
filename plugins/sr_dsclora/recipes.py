"""Recipes: train SPAN, fine-tune it with DSCLoRA, evaluate, upscale (tiled), measure cost.

Training goes through the shared :func:`lowrank_vision.core.train.fit` (accelerate), so the same
call runs on a CPU, a GPU or ``accelerate launch`` on several GPUs; its settings are the nested
``SRTrainConfig.train``. The default data are the bundled *train* photos
(:mod:`lowrank_vision.datasets.images`); evaluation defaults to the disjoint bundled *eval* photos.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowrank_vision.core import count_parameters
from lowrank_vision.datasets.images import SRImage, SRPatchDataset, bicubic_upsample

from .config import DSCLoRAConfig, SPANConfig, SRTrainConfig
from .distill import DistillationLoss, attach_dsclora, fold_dsclora
from .metrics import psnr_y, ssim_y
from .model import SPAN, reparameterize

__all__ = [
    "RECEPTIVE_RADIUS",
    "make_loader",
    "train_span",
    "finetune_dsclora",
    "finetune_full",
    "upscale",
    "evaluate",
    "count_flops",
    "count_convs",
    "measure_runtime",
    "cost_report",
    "compare_runtime",
    "interleaved_runtimes",
    "runtime_ratio",
]

RECEPTIVE_RADIUS = 21
"""LR pixels that influence one output pixel on each side (21 chained 3x3 convs); tiling with an
overlap of at least this is exact."""


def make_loader(cfg: SRTrainConfig) -> torch.utils.data.DataLoader:
    """Random aligned patches, ``max_steps * batch_size`` of them (one pass = the whole run)."""
    length = cfg.train.max_steps * cfg.batch_size
    kwargs = dict(lr_patch=cfg.lr_patch, length=length, seed=cfg.train.seed)
    if cfg.data is None:
        dataset = SRPatchDataset.from_bundled(cfg.scale, **kwargs)
    else:
        dataset = SRPatchDataset.from_folder(cfg.data, cfg.scale, lr_dir=cfg.lr_dir, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers)


def _l1_loss(model: nn.Module, batch) -> Tensor:
    lr, hr = batch
    return F.l1_loss(model(lr), hr)


def train_span(cfg: SRTrainConfig, model: Optional[SPAN] = None):
    """Train SPAN (training form, L1 loss) from scratch; returns ``(deployed SPAN, TrainResult)``."""
    from lowrank_vision.core.train import fit

    torch.manual_seed(cfg.train.seed)
    model = SPAN(SPANConfig(scale=cfg.scale, channels=cfg.channels)) if model is None else model
    if model.scale != cfg.scale:
        raise ValueError(f"model scale {model.scale} differs from SRTrainConfig.scale {cfg.scale}")
    if cfg.train_form == "deployed":
        reparameterize(model)
    result = fit(model, make_loader(cfg), _l1_loss, cfg.train)
    model = reparameterize(result.model.cpu().eval())
    return model, result


def finetune_dsclora(teacher: SPAN, cfg: SRTrainConfig, dsclora: Optional[DSCLoRAConfig] = None):
    """DSCLoRA fine-tuning of a deployed SPAN, distilled from that same SPAN as frozen teacher.

    Returns ``(folded student SPAN, TrainResult, (block_report, tail_report))``; the student has
    exactly the teacher's architecture and parameter count.
    """
    from lowrank_vision.core.train import fit

    dsclora = dsclora or DSCLoRAConfig()
    if teacher.scale != cfg.scale:
        raise ValueError(f"teacher scale {teacher.scale} differs from SRTrainConfig.scale {cfg.scale}")
    torch.manual_seed(cfg.train.seed)
    student = copy.deepcopy(teacher).train()
    reports = attach_dsclora(student, dsclora)
    loss = DistillationLoss(copy.deepcopy(teacher), dsclora)
    result = fit(student, make_loader(cfg), loss, cfg.train)
    student = fold_dsclora(result.model.cpu().eval())
    return student, result, reports


def finetune_full(teacher: SPAN, cfg: SRTrainConfig):
    """Control run: continue training every parameter of the deployed SPAN with L1 for the same steps."""
    from lowrank_vision.core.train import fit

    torch.manual_seed(cfg.train.seed)
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    result = fit(model, make_loader(cfg), _l1_loss, cfg.train)
    return result.model.cpu().eval(), result


@torch.no_grad()
def upscale(model: nn.Module, lr: Tensor, tile: int = 0, overlap: int = 24, progress: bool = False) -> Tensor:
    """Super-resolve ``lr [3, h, w]`` or ``[B, 3, h, w]`` in ``[0, 1]``; output clamped to ``[0, 1]``.

    ``tile > 0`` processes ``tile x tile`` LR tiles with ``overlap`` context pixels on each side
    (only the centre is kept); with ``overlap >= RECEPTIVE_RADIUS`` the result equals the untiled one.
    """
    if tile < 0 or overlap < 0:
        raise ValueError(f"tile and overlap must be >= 0, got tile={tile}, overlap={overlap}")
    batched = lr.dim() == 4
    x = lr if batched else lr.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"lr must be [3, h, w] or [B, 3, h, w], got shape {tuple(lr.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    s = model.scale
    h, w = x.shape[-2:]
    if tile == 0 or (h <= tile and w <= tile):
        out = model(x.to(device)).cpu()
    else:
        from tqdm.auto import tqdm

        out = torch.zeros(x.shape[0], 3, h * s, w * s)
        boxes = [(y, xx) for y in range(0, h, tile) for xx in range(0, w, tile)]
        for y, xx in tqdm(boxes, desc="tiles", disable=not progress):
            y0, x0 = max(0, y - overlap), max(0, xx - overlap)
            y1, x1 = min(h, y + tile + overlap), min(w, xx + tile + overlap)
            piece = model(x[..., y0:y1, x0:x1].to(device)).cpu()
            ty, tx = min(tile, h - y), min(tile, w - xx)
            out[..., y * s : (y + ty) * s, xx * s : (xx + tx) * s] = piece[
                ..., (y - y0) * s : (y - y0 + ty) * s, (xx - x0) * s : (xx - x0 + tx) * s
            ]
    model.train(was_training)
    out = out.clamp(0, 1)
    return out if batched else out[0]


@torch.no_grad()
def evaluate(model: Optional[nn.Module], images: Sequence[SRImage], scale: int, tile: int = 0, progress: bool = False) -> dict:
    """Y-channel PSNR/SSIM (border = scale) per image and on average; ``model=None`` is bicubic."""
    from tqdm.auto import tqdm

    if model is not None and model.scale != scale:
        raise ValueError(f"model scale {model.scale} differs from the evaluation scale {scale}")
    rows = []
    for im in tqdm(images, desc="eval", disable=not progress):
        lr = im.lr.unsqueeze(0)
        sr = bicubic_upsample(lr, scale) if model is None else upscale(model, lr, tile=tile)
        hr = im.hr.unsqueeze(0)
        rows.append({"image": im.name, "psnr": psnr_y(sr, hr, scale), "ssim": ssim_y(sr, hr, scale)})
    return {
        "psnr": statistics.fmean(r["psnr"] for r in rows),
        "ssim": statistics.fmean(r["ssim"] for r in rows),
        "per_image": rows,
    }


@torch.no_grad()
def count_flops(model: nn.Module, lr_size: tuple[int, int] = (256, 256)) -> int:
    """Multiply-accumulates of the convs for one ``3 x lr_size`` input (fvcore/NTIRE "FLOPs")."""
    total = 0

    def hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() // output.shape[0] * (module.in_channels // module.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) is nn.Conv2d]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, *lr_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_convs(model: nn.Module) -> int:
    """Conv layers that run at inference (eval_conv in deployed SPAN; branch convs are not counted)."""
    return sum(1 for name, m in model.named_modules() if type(m) is nn.Conv2d and ".conv." not in f".{name}." and not name.endswith(".sk"))


@torch.no_grad()
def measure_runtime(model: nn.Module, lr_size: tuple[int, int] = (128, 128), repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time (ms) of one forward pass on a ``1 x 3 x lr_size`` input."""
    device = next(model.parameters()).device
    x = torch.rand(1, 3, *lr_size, device=device)
    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():  # what deployment runs: no autograd bookkeeping in the time
        for _ in range(warmup):
            model(x)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def cost_report(model: SPAN, lr_size: tuple[int, int] = (256, 256), runtime_size: tuple[int, int] = (128, 128), repeats: int = 10) -> dict:
    """NTIRE-ESR-style cost: params, FLOPs (MACs) at ``lr_size``, conv count, median runtime."""
    return {
        "params": count_parameters(model)[1],
        "flops_g": count_flops(model, lr_size) / 1e9,
        "flops_input": list(lr_size),
        "convs": count_convs(model),
        "runtime_ms": measure_runtime(model, runtime_size, repeats=repeats),
        "runtime_input": list(runtime_size),
    }



@torch.no_grad()
def interleaved_runtimes(models: dict, lr_size: tuple[int, int] = (128, 128), rounds: int = 5, repeats: int = 5) -> dict:
    """Each model's median forward time (ms) in each of ``rounds`` interleaved rounds (``{name: [ms per round]}``), so
    that load drift on a shared machine hits every model alike; the order of the models alternates between rounds."""
    times: dict = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(measure_runtime(models[name], lr_size, repeats=repeats, warmup=1))
    return times


def compare_runtime(models: dict, lr_size: tuple[int, int] = (128, 128), rounds: int = 5, repeats: int = 5) -> dict:
    """Median forward time (ms) per model over :func:`interleaved_runtimes`' rounds."""
    return {name: statistics.median(t) for name, t in interleaved_runtimes(models, lr_size, rounds, repeats).items()}


def runtime_ratio(times: dict, numerator: str, denominator: str) -> dict:
    """Per-round ratio of two models' times from :func:`interleaved_runtimes`: median, min, max and the rounds."""
    ratios = [a / b for a, b in zip(times[numerator], times[denominator])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}

