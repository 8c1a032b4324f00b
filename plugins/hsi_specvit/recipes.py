"""Training, fine-tuning, evaluation and prediction recipes for HSI classification.

One harness for every model: the LoLA-SpecViT trained with LoRA (``method="lora"``,
adapters inserted by ``lowrank_vision.core.apply`` in the attention and projection layers,
LoRA scale modulated by :class:`~.schedule.CyclicalLoRAScale`), the same ViT trained or
fine-tuned in full (``"full"``), and the HybridSN-like CNN (``"hybridsn"``). Data go
through :func:`prepare` (split protocol, train-only PCA, patches whose neighbours of another
split are zeroed); training through the shared trainer ``lowrank_vision.core.train.fit``.
With ``RecipeConfig.eval_every`` the val OA is measured during training and the best weights
are kept (model selection on val only; the test split is scored once, at the end). On a GPU the
trainer captures each step as one CUDA graph (``train_config`` asks for it; the patch batches have
one shape, the augmentation draws on the device, and the cyclical LoRA scale is a device tensor filled in
place between steps).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_vision.core import apply, count_parameters
from lowrank_vision.datasets.hsi.cube import HSICube
from lowrank_vision.datasets.hsi.split import (PCA, SPLITS, Split, extract_patches, fit_pca, make_split, masked_patches,
                                               pad_assignment, pad_cube)

from .config import DataConfig, RecipeConfig
from .metrics import classification_metrics
from .model import HybridSN, create_lola_specvit
from .schedule import CyclicalLoRAScale

__all__ = ["PreparedData", "prepare", "build_model", "train", "evaluate", "predict_logits", "predict_map",
           "predict_split_map", "split_logits", "split_metrics", "parameter_counts", "summary_row", "recipe_loss",
           "class_weighted_cross_entropy"]


@dataclass
class PreparedData:
    """A cube ready for training: split, PCA, padded reduced cube and padded split map."""

    cube: HSICube
    split: Split
    pca: PCA
    padded: torch.Tensor  # [k, H + 2r, W + 2r]
    padded_assignment: torch.Tensor  # [1, H + 2r, W + 2r], -1 outside the image
    patch: int
    num_classes: int

    def patches(self, name: str, coords: Optional[np.ndarray] = None) -> torch.Tensor:
        """Patches of a split's pixels (default: all its samples) with the other splits' pixels zeroed."""
        rc = self.split.coords[name] if coords is None else coords
        return masked_patches(self.padded, self.padded_assignment, rc, self.patch, SPLITS.index(name))

    def samples(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.patches(name), torch.from_numpy(self.split.labels(self.cube.labels, name))


def _read_mask(path) -> np.ndarray:
    from lowrank_vision.datasets.hsi.io import read_label_map

    return read_label_map(Path(path))


def prepare(cube: HSICube, cfg: DataConfig = DataConfig(), pca: Optional[PCA] = None) -> PreparedData:
    """Split ``cube`` with ``cfg.split`` and reduce it with PCA fitted on the training split's pixels.

    ``pca`` reuses a given projection (fine-tuning keeps the pre-trained model's input space). With
    ``split="masks"`` the cube's own ground truth is optional (the masks' labels are used).
    """
    masks = (_read_mask(cfg.train_mask), _read_mask(cfg.test_mask)) if cfg.split == "masks" else (None, None)
    labels = cube.labels
    if cfg.split == "masks" and (labels is None or cube.num_classes == 0):
        labels = np.where(masks[0] > 0, masks[0], masks[1]).astype(np.int64)
        cube = dataclasses.replace(cube, labels=labels)
    if labels is None or cube.num_classes == 0:
        raise ValueError(f"cube: {cube.source or 'the cube'} has no ground truth; training and eval need a label map")
    for name, m in zip(("train_mask", "test_mask"), masks):
        if m is not None and m.shape != labels.shape:
            raise ValueError(f"{name}: {getattr(cfg, name)!r} is {m.shape}, expected the cube's {labels.shape}")
    split = make_split(labels, cfg.split, cfg.fractions, cfg.block, cfg.split_seed, cfg.val_fraction, *masks)
    if pca is None:
        pca = fit_pca(cube.data, split.assignment == 0, min(cfg.pca_components, cube.bands), cfg.whiten, seed=cfg.split_seed,
                      noise_adjusted=cfg.reduction == "mnf")
        pca = PCA.from_state_dict(pca.state_dict())  # float32 round trip: training uses exactly what a bundle stores
    reduced = pca.transform(cube.data)
    return PreparedData(cube=cube, split=split, pca=pca, padded=pad_cube(reduced, cfg.patch),
                        padded_assignment=pad_assignment(split.assignment, cfg.patch), patch=cfg.patch,
                        num_classes=cube.num_classes)


def parameter_counts(model: nn.Module) -> dict:
    """``{"total_params", "trainable_params"}`` from :func:`lowrank_vision.core.count_parameters`."""
    trainable, total = count_parameters(model)
    return {"total_params": int(total), "trainable_params": int(trainable)}


def build_model(recipe: RecipeConfig, in_chans: int, num_classes: int, patch: int,
                init_state: Optional[dict] = None) -> tuple[nn.Module, dict]:
    """Build the recipe's model (optionally from ``init_state``: a plain state dict, e.g. a pre-trained bundle).

    When ``init_state`` has another number of classes, the head is re-initialised. Returns the model
    and a dict of parameter counts (and the adapter report for LoRA).
    """
    if recipe.method == "hybridsn":
        model = HybridSN(in_chans=in_chans, num_classes=num_classes, img_size=patch)
        meta = {"arch": "hybridsn", "model_cfg": model.config}
    else:
        model = create_lola_specvit(recipe.model, in_chans=in_chans, num_classes=num_classes, img_size=patch)
        meta = {"arch": "lola_specvit", "model_cfg": {k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in dataclasses.asdict(model.cfg).items()}}
    if init_state is not None:
        head_keys = [k for k in init_state if k.startswith("head.")]
        same_head = all(k in model.state_dict() and model.state_dict()[k].shape == init_state[k].shape for k in head_keys)
        state = init_state if same_head else {k: v for k, v in init_state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
        if bad:
            raise ValueError(f"init_state: does not fit {recipe.model} ({len(bad)} mismatched keys, e.g. {bad[:3]})")
    info = {"full_model_params": parameter_counts(model)["total_params"]}
    if recipe.method == "lora":
        report = apply(model, "lora", rank=recipe.rank, alpha=recipe.alpha, targets=list(recipe.targets),
                       trainable=recipe.trainable)
        info["adapter"] = {"wrapped": len(report.wrapped), "adapter_params": report.adapter_params}
    info.update(parameter_counts(model))
    return model, {**meta, **info}


@functools.lru_cache(maxsize=16)
def _dihedral_orders(side: int, device=None) -> torch.Tensor:
    """``[8, side * side]``: pixel ``p`` of a ``side x side`` patch under symmetry ``t`` comes from pixel ``[t, p]``
    (row-major). Symmetry ``t`` is ``rot90`` by ``t % 4`` quarter turns, then for ``t >= 4`` a left-right flip.
    Built once per (side, device) and only read afterwards: not 16 small kernels in every training step."""
    grid = torch.arange(side * side, device=device).view(side, side)
    turns = [torch.rot90(grid, k, dims=(0, 1)) for k in range(4)]
    return torch.stack(turns + [torch.flip(t, dims=(1,)) for t in turns]).flatten(1)


def _augment(x: torch.Tensor, spectral_jitter: float = 0.0) -> torch.Tensor:
    """Each patch of ``x [B, C, P, P]`` under its own random one of the 8 square symmetries (:func:`_dihedral_orders`),
    then, with ``spectral_jitter``, a per-patch gain ``1 + N(0, s)`` on every component.

    Per-sample draws (earlier: one rotation / flip per batch), all on ``x``'s device with no value read back, so a
    captured CUDA graph replays fresh draws every step."""
    b, c, h, w = x.shape
    if h != w:
        raise ValueError(f"x: expected square patches [B, C, P, P], got {tuple(x.shape)}")
    choice = torch.randint(0, 8, (b,), device=x.device)
    order = _dihedral_orders(h, x.device)[choice]  # [B, P*P]
    x = x.flatten(2).gather(2, order[:, None, :].expand(b, c, h * w)).view(b, c, h, w)
    if spectral_jitter > 0:
        x = x * (1.0 + spectral_jitter * torch.randn(b, c, 1, 1, device=x.device, dtype=x.dtype))
    return x


def class_weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                                 label_smoothing: float = 0.0) -> torch.Tensor:
    """``F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)`` (mean, no ignored target)
    without its host sync: with a weight and label smoothing both, PyTorch normalises by the weights of the targets
    left after a ``masked_select`` (``target != ignore_index``), whose size the host must read, so capture fails."""
    logp = F.log_softmax(logits, dim=1)
    target_weight = weight[target]
    nll = -(target_weight * logp.gather(1, target[:, None])[:, 0]).sum()
    smooth = -(logp * weight).sum() / logits.shape[1]
    return ((1.0 - label_smoothing) * nll + label_smoothing * smooth) / target_weight.sum()


def recipe_loss(recipe: RecipeConfig, class_weight: Optional[torch.Tensor] = None) -> Callable:
    """``loss_fn(model, (patches, labels)) -> (loss, {"acc": 0-d tensor})`` of ``recipe`` for the shared trainer:
    optional :func:`_augment`, cross-entropy with label smoothing and ``class_weight``
    (:func:`class_weighted_cross_entropy`). Capture-safe: device ops only, nothing read back, the class weights
    copied to the batch's device once (at the first, eager, step; never inside a captured one)."""
    weight_on: dict[torch.device, torch.Tensor] = {}

    def loss_fn(m: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        xb, yb = batch
        if recipe.augment:
            xb = _augment(xb, recipe.spectral_jitter)
        logits = m(xb)
        if class_weight is None:
            loss = F.cross_entropy(logits, yb, label_smoothing=recipe.label_smoothing)
        else:
            if logits.device not in weight_on:
                weight_on[logits.device] = class_weight.to(logits.device)
            loss = class_weighted_cross_entropy(logits, yb, weight_on[logits.device], recipe.label_smoothing)
        return loss, {"acc": (logits.argmax(1) == yb).float().mean().detach()}

    return loss_fn


@torch.no_grad()
def predict_logits(model: nn.Module, padded: torch.Tensor, coords: np.ndarray, patch: int, batch_size: int = 512,
                   progress: bool = False, desc: str = "predict") -> torch.Tensor:
    """Logits ``[N, K]`` for the pixels ``coords[N, 2]`` of a padded reduced cube."""
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    out = []
    starts = range(0, len(coords), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        out.append(model(extract_patches(padded, coords[s : s + batch_size], patch).to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def split_logits(model: nn.Module, data: PreparedData, split: str, batch_size: int = 512, progress: bool = False) -> torch.Tensor:
    """Logits ``[N, K]`` of a split's samples, each patch with the other splits' pixels zeroed."""
    model.eval()
    device = next(model.parameters()).device
    coords, out = data.split.coords[split], []
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(coords), batch_size), desc=f"eval {split}", disable=not progress, leave=False):
        out.append(model(data.patches(split, coords[s : s + batch_size]).to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, data.num_classes)


def evaluate(model: nn.Module, data: PreparedData, split: str = "test", progress: bool = False) -> dict:
    """OA / AA / kappa / per-class / confusion of ``model`` on one split (classes left out by the split are not scored)."""
    if len(data.split.coords[split]) == 0:
        raise ValueError(f"split: {split!r} has no samples")
    logits = split_logits(model, data, split, progress=progress)
    y = data.split.labels(data.cube.labels, split)
    return classification_metrics(y, logits.argmax(1).numpy(), data.num_classes)


def predict_split_map(model: nn.Module, data: PreparedData) -> np.ndarray:
    """Class map ``[H, W]`` of every sample of every split, each seen as in training / evaluation (0 elsewhere)."""
    out = np.zeros(data.cube.labels.shape, np.int64)
    for name in SPLITS:
        rc = data.split.coords[name]
        if len(rc):
            out[rc[:, 0], rc[:, 1]] = split_logits(model, data, name).argmax(1).numpy() + 1
    return out


def predict_map(model: nn.Module, pca: PCA, cube: HSICube, patch: int, progress: bool = True,
                mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Class map ``[H, W]`` (1..K; 0 where ``mask`` is false) of a whole cube."""
    in_chans = getattr(model, "in_chans", pca.n_components)
    if cube.bands != pca.in_bands:
        raise ValueError(f"cube: {cube.source or 'input'} has {cube.bands} bands, the model expects {pca.in_bands} "
                         f"(its PCA was fitted on {pca.in_bands}-band data)")
    if pca.n_components != in_chans:
        raise ValueError(f"pca: {pca.n_components} components but the model takes in_chans={in_chans}")
    h, w = cube.data.shape[:2]
    padded = pad_cube(pca.transform(cube.data), patch)
    keep = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    coords = np.argwhere(keep)
    logits = predict_logits(model, padded, coords, patch, progress=progress, desc="class map")
    out = np.zeros((h, w), np.int64)
    out[coords[:, 0], coords[:, 1]] = logits.argmax(1).numpy() + 1
    return out


def train(recipe: RecipeConfig, data: PreparedData, init_state: Optional[dict] = None,
          output_dir: Optional[Path] = None, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Train one model on ``data``; returns the trained model (adapters still attached) and a record.

    The record holds parameter counts, train time, loss history, val/test OA/AA/kappa, and ``cuda_graph``: the
    trainer's whole-step CUDA graph record (``TrainResult.cuda_graph``).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from lowrank_vision.core.train import fit

    torch.manual_seed(recipe.train.seed)
    x, y = data.samples("train")
    if len(y) < recipe.batch_size:
        raise ValueError(f"RecipeConfig.batch_size must be <= the {len(y)} training samples, got {recipe.batch_size}")
    model, info = build_model(recipe, x.shape[1], data.num_classes, data.patch, init_state)
    loader = DataLoader(TensorDataset(x, y), batch_size=recipe.batch_size, shuffle=True, drop_last=True)
    weight = None
    if recipe.class_weighting == "sqrt_inverse":
        counts = torch.bincount(y, minlength=data.num_classes).float()
        weight = torch.where(counts > 0, counts.clamp(min=1).rsqrt(), torch.zeros(()))
        weight = weight / weight[counts > 0].mean()

    callbacks, schedule = [], None
    if recipe.method == "lora" and recipe.cyclical:
        schedule = CyclicalLoRAScale(recipe.cycle_steps, recipe.cycle_mult, recipe.f_min, recipe.train.max_steps)
        callbacks.append(schedule.attach(model))
    best = {"OA": -1.0, "step": 0, "state": None, "curve": []}
    eval_fn = None
    if recipe.eval_every and len(data.split.coords["val"]):
        def eval_fn(m: nn.Module) -> dict:  # val OA at the scale used at inference (the nominal LoRA scale)
            factor = schedule.factors[-1] if schedule is not None else None
            if schedule is not None:
                schedule.set_factor(m, 1.0)
            oa = evaluate(m, data, "val")["OA"]
            if schedule is not None:
                schedule.set_factor(m, factor)
            return {"val_OA": oa}

        def keep_best(step: int, m: nn.Module, metrics: dict) -> None:
            if "eval_val_OA" in metrics:
                best["curve"].append([step, round(metrics["eval_val_OA"], 2)])
                if metrics["eval_val_OA"] > best["OA"]:
                    best.update(OA=metrics["eval_val_OA"], step=step,
                                state={k: v.detach().clone() for k, v in m.state_dict().items()})

        callbacks.append(keep_best)
    config = dataclasses.replace(recipe.train, cpu=device == "cpu", eval_every=recipe.eval_every if eval_fn else 0,
                                 output_dir=recipe.train.output_dir if output_dir is None else str(output_dir))
    t0 = time.time()
    result = fit(model, loader, recipe_loss(recipe, weight), config, callbacks=callbacks, eval_fn=eval_fn)
    model = result.model
    if schedule is not None:
        schedule.finish(model)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    train_seconds = round(time.time() - t0, 1)
    record = {
        "recipe": dataclasses.asdict(recipe),
        **info,
        "train_seconds": train_seconds,
        "selected_step": best["step"] if best["state"] is not None else result.steps,
        "val_curve": best["curve"],
        "final_loss": result.final_loss,
        "history": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history],
        "samples": {k: int(len(v)) for k, v in data.split.coords.items()},
        "split": data.split.summary(data.cube.labels),
        "cuda_graph": result.cuda_graph,
    }
    record.update(split_metrics(predict_split_map(model, data), data))
    return model, record


def split_metrics(class_map: np.ndarray, data: PreparedData) -> dict:
    """``{"val": metrics, "test": metrics}`` of a :func:`predict_split_map` map (splits without samples left out);
    ``"class_map"`` keeps the map itself (an array: callers drop it before writing JSON)."""
    out = {"class_map": class_map}
    for split in ("val", "test"):
        rc = data.split.coords[split]
        if len(rc):
            out[split] = classification_metrics(data.split.labels(data.cube.labels, split),
                                                class_map[rc[:, 0], rc[:, 1]] - 1, data.num_classes)
    return out


def summary_row(name: str, record: dict) -> dict:
    """A compact row for tables: OA/AA/kappa on test and parameter counts."""
    t = record.get("test", {})
    return {"run": name, "OA": round(float(t.get("OA", "nan")), 2), "AA": round(float(t.get("AA", "nan")), 2),
            "kappa": round(float(t.get("kappa", "nan")), 2), "trainable_params": record["trainable_params"],
            "total_params": record["total_params"], "train_seconds": record["train_seconds"]}
