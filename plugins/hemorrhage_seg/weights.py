"""Shipped weights of the hemorrhage plugin: loading them, the command that makes them, and their card.

``weights/tbi_unet.pt`` is a 3-D UNet pre-trained on synthetic TBI (preset ``cpu``, seed 0);
``weights/sah_cp_lora_r8/`` is a CP-LoRA rank-8 adapter fine-tuned on all 12 synthetic SAH cases of
seed 0; ``bundle/models/model.pt`` is base + adapter (unmerged) for the MONAI bundle.

:func:`make_weights` (``lowrank-seg make-weights``) trains them and then measures them on data named by
its role, and writes every number itself into ``weights/metrics.json``, the card ``weights/README.md``
and ``eval_metrics`` of ``bundle/configs/metadata.json``:

* *selection* data, SAH seeds 1 and 2: the CP adapters' learning rate (1e-1) was chosen on them, so
  scores there are optimistic;
* *held-out* data, SAH seed 3: used for nothing else; the bundle's ``mean_dice`` is this score.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

from torch import nn

from .config import PRESETS, UNetConfig

__all__ = ["WEIGHTS_DIR", "DEFAULT_BASE", "DEFAULT_ADAPTER", "REAL_DIR", "REAL_BASE", "WEIGHT_SETS", "WEIGHTS_HELP", "real_adapter", "real_card_lr",
           "shipped_weights", "BUNDLE_DIR", "SELECTION_SEEDS", "HELDOUT_SEED",
           "load_model", "write_bundle_model", "measure", "make_weights"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_BASE = WEIGHTS_DIR / "tbi_unet.pt"
DEFAULT_ADAPTER = WEIGHTS_DIR / "sah_cp_lora_r8"
BUNDLE_DIR = Path(__file__).parent / "bundle"
REAL_DIR = WEIGHTS_DIR / "real"
"""Real-geometry weights (canonical grid 1 x 1 x 2.5 mm, realistic synthetic heads), made on a GPU by
``bench/hemorrhage_gpu.py`` (its card ``real/README.md`` and ``real/metrics.json`` are written by that command); the
models ``predict``, ``eval`` and ``finetune`` use for a user's own scans."""
REAL_BASE = REAL_DIR / "tbi_unet.pt"
TRAIN_SEED = 0
"""SAH/TBI data seed the shipped weights are trained on (preset ``cpu``)."""
SELECTION_SEEDS = (1, 2)
"""SAH data seeds on which the CP learning rate of preset ``cpu`` was chosen."""
HELDOUT_SEED = 3
"""SAH data seed used only to report the shipped weights (and by ``lowrank demo``)."""
RANK = 8


def real_adapter() -> Path:
    """The CP-LoRA SAH adapter folder of the real-geometry weights (its rank is the one the GPU run chose)."""
    found = sorted(REAL_DIR.glob("sah_cp_lora_r*"))
    if not found:
        raise FileNotFoundError(f"no real-geometry adapter under {REAL_DIR}")
    return found[0]


WEIGHT_SETS = ("auto", "real", "low-res")
"""``--weights``: ``real`` (canonical grid 1 x 1 x 2.5 mm, for scans at real resolution), ``low-res`` (the CPU-made
demo weights of the embedded low-resolution examples), ``auto`` = ``real`` for a user's input, ``low-res`` for the
embedded examples."""


WEIGHTS_HELP = ("shipped weights without --base: real (1 x 1 x 2.5 mm grid, for real-resolution scans), low-res (the embedded "
                "examples' demo weights); auto = real for your own input, low-res for the embedded examples")


def shipped_weights(kind: str, user_input: bool) -> tuple[Path, Path]:
    """``(base checkpoint, adapter folder)`` of the shipped set ``kind`` (see :data:`WEIGHT_SETS`)."""
    if kind not in WEIGHT_SETS:
        raise ValueError(f"--weights must be one of {WEIGHT_SETS}, got {kind!r}")
    if kind == "real" or (kind == "auto" and user_input):
        return REAL_BASE, real_adapter()
    return DEFAULT_BASE, DEFAULT_ADAPTER


def real_card_lr(method: str) -> Optional[tuple[float, str]]:
    """``(lr, where it was chosen)`` the real-geometry card (``real/metrics.json``) records for an adapter of ``method``,
    or ``None`` when the card's adapter is another method."""
    card = json.loads((REAL_DIR / "metrics.json").read_text())["adapter"]
    return (float(card["lr"]), card["lr_chosen_on"]) if card["method"] == method else None


