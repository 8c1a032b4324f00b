"""Classic per-pixel baselines on the same split: an RBF-kernel SVM and a random forest on spectra (scikit-learn).

What a user would otherwise pick, so every report shows them next to the networks. Choices (ours):

* Input: the raw spectrum of each labelled pixel (all bands, no PCA, no spatial context), standardised
  with the mean / std of the *training* pixels only.
* Hyperparameters by val OA over a small grid (settings fitted in parallel processes, one per core), the model refitted on the training pixels with the
  best setting (val is never trained on; test is scored once): SVM ``C`` in {1, 10, 100, 1000} x
  ``gamma`` in {0.3, 1, 3} / (bands x var) (``"scale"`` times a factor); random forest 200 trees,
  ``max_features`` in {sqrt, 0.1} x ``min_samples_leaf`` in {1, 3}. Grids with one entry skip the
  search (when a split has no val pixel, the first setting is used).
* "Trainable parameters" of these models: SVM = support vectors x bands + dual coefficients +
  intercepts; random forest = tree nodes (each a threshold or a leaf value); reported for scale,
  not comparable one to one with network weights.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Standardizer", "SVM_GRID", "RF_GRID", "fit_classic", "predict_classic", "pixel_features"]

SVM_GRID = {"C": (1.0, 10.0, 100.0, 1000.0), "gamma_factor": (0.3, 1.0, 3.0)}
RF_GRID = {"max_features": ("sqrt", 0.1), "min_samples_leaf": (1, 3)}


@dataclass
class Standardizer:
    """``(x - mean) / std`` with mean and std of the training pixels."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        return cls(mean=x.mean(0), std=np.maximum(x.std(0), 1e-8))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def pixel_features(data, split: str, reduced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Spectra ``[N, B]`` (``reduced``: the networks' PCA / MNF components ``[N, k]``) and zero-based labels of a
    split's samples of a :class:`.recipes.PreparedData`."""
    rc = data.split.coords[split]
    x = data.cube.data[rc[:, 0], rc[:, 1]].astype(np.float64)
    return (data.pca.transform(x).astype(np.float64) if reduced else x), data.split.labels(data.cube.labels, split)


def _make(method: str, params: dict, bands: int, seed: int):
    if method == "svm":
        from sklearn.svm import SVC

        return SVC(C=params["C"], gamma=params["gamma_factor"] / bands, kernel="rbf", decision_function_shape="ovr")
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, max_features=params["max_features"],
                                  min_samples_leaf=params["min_samples_leaf"], random_state=seed, n_jobs=os.cpu_count())


def _size(method: str, model) -> int:
    if method == "svm":
        sv = model.support_vectors_
        return int(sv.size + model.dual_coef_.size + model.intercept_.size)
    return int(sum(t.tree_.node_count for t in model.estimators_))


def fit_classic(method: str, data, seed: int = 0, grid: dict | None = None, reduced: bool = False) -> tuple[object, Standardizer, dict]:
    """Fit ``svm`` or ``rf`` on the training pixels of ``data`` with hyperparameters chosen on val (``reduced``: on the
    networks' reduced input instead of the spectra, a diagnostic of what the reduction alone gives).

    Returns ``(model, standardizer, record)``; the record has the chosen setting, the val OA of every
    setting, parameter counts, time, val / test metrics and the class map (same layout as :func:`.recipes.train`'s).
    """
    if method not in ("svm", "rf"):
        raise ValueError(f"method must be 'svm' or 'rf', got {method!r}")
    grid = grid or (SVM_GRID if method == "svm" else RF_GRID)
    x_tr, y_tr = pixel_features(data, "train", reduced)
    scaler = Standardizer.fit(x_tr)
    x_tr = scaler(x_tr)
    x_va, y_va = pixel_features(data, "val", reduced)
    x_va = scaler(x_va)
    settings = [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
    t0 = time.time()
    search = []
    if len(settings) > 1 and len(y_va):
        from joblib import Parallel, delayed

        def val_oa(params: dict) -> dict:
            model = _make(method, params, x_tr.shape[1], seed).fit(x_tr, y_tr)
            return {**params, "val_OA": round(float((model.predict(x_va) == y_va).mean() * 100), 2)}

        search = Parallel(n_jobs=min(len(settings), os.cpu_count() or 1))(delayed(val_oa)(p) for p in settings)
        best = settings[int(np.argmax([s["val_OA"] for s in search]))]  # first of the ties
    else:
        best = settings[0]
    model = _make(method, best, x_tr.shape[1], seed).fit(x_tr, y_tr)
    size = _size(method, model)
    record = {"arch": method, "features": "reduced" if reduced else "spectra", "recipe": {"method": method, "grid": {k: list(v) for k, v in grid.items()}},
              "selected": best, "search": search, "total_params": size, "trainable_params": size,
              "train_seconds": round(time.time() - t0, 1),
              "samples": {k: int(len(v)) for k, v in data.split.coords.items()},
              "split": data.split.summary(data.cube.labels)}
    from .recipes import split_metrics

    record.update(split_metrics(predict_classic(model, scaler, data, reduced), data))
    return model, scaler, record


def predict_classic(model, scaler: Standardizer, data, reduced: bool = False) -> np.ndarray:
    """Class map ``[H, W]`` (1..K) of every sample of every split (0 elsewhere), like :func:`.recipes.predict_split_map`."""
    out = np.zeros(data.cube.labels.shape, np.int64)
    for split, rc in data.split.coords.items():
        if len(rc):
            x = data.cube.data[rc[:, 0], rc[:, 1]].astype(np.float64)
            out[rc[:, 0], rc[:, 1]] = model.predict(scaler(data.pca.transform(x) if reduced else x)) + 1
    return out
