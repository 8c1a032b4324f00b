"""What each ``lowrank-seg`` subcommand does, plus ``demo`` for ``lowrank demo``.

Every function takes a config and paths (never parsed arguments), writes its files through
:mod:`lowrank_vision.core.files` and returns a JSON-able result dict. Missing inputs raise
``FileNotFoundError`` and bad values ``ValueError``, which the app turns into one line and exit 2.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from .config import ADAPTER_METHODS, PRESETS, SegExperimentConfig

__all__ = ["pretrain", "finetune", "compare", "predict", "evaluate", "make_weights", "demo", "base_for"]


def base_for(base: Optional[Path], out: Path, weights: str = "low-res", user_input: bool = False) -> Path:
    """The pre-trained UNet to start from: ``base`` (which must exist), else ``out/tbi_unet.pt`` if present, else the
    shipped one of set ``weights`` (``auto``: the real-geometry set for ``user_input``)."""
    from .weights import shipped_weights

    if base is not None:
        if not Path(base).is_file():
            raise FileNotFoundError(f"--base: pre-trained checkpoint {base} does not exist")
        return Path(base)
    mine = Path(out) / "tbi_unet.pt"
    return mine if mine.is_file() else shipped_weights(weights, user_input)[0]


def _model_paths(base: Optional[Path], adapter: Optional[Path], no_adapter: bool, weights: str,
                 user_input: bool) -> tuple[Path, Optional[Path]]:
    """``(base, adapter)`` to load: ``--base``/``--adapter`` as given, else the shipped set ``weights`` (base and its
    CP-LoRA adapter; no adapter with ``no_adapter``)."""
    from .weights import shipped_weights

    if base is not None:
        return Path(base), (None if no_adapter or adapter is None else Path(adapter))
    shipped_base, shipped_adapter = shipped_weights(weights, user_input)
    return shipped_base, (None if no_adapter else Path(adapter) if adapter is not None else shipped_adapter)


def pretrain(cfg: SegExperimentConfig, out: Path, resume: bool = False, checkpoint_every: int = 50) -> dict:
    """Train the UNet on synthetic TBI -> ``out/tbi_unet.pt``, ``out/pretrain.json`` (checkpoints in ``out/pretrain_run``)."""
    from lowrank_vision.core.files import write_json

    from . import recipes

    out = Path(out)
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, output_dir=str(out / "pretrain_run"), resume=resume,
                                        checkpoint_every=checkpoint_every))
    m = recipes.pretrain(cfg, out / "data", out / "tbi_unet.pt")
    write_json(out / "pretrain.json", m, indent=1)
    return m


def finetune(cfg: SegExperimentConfig, out: Path, method: str = "cp_lora", rank: int = 8, base: Optional[Path] = None,
             data: Optional[Path] = None, weights: str = "auto", lr_from_card: bool = True) -> dict:
    """Adapt the pre-trained UNet to SAH on all but the first CV fold; score both on that fold -> ``out/finetune.json``.

    From the shipped real-geometry base with ``lr_from_card``, the adapter of the card's method trains at the rate the
    GPU run chose for that base on tuning cases (``real/metrics.json``), not at the low-resolution preset's (measured on
    4 real-size heads, 20 steps: CP-LoRA at the preset's 0.1 fell from Dice 0.40 to 0.20, at the card's 0.03 rose to 0.43)."""
    from lowrank_vision.core import count_parameters, save
    from lowrank_vision.core.files import write_json

    from .metrics import summarize_cases
    from .model import checkpoint_grid, load_checkpoint, save_checkpoint
    from .recipes import evaluate, finetune as finetune_copy, fold_indices, load_dataset, make_synthetic_data

    out = Path(out)
    base_path = base_for(base, out, weights, user_input=data is not None)
    net, arch, ckpt = load_checkpoint(base_path)
    grid = checkpoint_grid(ckpt)
    cfg = replace(cfg, net=arch, windows=tuple(ckpt["windows"]))
    lr_source = "config"
    from .weights import REAL_BASE, REAL_DIR, real_card_lr

    card = real_card_lr(method) if lr_from_card and base_path.resolve() == REAL_BASE.resolve() else None
    if card is not None:
        cfg = replace(cfg, adapter_lr_by_method=((method, card[0]),))
        lr_source = f"{REAL_DIR / 'metrics.json'} ({card[1]})"
    sah = load_dataset(Path(data) if data is not None else make_synthetic_data(cfg, out / "data")[1], cfg.windows, grid)
    test = fold_indices(len(sah), cfg.folds, cfg.seed)[0]
    trainer = {}
    model, n_train = finetune_copy(net, sah, [i for i in range(len(sah)) if i not in test], method, rank, cfg, record=trainer)
    if method in ADAPTER_METHODS:
        saved = save(model, out / f"sah_{method}_r{rank}")
    else:
        saved = save_checkpoint(model, arch, out / f"sah_{method}.pt", cfg.windows, grid=grid)
    before = summarize_cases(evaluate(net, sah, arch, test))
    after = summarize_cases(evaluate(model, sah, arch, test))
    m = {"base": str(base_path), "method": method, "rank": rank if method in ADAPTER_METHODS else None, "saved": str(saved),
         "lr": cfg.lr_for(method), "lr_source": lr_source,
         "trainable_params": n_train, "total_params_base": count_parameters(net)[1], "heldout_cases": len(test),
         "dice_before": before["dice_mean"], "dice_after": after["dice_mean"], "heldout": after, "trainer": trainer}
    write_json(out / "finetune.json", m, indent=1)
    return m


def compare(cfg: SegExperimentConfig, out: Path, base: Optional[Path] = None) -> dict:
    """Strategy x rank grid with k-fold CV -> ``out/compare/results.{json,md}``, ``dice_vs_params.png``.

    Without ``base``, ``out/tbi_unet.pt`` is used, pre-trained first if missing; a ``base`` that does not exist is an error.
    """
    from . import recipes

    out = Path(out)
    if base is not None:
        base_path = base_for(base, out)
    else:
        base_path = out / "tbi_unet.pt"
        if not base_path.is_file():
            pretrain(cfg, out, checkpoint_every=0)
    rows = recipes.compare(cfg, base_path, out / "data", out / "compare")
    return {"base": str(base_path), "rows": [{k: v for k, v in r.items() if k != "cases"} for r in rows],
            "table": str(out / "compare" / "results.md")}


def predict(out: Path, input: Optional[Path] = None, output: Optional[Path] = None, base: Optional[Path] = None,
            adapter: Optional[Path] = None, no_adapter: bool = False, device: str = "cpu", weights: str = "auto") -> dict:
    """Segment one CT volume, NIfTI or DICOM series folder (default: a synthetic SAH example written to ``out``), on the
    model's canonical grid; the mask comes back on the input's exact grid and affine, and ``warnings`` says when the
    input does not look like a head CT or the blood volume is implausible."""
    from .recipes import segment_file
    from .weights import load_model

    out = Path(out)
    result = {}
    paths = _model_paths(base, adapter, no_adapter, weights, user_input=input is not None)
    if input is None:  # embedded default: one synthetic SAH volume
        from lowrank_vision.datasets.ct.readers import save_nifti
        from lowrank_vision.datasets.ct.synthetic import synthesize_case

        data = PRESETS["cpu"].data
        image, mask, info = synthesize_case("sah", 1000, 0, data)
        input = save_nifti(image, data.affine, out / "example_sah.nii.gz")
        result = {"truth": str(save_nifti(mask, data.affine, out / "example_sah_truth.nii.gz")), "true_blood_ml": info["blood_ml"]}
    model, arch, windows, grid = load_model(*paths)
    m = segment_file(input, output or out / "example_sah_mask.nii.gz", model.to(device), arch, windows, grid)
    return {**m, **result}


def evaluate(out: Path, data: Optional[Path] = None, base: Optional[Path] = None, adapter: Optional[Path] = None,
             no_adapter: bool = False, device: str = "cpu", weights: str = "auto") -> dict:
    """Dice / volume metrics on a folder of image/mask pairs (default: the 12 held-out synthetic SAH cases of the
    shipped weights' card) -> ``out/eval.json``."""
    from lowrank_vision.core.files import write_json
    from lowrank_vision.datasets.ct.synthetic import write_synthetic_dataset

    from .metrics import summarize_cases
    from .recipes import evaluate as evaluate_cases, load_dataset
    from .weights import HELDOUT_SEED, load_model

    out = Path(out)
    base, chosen = _model_paths(base, adapter, no_adapter, weights, user_input=data is not None)
    model, arch, windows, grid = load_model(base, chosen)
    cpu = PRESETS["cpu"]
    folder = Path(data) if data is not None else write_synthetic_dataset(out / "data" / f"sah_seed{HELDOUT_SEED}", "sah", cpu.n_sah,
                                                                          HELDOUT_SEED, cpu.data, progress=False)
    cases = evaluate_cases(model.to(device), load_dataset(folder, windows, grid), arch, progress=True)
    m = {"data": str(folder), "base": str(base), "adapter": str(chosen), **summarize_cases(cases), "cases": cases}
    write_json(out / "eval.json", m, indent=1)
    return {k: v for k, v in m.items() if k != "cases"}


def make_weights(out: Path, into: Optional[Path] = None, measure_only: bool = False) -> dict:
    """Train (unless ``measure_only``) and measure the shipped weights; synthetic data under ``out``."""
    from .weights import make_weights as make

    return make(Path(out) / "data", into, measure_only)


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """``lowrank demo``: the shipped TBI UNet with and without its CP-LoRA SAH adapter on 12 held-out synthetic
    SAH volumes; Dice before/after and a figure of CT slices with true and predicted blood."""
    import numpy as np

    from lowrank_vision.core import count_parameters
    from lowrank_vision.datasets.ct.readers import load_nifti, window_hu

    from .metrics import plot_slices_before_after, summarize_cases
    from .recipes import predict_volume
    from .weights import DEFAULT_ADAPTER, HELDOUT_SEED, load_model, sah_cases

    out = Path(out_dir)
    base, arch, windows, grid = load_model()
    adapted = load_model(adapter=DEFAULT_ADAPTER, merge=False)[0]
    base, adapted = base.to(device), adapted.to(device)
    cases = sah_cases(HELDOUT_SEED, out / "data", base, adapted, arch, windows, grid)
    before, after = summarize_cases(cases["pretrained_only"]), summarize_cases(cases["cp_lora_r8"])
    # the figure shows the case with the median Dice change (a typical case, not the best one)
    order = np.argsort([a["dice"] - b["dice"] for a, b in zip(cases["cp_lora_r8"], cases["pretrained_only"])])
    k = int(order[len(order) // 2])
    name = cases["cp_lora_r8"][k]["name"]
    folder = out / "data" / f"sah_seed{HELDOUT_SEED}"
    hu, _, _ = load_nifti(folder / "imagesTr" / f"{name}.nii.gz")
    true = load_nifti(folder / "labelsTr" / f"{name}.nii.gz")[0] > 0
    x = window_hu(hu, windows)
    per_slice = true.sum(axis=(0, 1))
    slices = [int(z) for z in np.argsort(per_slice)[::-1][:4] if per_slice[z] > 0] or [true.shape[2] // 2]
    centre, step = slices[0], 2  # fewer than 3 slices with blood: show its neighbours too (context above and below)
    while len(slices) < 3 and step < true.shape[2]:
        slices += [z for z in (centre - step, centre + step) if 0 <= z < true.shape[2] and z not in slices]
        step += 2
    slices = sorted(slices[:4])
    fig_path = out / "hemorrhage_before_after.png"
    d0, d1 = cases["pretrained_only"][k]["dice"], cases["cp_lora_r8"][k]["dice"]
    plot_slices_before_after(hu, true, predict_volume(base, x, arch.divisor), predict_volume(adapted, x, arch.divisor), fig_path,
                             slices, (f"pre-trained only\n(Dice {d0:.2f})", f"+ CP-LoRA r8\n(Dice {d1:.2f})"))
    trainable, total = count_parameters(adapted)
    return {
        "data": f"synthetic SAH, seed {HELDOUT_SEED} (held out)", "sah_cases": before["n_cases"],
        "sah_dice_pretrained_only": round(before["dice_mean"], 4), "sah_dice_cp_lora_r8": round(after["dice_mean"], 4),
        "cp_lora_trainable_params": trainable, "unet_params": total - trainable,
        "figures": [{"path": str(fig_path), "caption": f"Synthetic SAH case {name} (the median Dice change of the 12): axial slices "
                     "with the true blood (green) and the prediction (red), TBI-pretrained UNet before (top) and after (bottom) "
                     "loading the CP-LoRA rank-8 adapter."}],
        "summary": (f"The shipped 3-D UNet, pre-trained on synthetic TBI CT, segments {before['n_cases']} held-out synthetic SAH "
                    f"volumes with mean Dice {before['dice_mean']:.3f}; with its CP-LoRA rank-8 adapter ({trainable:,} trainable "
                    f"parameters, {100 * trainable / (total - trainable):.1f} % of the UNet) the Dice is {after['dice_mean']:.3f}."),
    }