def load_model(base: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None,
               merge: bool = True) -> tuple[nn.Module, UNetConfig, tuple[str, ...], object]:
    """``(model in eval mode, arch, windows, canonical grid or None)`` from a base checkpoint (default: shipped)
    and an optional adapter folder."""
    from .model import checkpoint_grid, load_checkpoint

    net, arch, ckpt = load_checkpoint(base or DEFAULT_BASE)
    if adapter is not None:
        from lowrank_vision.core import load, merge as merge_adapters

        a = Path(adapter)
        if not (a / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {a} has no adapter_config.json")
        try:
            load(net, a)
        except Exception as exc:
            raise ValueError(f"adapter {a} does not fit the base network of {base or DEFAULT_BASE}: {exc}") from exc
        if merge:
            merge_adapters(net)
    return net.eval(), arch, tuple(ckpt.get("windows", ("brain", "subdural"))), checkpoint_grid(ckpt)


def write_bundle_model(base=DEFAULT_BASE, adapter=DEFAULT_ADAPTER, out=BUNDLE_DIR / "models" / "model.pt") -> Path:
    """State dict of base + adapter (unmerged) for the MONAI bundle."""
    from .model import save_torch

    net = load_model(base, adapter, merge=False)[0]
    return save_torch(net.state_dict(), out)


def sah_cases(seed: int, work: str | os.PathLike, base: nn.Module, adapted: nn.Module, arch: UNetConfig, windows, grid=None) -> dict:
    """Per-case results of ``base`` and ``adapted`` on the 12 synthetic SAH cases of ``seed`` (preset ``cpu``)."""
    from lowrank_vision.datasets.ct.synthetic import write_synthetic_dataset

    from .recipes import evaluate, load_dataset

    cfg = PRESETS["cpu"]
    data = load_dataset(write_synthetic_dataset(Path(work) / f"sah_seed{seed}", "sah", cfg.n_sah, seed, cfg.data, progress=False),
                        windows, grid)
    return {"pretrained_only": evaluate(base, data, arch), "cp_lora_r8": evaluate(adapted, data, arch)}


def measure(work: str | os.PathLike, base=DEFAULT_BASE, adapter=DEFAULT_ADAPTER) -> dict:
    """Dice and volume metrics of the base alone and with the adapter on the selection and held-out SAH seeds."""
    from lowrank_vision.core import count_parameters

    from .metrics import summarize_cases

    net, arch, windows, grid = load_model(base)
    adapted = load_model(base, adapter, merge=False)[0]
    out = {"cp_lora_r8_trainable_params": count_parameters(adapted)[0], "unet_params": count_parameters(net)[1]}
    for role, seeds in (("selection", SELECTION_SEEDS), ("heldout", (HELDOUT_SEED,))):
        for seed in seeds:
            cases = sah_cases(seed, work, net, adapted, arch, windows, grid)
            out[f"{role}_sah_seed{seed}"] = {k: summarize_cases(v) for k, v in cases.items()}
    return out


def make_weights(work: str | os.PathLike | None = None, into: str | os.PathLike | None = None, measure_only: bool = False) -> dict:
    """Train the shipped weights (unless ``measure_only``), measure them, write weights, card and bundle metadata.

    ``into`` writes everything under ``into/weights`` and ``into/bundle`` instead of the package (to check that
    a rerun gives the same weights); ``work`` holds the synthetic data (default: a temporary folder).
    """
    import torch

    from lowrank_vision.core import save
    from lowrank_vision.core.files import write_json, write_text

    from .model import load_checkpoint
    from .recipes import finetune, load_dataset, pretrain

    work = Path(work or tempfile.mkdtemp(prefix="hseg_weights_"))
    weights_dir, bundle_dir = (Path(into) / "weights", Path(into) / "bundle") if into else (WEIGHTS_DIR, BUNDLE_DIR)
    threads = torch.get_num_threads()
    result: dict = {"command": "lowrank-seg make-weights" + (" --measure-only" if measure_only else "") + f" --threads {threads}",
                    "torch_threads": threads}
    if measure_only:  # the shipped weights as they are; their training numbers come from the run that made them
        base_path, adapter_path = DEFAULT_BASE, DEFAULT_ADAPTER
        previous = json.loads((WEIGHTS_DIR / "metrics.json").read_text()) if (WEIGHTS_DIR / "metrics.json").is_file() else {}
        if "pretrain" in previous:
            result["pretrain"] = {**previous["pretrain"], "measured_by": previous.get("command", "an earlier run")}
    else:
        cfg = replace(PRESETS["cpu"], seed=TRAIN_SEED)
        base_path, adapter_path = weights_dir / DEFAULT_BASE.name, weights_dir / DEFAULT_ADAPTER.name
        result["pretrain"] = {**pretrain(cfg, work / "data", base_path), "checkpoint": base_path.name}
        base, _, _ = load_checkpoint(base_path)
        sah = load_dataset(work / "data" / "sah", cfg.windows, cfg.grid)
        model, _ = finetune(base, sah, range(len(sah)), "cp_lora", RANK, cfg)
        save(model, adapter_path)
        write_bundle_model(base_path, adapter_path, bundle_dir / "models" / "model.pt")
    result.update(measure(work, base_path, adapter_path))
    write_json(weights_dir / "metrics.json", result, indent=1)
    write_text(weights_dir / "README.md", weights_card(result))
    meta = json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())
    write_json(bundle_dir / "configs" / "metadata.json", bundle_metadata(meta, result), indent=4)
    return result


