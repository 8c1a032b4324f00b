"""What each ``lowrank-hsi`` subcommand does, as plain functions writing files a person can open.

``apps/hsi.py`` only parses arguments and calls these. Every function returns the dict it
also writes as JSON.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lowrank_vision.datasets.hsi_cube import HSICube
from lowrank_vision.datasets.hsi_synthetic import SyntheticSceneConfig, make_synthetic_scene

from .metrics import save_class_map_png, save_confusion_png
from .recipes import DataConfig, RecipeConfig, evaluate, predict_map, prepare, summary_row, train, write_json
from .weights import DEFAULT_WEIGHTS, load_bundle, save_bundle

__all__ = ["load_input", "run_train", "run_finetune", "run_eval", "run_predict", "run_demo", "TARGET_SCENE"]

TARGET_SCENE = dict(seed=1, domain_shift=1.0)
"""The default fine-tuning target: another layout of the same classes seen with shifted spectra."""


def load_input(path: Optional[str], gt: Optional[str] = None, scene: Optional[dict] = None) -> HSICube:
    """A cube from a file (``.mat``, ENVI ``.hdr``, GeoTIFF) or, with no path, the synthetic default."""
    if path is None:
        return make_synthetic_scene(SyntheticSceneConfig(**(scene or {})))
    from lowrank_vision.datasets.hsi_io import read_cube

    return read_cube(path, gt=gt)


def _artifacts(out: Path, name: str, model, data, record: dict) -> None:
    names = data.cube.class_names or None
    if "test" in record:
        save_confusion_png(record["test"]["confusion"], out / f"{name}_confusion.png", names,
                           title=f"{name}: test OA {record['test']['OA']:.2f}%")
    cmap = predict_map(model, data.pca, data.cube, data.patch, progress=False, mask=data.cube.labels > 0)
    save_class_map_png(cmap, out / f"{name}_classmap.png", data.num_classes, ground_truth=data.cube.labels, title=name)


def _meta(record: dict, data, data_cfg: DataConfig, command: str) -> dict:
    keep = ("arch", "model_cfg", "recipe", "total_params", "trainable_params", "full_model_params", "adapter")
    meta = {k: record[k] for k in keep if k in record}
    meta.update(patch=data.patch, data=dataclasses.asdict(data_cfg), class_names=data.cube.class_names,
                source=data.cube.source, command=command,
                test={k: record["test"][k] for k in ("OA", "AA", "kappa")} if "test" in record else None)
    return meta


def run_train(out: Path, cube: HSICube, methods: Sequence[str] = ("lora",), recipe: RecipeConfig = RecipeConfig(),
              data_cfg: DataConfig = DataConfig(), weights_out: Optional[Path] = None, device: str = "cpu") -> dict:
    """Train each method on the same split; write metrics JSON, confusion and class-map PNGs, a bundle per method."""
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(cube, data_cfg)
    command = " ".join(["lowrank-hsi"] + sys.argv[1:]) if sys.argv and "hsi" in Path(sys.argv[0]).name else "python API"
    rows, records = [], {}
    for method in methods:
        r = dataclasses.replace(recipe, method=method)
        model, record = train(r, data, device=device)
        records[method] = record
        rows.append(summary_row(method, record))
        _artifacts(out, method, model, data, record)
        bundle = save_bundle(out / f"{method}.safetensors", model, data.pca, _meta(record, data, data_cfg, command))
        if weights_out is not None and method == methods[0]:
            save_bundle(Path(weights_out), model, data.pca, _meta(record, data, data_cfg, command))
        print(f"{method}: test OA {rows[-1]['OA']:.2f}  AA {rows[-1]['AA']:.2f}  kappa {rows[-1]['kappa']:.2f}  "
              f"trainable {rows[-1]['trainable_params']:,}/{rows[-1]['total_params']:,}  -> {bundle}")
    summary = {"cube": cube.source, "split": data.split.summary(cube.labels), "rows": rows, "runs": records}
    write_json(out / "train_metrics.json", summary)
    return summary


def run_finetune(out: Path, target: HSICube, source_weights: Path = DEFAULT_WEIGHTS,
                 methods: Sequence[str] = ("lora", "full"), recipe: RecipeConfig = RecipeConfig(steps=200),
                 data_cfg: Optional[DataConfig] = None, refit_pca: bool = False, device: str = "cpu") -> dict:
    """Adapt a pre-trained bundle to another scene with LoRA and/or full fine-tuning (same split, same PCA).

    Also scores the source model unchanged ("no adaptation"). The pre-trained PCA is kept unless
    ``refit_pca`` (the adapted model then sees the target's own principal components).
    """
    out.mkdir(parents=True, exist_ok=True)
    source, pca, meta = load_bundle(Path(source_weights))
    if meta.get("arch") != "lola_specvit":
        raise ValueError(f"source_weights: fine-tuning needs a LoLA-SpecViT bundle, got arch {meta.get('arch')!r}")
    if not refit_pca and target.bands != pca.in_bands:
        raise ValueError(f"target: {target.bands} bands, the source model's PCA expects {pca.in_bands}; pass refit_pca")
    data_cfg = data_cfg or DataConfig(**{**meta["data"], "fractions": tuple(meta["data"]["fractions"])})
    data = prepare(target, data_cfg, pca=None if refit_pca else pca)
    init = source.state_dict()
    rows, records = [], {}
    if source.num_classes == data.num_classes and not refit_pca:
        rec = {"test": evaluate(source, data, "test"), "total_params": sum(p.numel() for p in source.parameters()),
               "trainable_params": 0, "train_seconds": 0.0}
        records["no_adaptation"] = rec
        rows.append(summary_row("no_adaptation", rec))
    for method in methods:
        r = dataclasses.replace(recipe, method=method, model=meta["recipe"]["model"])
        model, record = train(r, data, init_state=init, device=device)
        name = f"{method}_finetune"
        records[name] = record
        rows.append(summary_row(name, record))
        _artifacts(out, name, model, data, record)
        save_bundle(out / f"{name}.safetensors", model, data.pca, _meta(record, data, data_cfg, "lowrank-hsi finetune"))
        print(f"{name}: test OA {rows[-1]['OA']:.2f}  trainable {rows[-1]['trainable_params']:,}/{rows[-1]['total_params']:,}")
    summary = {"source": str(source_weights), "target": target.source, "rows": rows, "runs": records}
    write_json(out / "finetune_metrics.json", summary)
    return summary


def run_eval(out: Path, cube: HSICube, weights: Path = DEFAULT_WEIGHTS, split: str = "test") -> dict:
    """Score a bundle on a labelled cube: ``test`` = the bundle's own block split of this cube, ``all`` = every labelled pixel."""
    if cube.labels is None or cube.num_classes == 0:
        raise ValueError(f"cube: {cube.source or 'input'} has no ground truth; eval needs a label map (pass --gt)")
    if split not in ("test", "val", "all"):
        raise ValueError(f"split: expected 'test', 'val' or 'all', got {split!r}")
    model, pca, meta = load_bundle(Path(weights))
    if cube.bands != pca.in_bands:
        raise ValueError(f"cube: {cube.source or 'input'} has {cube.bands} bands, the model expects {pca.in_bands}")
    if cube.num_classes > model.num_classes:
        raise ValueError(f"cube: labels go up to class {cube.num_classes}, the model knows {model.num_classes} classes")
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = DataConfig(**{**meta["data"], "fractions": tuple(meta["data"]["fractions"])})
    data = prepare(dataclasses.replace(cube), data_cfg, pca=pca)
    data.num_classes = model.num_classes
    from .metrics import classification_metrics
    from .recipes import predict_logits

    coords = np.argwhere(cube.labels > 0) if split == "all" else data.split.coords[split]
    if len(coords) == 0:
        raise ValueError(f"split: {split!r} has no samples in this cube")
    logits = predict_logits(model, data.padded, coords, data.patch, progress=True, desc=f"eval {split}")
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


def run_predict(cube: HSICube, out: Path, weights: Path = DEFAULT_WEIGHTS, progress: bool = True) -> dict:
    """Classify every pixel; write ``<out>.tif`` (GeoTIFF, the input's CRS/transform when it has them) and ``<out>.png``."""
    from lowrank_vision.datasets.hsi_io import write_geotiff

    model, pca, meta = load_bundle(Path(weights))
    cmap = predict_map(model, pca, cube, meta["patch"], progress=progress)
    out = Path(out)
    tif = write_geotiff(out.with_suffix(".tif"), cmap.astype(np.uint8 if model.num_classes < 255 else np.uint16),
                        crs=cube.crs, transform=cube.transform, nodata=0)
    png = save_class_map_png(cmap, out.with_suffix(".png"), model.num_classes, ground_truth=cube.labels, title="LoLA-SpecViT")
    counts = np.bincount(cmap.reshape(-1), minlength=model.num_classes + 1)[1:].tolist()
    result = {"geotiff": str(tif), "png": str(png), "georeferenced": cube.georeferenced, "crs": cube.crs,
              "transform": cube.transform, "shape": list(cmap.shape), "class_counts": counts}
    if cube.labels is not None and cube.num_classes and cube.num_classes <= model.num_classes:
        from .metrics import classification_metrics

        lab = cube.labels > 0
        result["all_labelled"] = {k: v for k, v in classification_metrics(cube.labels[lab] - 1, cmap[lab] - 1,
                                                                          model.num_classes).items() if k in ("OA", "AA", "kappa")}
    write_json(out.with_suffix(".json"), result)
    return result


def run_demo(out_dir: Path, device: str = "cpu") -> dict:
    """``lowrank demo``: shipped weights scored on the test blocks of the synthetic default; confusion and map PNGs."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    out_dir.mkdir(parents=True, exist_ok=True)
    m = run_eval(out_dir, make_synthetic_scene(), DEFAULT_WEIGHTS, "test")
    return {"test_OA": m["OA"], "test_AA": m["AA"], "test_kappa": m["kappa"], "test_pixels": m["n"]}
