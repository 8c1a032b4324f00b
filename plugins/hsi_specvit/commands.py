"""What each ``lowrank-hsi`` subcommand does, as plain functions: (configs, paths) -> result dict.

``apps/hsi.py`` only parses arguments into :mod:`.config` dataclasses and calls these; every
function writes files a person can open (metrics JSON, confusion and class-map PNGs, bundles,
GeoTIFF class maps) and returns the dict it wrote as JSON. :func:`demo` is the plugin's short
run for ``lowrank demo``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lowrank_vision.core import count_parameters
from lowrank_vision.core.files import write_json
from lowrank_vision.datasets.hsi.cube import HSICube
from lowrank_vision.datasets.hsi.synthetic import SyntheticSceneConfig, make_synthetic_scene

from . import recipes
from .config import NEURAL_METHODS, DataConfig, RecipeConfig, train_config
from .metrics import classification_metrics, save_class_map_png, save_confusion_png
from .weights import DEFAULT_WEIGHTS, load_bundle, save_bundle, write_card

__all__ = ["load_input", "train", "finetune", "evaluate", "predict", "demo", "TARGET_SCENE", "FINETUNE_RECIPES"]

TARGET_SCENE = dict(seed=1, domain_shift=1.0)
"""The default fine-tuning target: another layout of the same classes seen with shifted spectra."""

FINETUNE_RECIPES = (RecipeConfig(method="lora", train=train_config("lora", steps=200)),
                    RecipeConfig(method="full", train=train_config("full", steps=200)))
"""The default comparison of :func:`finetune`: LoRA against full fine-tuning, 200 steps each."""


def load_input(path: Optional[Path], gt: Optional[Path] = None, scene: Optional[dict] = None) -> HSICube:
    """A cube from a file (``.mat``, ENVI ``.hdr``, GeoTIFF) or, with no path, the synthetic default (``scene`` overrides)."""
    if path is None:
        return make_synthetic_scene(SyntheticSceneConfig(**(scene or {})))
    from lowrank_vision.datasets.hsi.io import read_cube

    return read_cube(path, gt=gt)


def _artifacts(out: Path, name: str, cmap: np.ndarray, data: recipes.PreparedData, record: dict) -> None:
    names = data.cube.class_names or None
    if "test" in record:
        save_confusion_png(record["test"]["confusion"], out / f"{name}_confusion.png", names,
                           title=f"{name}: test OA {record['test']['OA']:.2f}%")
    save_class_map_png(cmap, out / f"{name}_classmap.png", data.num_classes, ground_truth=data.cube.labels,
                       title=f"{name} (test OA {record['test']['OA']:.1f}%)" if "test" in record else name)


def _meta(record: dict, data: recipes.PreparedData, data_cfg: DataConfig, command: str, device: str) -> dict:
    keep = ("arch", "model_cfg", "recipe", "total_params", "trainable_params", "full_model_params", "adapter",
            "train_seconds", "selected_step")
    meta = {k: record[k] for k in keep if k in record}
    meta.update(patch=data.patch, data=dataclasses.asdict(data_cfg), class_names=data.cube.class_names,
                source=data.cube.source, command=command, split=data.split.summary(data.cube.labels),
                environment={"torch": torch.__version__, "device": device, "threads": torch.get_num_threads()},
                test={k: record["test"][k] for k in ("OA", "AA", "kappa", "n")} if "test" in record else None)
    return meta


def _bundle_data_config(meta: dict) -> DataConfig:
    return DataConfig(**{**meta["data"], "fractions": tuple(meta["data"]["fractions"])})


def train(out: Path, cube: HSICube, runs: Sequence[RecipeConfig] = (RecipeConfig(),), data_cfg: DataConfig = DataConfig(),
          weights_out: Optional[Path] = None, device: str = "cpu", command: str = "python API") -> dict:
    """Train each recipe on the same split; write metrics JSON, confusion and class-map PNGs, a bundle per network.

    ``svm`` / ``rf`` runs (:mod:`.baselines`) get metrics and PNGs but no bundle. ``weights_out``: also write
    the first network's bundle there, with its card (``<weights_out>.md``); this is how the shipped weights
    are made. ``command`` is recorded in the bundles.
    """
    from .baselines import fit_classic

    if not runs:
        raise ValueError("runs must hold at least one RecipeConfig, got none")
    data = recipes.prepare(cube, data_cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, records, shipped = [], {}, weights_out is None
    for recipe in runs:
        if recipe.method in NEURAL_METHODS:
            model, record = recipes.train(recipe, data, device=device)
            bundle = save_bundle(out / f"{recipe.method}.safetensors", model, data.pca,
                                 _meta(record, data, data_cfg, command, device))
            if not shipped:
                write_card(save_bundle(Path(weights_out), model, data.pca, _meta(record, data, data_cfg, command, device)))
                shipped = True
        else:
            model, scaler, record = fit_classic(recipe.method, data, seed=recipe.train.seed)
            bundle = "(no bundle)"
        cmap = record.pop("class_map")
        records[recipe.method] = record
        rows.append(recipes.summary_row(recipe.method, record))
        _artifacts(out, recipe.method, cmap, data, record)
        print(f"{recipe.method}: test OA {rows[-1]['OA']:.2f}  AA {rows[-1]['AA']:.2f}  kappa {rows[-1]['kappa']:.2f}  "
              f"trainable {rows[-1]['trainable_params']:,}/{rows[-1]['total_params']:,}  -> {bundle}")
    summary = {"cube": cube.source, "split": data.split.summary(data.cube.labels), "rows": rows, "runs": records}
    write_json(out / "train_metrics.json", summary)
    return summary


def finetune(out: Path, target: HSICube, source_weights: Path = DEFAULT_WEIGHTS,
             runs: Sequence[RecipeConfig] = FINETUNE_RECIPES, data_cfg: Optional[DataConfig] = None,
             refit_pca: bool = False, device: str = "cpu") -> dict:
    """Adapt a pre-trained LoLA-SpecViT bundle to another scene with each recipe (same split, same PCA).

    Also scores the source model unchanged ("no adaptation"). Every run starts from the bundle's
    architecture and weights (``RecipeConfig.model`` must name the bundle's variant). The
    pre-trained PCA is kept unless ``refit_pca`` (the adapted model then sees the target's own
    principal components).
    """
    source, pca, meta = load_bundle(Path(source_weights))
    if meta.get("arch") != "lola_specvit":
        raise ValueError(f"source_weights: fine-tuning needs a LoLA-SpecViT bundle, got arch {meta.get('arch')!r}")
    variant = meta["recipe"]["model"]
    for recipe in runs:
        if recipe.method not in ("lora", "full") or recipe.model != variant:
            raise ValueError(f"RecipeConfig.model must be the bundle's {variant!r} with method lora or full, "
                             f"got {recipe.model!r} / {recipe.method!r}")
    if not refit_pca and target.bands != pca.in_bands:
        raise ValueError(f"target: {target.bands} bands, the source model's PCA expects {pca.in_bands}; pass refit_pca")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = data_cfg or _bundle_data_config(meta)
    data = recipes.prepare(target, data_cfg, pca=None if refit_pca else pca)
    init = source.state_dict()
    rows, records = [], {}
    if source.num_classes == data.num_classes and not refit_pca:
        rec = {"test": recipes.evaluate(source, data, "test"), "total_params": count_parameters(source)[1],
               "trainable_params": 0, "train_seconds": 0.0}
        records["no_adaptation"] = rec
        rows.append(recipes.summary_row("no_adaptation", rec))
    for recipe in runs:
        model, record = recipes.train(recipe, data, init_state=init, device=device)
        cmap = record.pop("class_map")
        name = f"{recipe.method}_finetune"
        records[name] = record
        rows.append(recipes.summary_row(name, record))
        _artifacts(out, name, cmap, data, record)
        save_bundle(out / f"{name}.safetensors", model, data.pca,
                    _meta(record, data, data_cfg, f"lowrank-hsi finetune (source {source_weights})", device))
        print(f"{name}: test OA {rows[-1]['OA']:.2f}  trainable {rows[-1]['trainable_params']:,}/{rows[-1]['total_params']:,}")
    summary = {"source": str(source_weights), "target": target.source, "rows": rows, "runs": records}
    write_json(out / "finetune_metrics.json", summary)
    return summary


def evaluate(out: Path, cube: HSICube, weights: Path = DEFAULT_WEIGHTS, split: str = "test", progress: bool = True,
             device: str = "cpu") -> dict:
    """Score a bundle on a labelled cube: ``test``/``val`` = the bundle's own split of this cube, ``all`` = every labelled pixel."""
    if cube.labels is None or cube.num_classes == 0:
        raise ValueError(f"cube: {cube.source or 'input'} has no ground truth; eval needs a label map (pass --gt)")
    if split not in ("test", "val", "all"):
        raise ValueError(f"split must be 'test', 'val' or 'all', got {split!r}")
    model, pca, meta = load_bundle(Path(weights), map_location=device)
    if cube.bands != pca.in_bands:
        raise ValueError(f"cube: {cube.source or 'input'} has {cube.bands} bands, the model expects {pca.in_bands}")
    if cube.num_classes > model.num_classes:
        raise ValueError(f"cube: labels go up to class {cube.num_classes}, the model knows {model.num_classes} classes")
    data = recipes.prepare(dataclasses.replace(cube), _bundle_data_config(meta), pca=pca)
    coords = np.argwhere(data.cube.labels > 0) if split == "all" else data.split.coords[split]
    if len(coords) == 0:
        raise ValueError(f"split: {split!r} has no samples in this cube")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if split == "all":  # every labelled pixel with its whole neighbourhood, as predict sees it
        logits = recipes.predict_logits(model, data.padded, coords, data.patch, progress=progress, desc="eval all")
    else:  # the split's pixels as in training: other splits' pixels zeroed
        logits = recipes.split_logits(model, data, split, progress=progress)
    cube = data.cube
    pred = logits.argmax(1).numpy()
    m = classification_metrics(cube.labels[coords[:, 0], coords[:, 1]] - 1, pred, model.num_classes)
    cmap = np.zeros(cube.labels.shape, np.int64)
    cmap[coords[:, 0], coords[:, 1]] = pred + 1
    shown_gt = np.where(cmap > 0, cube.labels, 0)
    save_class_map_png(cmap, out / "eval_classmap.png", model.num_classes, ground_truth=shown_gt, title=f"eval {split}")
    save_confusion_png(m["confusion"], out / "eval_confusion.png", meta.get("class_names"),
                       title=f"{split}: OA {m['OA']:.2f}%")
    result = {"weights": str(weights), "cube": cube.source, "split": split, **m}
    write_json(out / "eval_metrics.json", result)
    print(f"eval ({split}): OA {m['OA']:.2f}  AA {m['AA']:.2f}  kappa {m['kappa']:.2f}  on {m['n']} pixels")
    return result


def predict(out: Path, cube: HSICube, weights: Path = DEFAULT_WEIGHTS, progress: bool = True, device: str = "cpu") -> dict:
    """Classify every pixel; write ``<out>/classmap.tif`` (GeoTIFF, the input's CRS/transform when it has them),
    ``classmap.png`` (beside the ground truth when the cube has one) and ``classmap.json``."""
    from lowrank_vision.datasets.hsi.io import write_geotiff

    model, pca, meta = load_bundle(Path(weights), map_location=device)
    cmap = recipes.predict_map(model, pca, cube, meta["patch"], progress=progress)
    out = Path(out)
    tif = write_geotiff(out / "classmap.tif", cmap.astype(np.uint8 if model.num_classes < 255 else np.uint16),
                        crs=cube.crs, transform=cube.transform, nodata=0)
    png = save_class_map_png(cmap, out / "classmap.png", model.num_classes, ground_truth=cube.labels, title="LoLA-SpecViT")
    counts = np.bincount(cmap.reshape(-1), minlength=model.num_classes + 1)[1:].tolist()
    result = {"geotiff": str(tif), "png": str(png), "georeferenced": cube.georeferenced, "crs": cube.crs,
              "transform": cube.transform, "shape": list(cmap.shape), "class_counts": counts}
    if cube.labels is not None and cube.num_classes and cube.num_classes <= model.num_classes:
        lab = cube.labels > 0
        scores = classification_metrics(cube.labels[lab] - 1, cmap[lab] - 1, model.num_classes)
        result["all_labelled"] = {k: scores[k] for k in ("OA", "AA", "kappa")}
    write_json(out / "classmap.json", result)
    return result


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """``lowrank demo``: the shipped weights scored on the test pixels of the synthetic default's split (CPU, seconds).

    Returns OA / AA / kappa, the class-map PNG (prediction beside ground truth) and the confusion PNG.
    """
    out_dir = Path(out_dir)
    cube = make_synthetic_scene()
    m = evaluate(out_dir, cube, DEFAULT_WEIGHTS, "test", progress=False, device=device)
    _, pca, meta = load_bundle(DEFAULT_WEIGHTS)
    return {
        "test_OA": m["OA"], "test_AA": m["AA"], "test_kappa": m["kappa"], "test_pixels": m["n"],
        "recorded_test_OA": meta["test"]["OA"],
        "figures": [
            {"path": str(out_dir / "eval_classmap.png"),
             "caption": "LoLA-SpecViT tiny (shipped weights): predicted classes on the test pixels of the synthetic "
                        "scene (left) beside the ground truth (right); black = unlabelled or a train/val pixel"},
            {"path": str(out_dir / "eval_confusion.png"), "caption": "Confusion matrix on the same test pixels"},
        ],
        "summary": (f"The shipped LoLA-SpecViT tiny ({cube.bands} bands -> {pca.n_components} PCA components, "
                    f"{meta['patch']}x{meta['patch']} patches) classified the {m['n']:,} test pixels of the synthetic "
                    f"default scene ({cube.source}), regions never seen in training: overall accuracy "
                    f"{m['OA']:.2f} %, mean per-class accuracy {m['AA']:.2f} %, Cohen's kappa {m['kappa']:.2f}."),
    }
