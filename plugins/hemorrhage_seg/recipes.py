"""TBI -> SAH transfer-learning recipes (Minoccheri et al., arXiv 2508.01772) on head CT.

``pretrain`` trains a UNet on the TBI domain; ``finetune`` adapts a copy with one strategy
(:func:`apply_strategy`); ``cross_validate`` runs one strategy/rank in k-fold cross-validation (the
paper: 3 folds) and pools the held-out predictions; ``compare`` runs the strategy x rank grid;
``evaluate`` / ``segment_file`` predict. Training goes through :func:`lowrank_vision.core.train.fit`.

Choices the paper leaves open: loss = soft Dice (over the batch) + binary cross-entropy with a
positive-class weight of 10 (blood is ~1 % of the voxels; unweighted BCE stalled at p < 0.5); AdamW with
cosine decay; every volume on the model's canonical grid (checkpoint ``geometry``); small volumes of one
shape as whole-volume batches, others as foreground-aware random patches (:func:`training_set`), with
whole-volume or sliding-window prediction (:func:`volume_probability`) and metrics on each file's own grid;
folds from a seeded permutation of the cases;
probability threshold 0.5. Adapters go on every convolution and transposed convolution of the chosen
``modules`` (``all``, ``encoder`` or ``decoder``; the paper compares "different modules" without saying
which) with alpha = ``alpha_over_rank`` * rank (default 1, so over-parameterised ranks are not damped;
alpha = 2 * rank gave no consistent gain at the CPU preset, docs/results/hemorrhage.md). Learning rates:
:mod:`.config`.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.datasets.ct.readers import blood_volume_ml

from .config import ADAPTER_METHODS, FINETUNE_STRATEGIES, MODULE_GROUPS, SegExperimentConfig, UNetConfig
from .metrics import dice, plot_dice_vs_params, results_table, summarize_cases
from .model import DECODER_REGEX, MultiViewUNet, build_network, checkpoint_grid, load_checkpoint, pad_to_multiple, save_checkpoint

__all__ = ["apply_strategy", "make_synthetic_data", "load_dataset", "seg_loss", "predict_volume", "volume_probability",
           "evaluate", "training_set", "segment_volume", "segment_file", "NotHeadCTWarning", "pretrain", "finetune", "fold_indices", "cross_validate", "compare"]


# ----------------------------------------------------------------------------- fine-tuning strategies


def apply_strategy(model: nn.Module, strategy: str, rank: int | None = None, modules: str = "all",
                   alpha: float | None = None) -> int:
    """Prepare ``model`` in place for ``strategy`` (one of ``FINETUNE_STRATEGIES``); returns its trainable parameters."""
    from lowrank_vision.core import apply, count_parameters

    if strategy not in FINETUNE_STRATEGIES:
        raise ValueError(f"strategy must be one of {FINETUNE_STRATEGIES}, got {strategy!r}")
    if modules not in MODULE_GROUPS:
        raise ValueError(f"modules must be one of {MODULE_GROUPS}, got {modules!r}")
    if strategy in ("none", "full"):
        model.requires_grad_(strategy == "full")
        return count_parameters(model)[0]
    if strategy == "decoder":
        dec = re.compile(DECODER_REGEX)
        for name, p in model.named_parameters():
            p.requires_grad_(bool(dec.fullmatch(name.rsplit(".", 1)[0])))
        return count_parameters(model)[0]
    if rank is None or int(rank) < 1:
        raise ValueError(f"rank must be an int >= 1 for strategy {strategy!r}, got {rank!r}")
    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    if modules == "all":
        targets = convs
    else:
        dec = re.compile(DECODER_REGEX)
        targets = [n for n, m in model.named_modules() if isinstance(m, convs) and bool(dec.fullmatch(n)) == (modules == "decoder")]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*over-parameterised.*")
        report = apply(model, strategy, rank=int(rank), alpha=float(alpha if alpha is not None else rank), targets=targets)
    return report.trainable_params


# ----------------------------------------------------------------------------- data


def make_synthetic_data(cfg: SegExperimentConfig, root: str | os.PathLike, progress: bool = True) -> tuple[Path, Path]:
    """Write (or reuse) the TBI and SAH NIfTI folders of ``cfg.seed`` under ``root``."""
    from lowrank_vision.datasets.ct.phantom import HeadCTConfig, write_head_dataset
    from lowrank_vision.datasets.ct.synthetic import write_synthetic_dataset

    root = Path(root)
    if isinstance(cfg.data, HeadCTConfig):
        workers = max(1, min(16, (os.cpu_count() or 1) - 1))
        tbi = write_head_dataset(root / "tbi", "tbi", cfg.n_tbi, cfg.seed, cfg.data_grids, progress=progress, workers=workers)
        sah = write_head_dataset(root / "sah", "sah", cfg.n_sah, cfg.seed, cfg.data_grids, progress=progress, workers=workers)
        return tbi, sah
    tbi = write_synthetic_dataset(root / "tbi", "tbi", cfg.n_tbi, cfg.seed, cfg.data, progress=progress)
    sah = write_synthetic_dataset(root / "sah", "sah", cfg.n_sah, cfg.seed, cfg.data, progress=progress)
    return tbi, sah


def load_dataset(folder: str | os.PathLike, windows: Sequence[str], grid=None, progress: bool = False):
    """The image/mask pairs of ``folder`` (any layout the CT readers know) on the canonical ``grid``, windowed, in memory."""
    from lowrank_vision.datasets.ct.readers import CTSegmentationDataset, find_image_mask_pairs

    return CTSegmentationDataset(find_image_mask_pairs(folder), windows=windows, grid=grid, progress=progress)


# ----------------------------------------------------------------------------- loss and inference


def _soft_dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    soft_dice = 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
    pos_weight = logits.new_full((), 10.0)  # a fill on the device: torch.tensor(...) would copy from the host and break graph capture
    return soft_dice + nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


def seg_loss(model: nn.Module, batch: dict):
    """Dice + BCE; a multi-view network also gets the mean of its per-view losses."""
    x, y = batch["image"], batch["label"]
    out = model(x, return_views=True) if isinstance(getattr(model, "module", model), MultiViewUNet) else model(x)
    if isinstance(out, tuple):
        fused, views = out
        return _soft_dice_bce(fused, y) + sum(_soft_dice_bce(v, y) for v in views.values()) / len(views)
    return _soft_dice_bce(out, y)


@torch.no_grad()
def predict_volume(model: nn.Module, image: torch.Tensor, divisor: int, threshold: float = 0.5) -> np.ndarray:
    """Binary mask (x, y, z) for one windowed image (C, x, y, z); pads to multiples of ``divisor``."""
    model.eval()
    dev = next(model.parameters()).device
    x, crop = pad_to_multiple(image.unsqueeze(0).to(dev), divisor)
    prob = torch.sigmoid(model(x).float())[crop]
    return (prob[0, 0] > threshold).cpu().numpy()


@torch.no_grad()
def volume_probability(model: nn.Module, image: torch.Tensor, arch: UNetConfig, max_whole_voxels: int = 160 * 160 * 48,
                       roi: tuple[int, int, int] = (128, 128, 32)) -> torch.Tensor:
    """Hemorrhage probability (x, y, z) of one windowed image (C, x, y, z).

    Volumes up to ``max_whole_voxels`` go through the network in one pass (zero-padded to a multiple
    of the UNet's stride product); larger ones through MONAI's Gaussian-weighted sliding window of
    ``roi`` voxels with 25 % overlap (instance normalisation then sees one window at a time).
    """
    model.eval()
    dev = next(model.parameters()).device
    x, crop = pad_to_multiple(image.unsqueeze(0), arch.divisor)
    if image[0].numel() <= max_whole_voxels:
        return torch.sigmoid(model(x.to(dev)).float())[crop][0, 0].cpu()
    from monai.inferers import sliding_window_inference

    if any(r % arch.divisor for r in roi):
        raise ValueError(f"roi {roi} must be multiples of {arch.divisor}")
    logits = sliding_window_inference(x.to(dev), roi_size=roi, sw_batch_size=1, predictor=model, overlap=0.25, mode="gaussian")
    return torch.sigmoid(logits.float())[crop][0, 0].cpu()


def evaluate(model: nn.Module, dataset, arch: UNetConfig, indices: Optional[Sequence[int]] = None, progress: bool = False) -> list[dict]:
    """Per-case ``{"name", "dice", "true_ml", "pred_ml"}`` over ``indices`` of ``dataset``, measured on each
    file's own grid (a prediction on the canonical grid is mapped back first)."""
    from tqdm.auto import tqdm

    from lowrank_vision.datasets.ct.geometry import from_canonical

    out = []
    for i in tqdm(list(indices if indices is not None else range(len(dataset))), desc="eval", disable=not progress):
        item = dataset[i]
        prob = volume_probability(model, item["image"], arch)
        if dataset.on_file_grid(i):
            pred, true, sp = prob.numpy() > 0.5, item["label"][0].numpy() > 0.5, item["spacing"].tolist()
        else:
            pred = from_canonical(prob, dataset.grid_maps[i]).numpy() > 0.5
            true, sp = dataset.file_label(i)
        out.append({"name": dataset.names[i], "dice": dice(pred, true), "true_ml": blood_volume_ml(true, sp),
                    "pred_ml": blood_volume_ml(pred, sp)})
    return out


@torch.no_grad()
def segment_volume(hu: np.ndarray, affine: np.ndarray, model: nn.Module, arch: UNetConfig, windows: Sequence[str], grid=None,
                   threshold: float = 0.5, max_whole_voxels: int = 160 * 160 * 48) -> np.ndarray:
    """uint8 mask on the exact grid of ``hu`` (HU, (x, y, z), voxel-to-world ``affine``): the volume goes to the
    model's canonical ``grid`` (None: its own grid), the probability comes back before thresholding."""
    from lowrank_vision.datasets.ct.geometry import from_canonical, to_canonical
    from lowrank_vision.datasets.ct.readers import window_hu

    if grid is None:
        return (volume_probability(model, window_hu(hu, windows), arch, max_whole_voxels) > threshold).numpy().astype(np.uint8)
    x, gm = to_canonical(hu, affine, grid)
    prob = volume_probability(model, window_hu(x, windows), arch, max_whole_voxels)
    return (from_canonical(prob, gm) > threshold).numpy().astype(np.uint8)


class NotHeadCTWarning(UserWarning):
    """The input of ``predict`` does not look like a head CT, or its predicted blood volume is implausible."""


@torch.no_grad()
def segment_file(in_path: str | os.PathLike, out_path: str | os.PathLike, model: nn.Module, arch: UNetConfig,
                 windows: Sequence[str], grid=None, threshold: float = 0.5, max_whole_voxels: int = 160 * 160 * 48) -> dict:
    """Segment one CT volume in HU (NIfTI file or DICOM series folder) and write the uint8 NIfTI mask on the
    input's exact grid (its affine, and its header for a NIfTI input).

    The input is checked first (:func:`lowrank_vision.datasets.ct.checks.head_ct_check`: extent, field of view,
    HU histogram) and the predicted blood volume after; every finding is a sentence in ``warnings`` of the
    returned report and one :class:`NotHeadCTWarning`.
    """
    from lowrank_vision.datasets.ct.checks import blood_volume_check, head_ct_check
    from lowrank_vision.datasets.ct.geometry import axis_codes, voxel_spacing
    from lowrank_vision.datasets.ct.readers import load_ct, save_mask_like

    hu, affine, header = load_ct(in_path)
    check = head_ct_check(hu, affine)
    mask = segment_volume(hu, affine, model, arch, windows, grid, threshold, max_whole_voxels)
    spacing = voxel_spacing(affine)
    save_mask_like(mask, header, affine, out_path)
    blood_ml = blood_volume_ml(mask, spacing)
    found = [f"input does not look like a head CT: {r}" for r in check["reasons"]] + blood_volume_check(blood_ml)
    if found:
        warnings.warn(f"{in_path}: " + "; ".join(found), NotHeadCTWarning, stacklevel=2)
    return {"input": str(in_path), "output": str(out_path), "blood_ml": blood_ml, "voxels": int(mask.sum()),
            "spacing_mm": [float(s) for s in spacing], "shape": list(mask.shape), "orientation": axis_codes(affine),
            "model_grid": grid.to_dict() if grid is not None else "the input's own grid", "warnings": found,
            "input_check": check["measures"]}


# ----------------------------------------------------------------------------- training


def training_set(dataset, indices: Sequence[int], cfg: SegExperimentConfig, seed: int = 0):
    """``(torch Dataset, "whole volumes" | "patches")`` for training on ``indices`` of a cached ``dataset``: whole
    volumes when they all share one small shape that the UNet takes (see ``cfg.whole_volume_voxels``), else
    foreground-aware random crops of ``cfg.patch`` (shrunk to the largest volume, rounded up to the stride product)."""
    from torch.utils.data import Subset

    from lowrank_vision.datasets.ct.patches import RandomPatches

    sub = Subset(dataset, list(indices))
    d = cfg.net.divisor
    shapes = {tuple(dataset[i]["image"].shape[-3:]) for i in indices}
    if len(shapes) == 1:
        (shape,) = shapes
        if int(np.prod(shape)) <= cfg.whole_volume_voxels and all(n % d == 0 for n in shape):
            return sub, "whole volumes"
    largest = [max(s[k] for s in shapes) for k in range(3)]
    roi = [min(int(p), -(-n // d) * d) for p, n in zip(cfg.patch, largest)]
    return RandomPatches(sub, roi, cfg.samples_per_case, seed=seed, thick_slice_prob=cfg.thick_slice_prob,
                         thick_slice_factor=cfg.thick_slice_factor), "patches"


def _eval_device(tc: TrainConfig) -> str:
    """Where held-out cases are predicted: the GPU when the trainer may use one (training returns CPU models)."""
    return "cuda" if not tc.cpu and torch.cuda.is_available() else "cpu"


def _fit(model, dataset, indices, tc: TrainConfig, cfg: SegExperimentConfig, progress: bool = True):
    from torch.utils.data import DataLoader

    from lowrank_vision.core.train import fit

    data, _ = training_set(dataset, indices, cfg, seed=tc.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) > cfg.batch_size)
    return fit(model, loader, seg_loss, replace(tc, progress=tc.progress and progress))


def pretrain(cfg: SegExperimentConfig, data_root: str | os.PathLike, out_path: str | os.PathLike, progress: bool = True) -> dict:
    """Train on TBI with ``cfg.pretrain`` (all but every 5th case, which is held out), save the checkpoint, return metrics."""
    from lowrank_vision.core import count_parameters

    tbi_root, sah_root = make_synthetic_data(cfg, data_root, progress)
    tbi = load_dataset(tbi_root, cfg.windows, cfg.grid, progress)
    torch.manual_seed(cfg.pretrain.seed)
    net = build_network(cfg.net)
    held = [i for i in range(len(tbi)) if i % 5 == 4] or [len(tbi) - 1]
    train = [i for i in range(len(tbi)) if i not in held]
    res = _fit(net, tbi, train, cfg.pretrain, cfg, progress)
    net = res.model.cpu()
    save_checkpoint(net, cfg.net, out_path, cfg.windows, extra={"trained_on": "synthetic TBI", "steps": res.steps}, grid=cfg.grid)
    sah = load_dataset(sah_root, cfg.windows, cfg.grid)
    on = net.to(_eval_device(cfg.pretrain))
    m = {"checkpoint": str(out_path), "steps": res.steps, "final_loss": res.final_loss,
         "tbi_heldout_dice": summarize_cases(evaluate(on, tbi, cfg.net, held))["dice_mean"],
         "sah_dice_pretrained_only": summarize_cases(evaluate(on, sah, cfg.net))["dice_mean"],
         "params": count_parameters(net)[1], "trainer": trainer_record(res)}
    net.cpu()
    return m


def trainer_record(result) -> dict:
    """How ``fit`` ran the steps: CUDA-graph capture (or why not), the AdamW kernel, measured adapter strategies."""
    return {"cuda_graph": result.cuda_graph, "optimizer": result.optimizer, "strategies": result.strategies}


def finetune(base: nn.Module, dataset, indices, strategy: str, rank: Optional[int], cfg: SegExperimentConfig,
             progress: bool = True, record: Optional[dict] = None) -> tuple[nn.Module, int]:
    """Copy of ``base`` fine-tuned on ``indices`` with ``strategy`` (``cfg.train`` at ``cfg.lr_for(strategy)``);
    returns (model, trainable params). A ``record`` dict given is filled with :func:`trainer_record` of the run."""
    model = copy.deepcopy(base)
    alpha = cfg.alpha_over_rank * int(rank) if strategy in ADAPTER_METHODS and rank is not None else None
    torch.manual_seed(cfg.train.seed)  # the adapters' random init must not depend on what ran before in the process
    n_train = apply_strategy(model, strategy, rank, modules=cfg.modules, alpha=alpha)
    if strategy != "none":
        result = _fit(model, dataset, indices, replace(cfg.train, lr=cfg.lr_for(strategy)), cfg, progress)
        model = result.model
        if record is not None:
            record.update(trainer_record(result))
    return model.cpu(), n_train


def fold_indices(n: int, folds: int, seed: int) -> list[list[int]]:
    """Seeded permutation of ``range(n)`` cut into ``folds`` nearly equal test folds."""
    perm = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in chunk) for chunk in np.array_split(perm, folds)]


def cross_validate(base: nn.Module, dataset, strategy: str, rank: Optional[int], cfg: SegExperimentConfig, progress: bool = True) -> dict:
    """k-fold CV of one strategy; metrics over the pooled held-out cases."""
    from lowrank_vision.core import count_parameters

    cases, n_train, trainers = [], 0, []
    for test in fold_indices(len(dataset), cfg.folds, cfg.seed):
        train = [i for i in range(len(dataset)) if i not in test]
        trainers.append({})
        model, n_train = finetune(base, dataset, train, strategy, rank, cfg, progress=progress, record=trainers[-1])
        cases += evaluate(model.to(_eval_device(cfg.train)), dataset, cfg.net, test)
    full = count_parameters(base)[1]
    return {"strategy": strategy, "rank": rank if strategy in ADAPTER_METHODS else None, "trainable_params": n_train,
            "trainable_pct_of_full": 100.0 * n_train / full, **summarize_cases(cases), "cases": cases,
            "trainer_per_fold": trainers}


def compare(cfg: SegExperimentConfig, base_ckpt: str | os.PathLike, data_root: str | os.PathLike, out_dir: str | os.PathLike,
            progress: bool = True) -> list[dict]:
    """Run the strategy x rank grid with CV; write results.json, results.md, dice_vs_params.png into ``out_dir``."""
    from tqdm.auto import tqdm

    from lowrank_vision.core.files import write_json, write_text

    base, arch, ckpt = load_checkpoint(base_ckpt)
    if arch != cfg.net:
        raise ValueError(f"checkpoint {base_ckpt} holds {arch}, but the experiment config expects {cfg.net}")
    _, sah_root = make_synthetic_data(cfg, data_root, progress)
    sah = load_dataset(sah_root, cfg.windows, checkpoint_grid(ckpt))
    grid = [(s, r) for s in cfg.strategies for r in (cfg.ranks if s in ADAPTER_METHODS else (None,))]
    rows = [cross_validate(base, sah, s, r, cfg, progress=False) for s, r in tqdm(grid, desc="compare", disable=not progress)]
    out = Path(out_dir)
    write_json(out / "results.json", {"config": asdict(cfg), "rows": rows}, indent=1)
    write_text(out / "results.md", results_table(rows))
    plot_dice_vs_params(rows, out / "dice_vs_params.png")
    return rows