def _round(v, digits: int):
    return None if v is None else round(v, digits)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def bundle_metadata(meta: dict, result: dict) -> dict:
    """``meta`` with ``eval_metrics`` and ``eval_data`` from a :func:`make_weights` result (held-out seed)."""
    held = result[f"heldout_sah_seed{HELDOUT_SEED}"]
    meta = dict(meta)
    meta["eval_metrics"] = {"mean_dice": round(held["cp_lora_r8"]["dice_mean"], 4),
                            "mean_dice_pretrained_only": round(held["pretrained_only"]["dice_mean"], 4),
                            "volume_pearson_r": _round(held["cp_lora_r8"]["volume_pearson_r"], 4),
                            "volume_mae_ml": round(held["cp_lora_r8"]["volume_mae_ml"], 2)}
    meta["eval_data"] = (f"{held['cp_lora_r8']['n_cases']} synthetic SAH volumes of seed {HELDOUT_SEED} (preset cpu), held out: "
                         f"used neither for training (seed {TRAIN_SEED}) nor for choosing hyper-parameters (seeds "
                         f"{' and '.join(map(str, SELECTION_SEEDS))}); written by `{result['command']}`")
    return meta


def weights_card(result: dict) -> str:
    """``weights/README.md``: how the weights were made and what they score, from a :func:`make_weights` result."""
    def row(key: str, role: str) -> str:
        b, a = result[key]["pretrained_only"], result[key]["cp_lora_r8"]
        return (f"| {key.rsplit('seed', 1)[1]} | {role} | {a['n_cases']} | {b['dice_mean']:.3f} | {a['dice_mean']:.3f} | "
                f"{_fmt(b['volume_pearson_r'])} -> {_fmt(a['volume_pearson_r'])} | {b['volume_mae_ml']:.1f} -> {a['volume_mae_ml']:.1f} |\n")

    cfg, pre = PRESETS["cpu"], result.get("pretrain")
    trained = ("" if pre is None else
               f"Pre-training{' (numbers of ' + pre['measured_by'] + ')' if 'measured_by' in pre else ''}: {pre['steps']} steps, final "
               f"loss {pre['final_loss']:.5f}, TBI held-out Dice {pre['tbi_heldout_dice']:.3f}; SAH seed {TRAIN_SEED} (the adapter's "
               f"training data) before adaptation {pre['sah_dice_pretrained_only']:.3f}.\n\n")
    rows = "".join(row(f"selection_sah_seed{s}", "selection (CP lr chosen here)") for s in SELECTION_SEEDS)
    rows += row(f"heldout_sah_seed{HELDOUT_SEED}", "**held out**")
    return f"""# Default weights of the hemorrhage_seg plugin

Written by `{result['command']}` (this file, `metrics.json` and `eval_metrics` in
`../bundle/configs/metadata.json` are all written by that command; do not edit the numbers by hand).
Made on a CPU with preset `cpu` of `lowrank_vision.plugins.hemorrhage_seg.config.PRESETS`
(48x48x16 voxels of 3.75x3.75x10.5 mm), on synthetic data only:

1. `tbi_unet.pt`: 3-D MONAI UNet (channels 8-16-32-64, strides 2-2-2, 1 residual unit, windows brain/subdural,
   {result['unet_params']:,} parameters), {cfg.pretrain.max_steps} AdamW steps on {cfg.n_tbi} synthetic TBI cases of seed {TRAIN_SEED}
   (every 5th held out).
2. `sah_cp_lora_r8/`: CP-LoRA rank {RANK} (alpha {RANK}, lr {cfg.lr_for('cp_lora'):g}) on every (transposed) convolution,
   {cfg.train.max_steps} steps on all {cfg.n_sah} synthetic SAH cases of seed {TRAIN_SEED}
   ({result['cp_lora_r8_trainable_params']:,} trainable parameters).
3. `../bundle/models/model.pt`: base + adapter state dict (unmerged) for the MONAI bundle.

{trained}Dice on {cfg.n_sah} synthetic SAH volumes per seed, pre-trained only vs with the adapter (volume r and MAE in mL):

| SAH seed | role | cases | Dice pre-trained | Dice CP-LoRA r{RANK} | volume r | volume MAE (mL) |
|---|---|---:|---:|---:|---|---|
{rows}
The CP learning rate was chosen on the selection seeds, so only the held-out row is an unbiased estimate.
These are demonstration weights for `lowrank-seg predict`, `lowrank-seg eval`, `lowrank demo` and the MONAI
bundle; the strategy comparison lives in `docs/results/hemorrhage.md`.
"""
