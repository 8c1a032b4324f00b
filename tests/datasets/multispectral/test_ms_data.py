"""Synthetic RGB+thermal generator, paired RGB/IR readers (LLVIP, DroneVehicle, VEDAI layouts), label checks."""

import numpy as np
import pytest
from PIL import Image

from lowrank_vision.datasets.multispectral import LabelError, SyntheticConfig, read_yolo_labels, render_scene, validate_dataset, write_dataset
from lowrank_vision.datasets.multispectral.readers import read_multichannel, read_pairs, stack_pairs

TINY = SyntheticConfig(n_train=4, n_val=2, n_test=2, size=64)


def test_render_is_deterministic_and_thermal_marks_objects():
    a, la, ca = render_scene(SyntheticConfig(), "train", 3)
    b, lb, cb = render_scene(SyntheticConfig(), "train", 3)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and ca == cb
    assert a.shape == (256, 256, 4) and a.dtype == np.uint8
    assert not np.array_equal(a, render_scene(SyntheticConfig(), "val", 3)[0])
    gaps = []
    for i in range(12):
        img, labels, _ = render_scene(SyntheticConfig(), "train", i)
        inside = np.zeros((256, 256), bool)
        for _, x, y, w, h in labels:
            inside[int((y - h / 2) * 256):int((y + h / 2) * 256), int((x - w / 2) * 256):int((x + w / 2) * 256)] = True
        gaps.append(img[..., 3][inside].mean() - img[..., 3][~inside].mean())
    assert np.median(gaps) > 40 and min(gaps) < 40  # targets are hot in thermal, but not always by much


def test_hard_cases_occur_small_objects_cold_targets_hot_distractors():
    widths, cold, crossover = [], 0, 0
    for i in range(40):
        _, labels, cond = render_scene(SyntheticConfig(), "train", i)
        widths += (np.minimum(labels[:, 3], labels[:, 4]) * 256).tolist()
        cold += cond["cold_objects"]
        crossover += cond["crossover"]
    assert np.percentile(widths, 10) < 8 and max(widths) > 25  # small objects and scale variation
    assert cold > 10 and 2 < crossover < 18
    quiet = SyntheticConfig(hot_distractors=0, clutter=0, objects=(1, 1), p_cold_target=0.0)
    loud = SyntheticConfig(hot_distractors=3, clutter=0, objects=(1, 1), p_cold_target=0.0)
    hot = [(render_scene(c, "train", i)[0][..., 3] > 200).sum() for c in (quiet, loud) for i in range(20)]
    assert sum(hot[20:]) > 1.2 * sum(hot[:20])  # unlabelled hot things


def test_class_counts_are_long_tailed_and_conditions_occur():
    counts, night, fog = np.zeros(3), 0, 0
    for i in range(80):
        _, labels, cond = render_scene(SyntheticConfig(size=64), "train", i)
        counts += np.bincount(labels[:, 0].astype(int), minlength=3)
        night += cond["night"]
        fog += cond["fog"]
    assert counts[0] > counts[1] > counts[2] > 0
    assert 10 < night < 45 and 5 < fog < 35


def test_write_dataset_layout_reads_back(tmp_path):
    summary = write_dataset(tmp_path / "ds", TINY)
    report = validate_dataset(summary["data_yaml"], splits=("train", "val", "test"))
    assert report["channels"] == 4 and report["nc"] == 3
    assert report["splits"]["train"]["images"] == 4 and report["splits"]["test"]["images"] == 2
    img = read_multichannel(tmp_path / "ds/images/train/train_00000.tif")
    assert np.array_equal(img, render_scene(TINY, "train", 0)[0])
    text = (tmp_path / "ds/data.yaml").read_text()
    assert "channels: 4" in text and f"path: {(tmp_path / 'ds').resolve()}" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left
    write_dataset(tmp_path / "ds2", TINY, workers=2)  # processes give the same files
    for f in sorted((tmp_path / "ds/images").rglob("*.tif")):
        assert f.read_bytes() == (tmp_path / "ds2/images" / f.relative_to(tmp_path / "ds/images")).read_bytes()
    assert (tmp_path / "ds/conditions.json").read_text().replace("ds2", "ds") == (tmp_path / "ds2/conditions.json").read_text().replace("ds2", "ds")


@pytest.mark.parametrize("line,match", [
    ("0 0.5 0.5 0.2", "expected 5 values"),
    ("car 0.5 0.5 0.2 0.2", "expected numbers"),
    ("3 0.5 0.5 0.2 0.2", r"class must be an integer in \[0, 3\)"),
    ("1.5 0.5 0.5 0.2 0.2", "class must be an integer"),
    ("0 1.5 0.5 0.2 0.2", "centre must be normalised"),
    ("0 0.5 0.5 0 0.2", "width/height must be in"),
])
def test_label_errors_name_file_and_line(tmp_path, line, match):
    p = tmp_path / "a.txt"
    p.write_text("0 0.5 0.5 0.1 0.1\n" + line + "\n")
    with pytest.raises(LabelError, match=match) as err:
        read_yolo_labels(p, nc=3)
    assert f"{p}:2" in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_yolo_labels(tmp_path / "missing.txt")


def test_wrong_channel_count_is_reported(tmp_path):
    write_dataset(tmp_path / "ds", TINY)
    y = tmp_path / "ds/data.yaml"
    y.write_text(y.read_text().replace("channels: 4", "channels: 6"))
    with pytest.raises(LabelError, match="has 4 channels, data YAML says channels: 6"):
        validate_dataset(y)


def _img(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_llvip_and_dronevehicle_and_vedai_layouts_stack_to_four_channels(tmp_path):
    rgb = np.full((40, 60, 3), 90, np.uint8)
    ir = np.full((40, 60), 200, np.uint8)
    # LLVIP
    _img(tmp_path / "llvip/visible/train/010001.jpg", rgb)
    _img(tmp_path / "llvip/infrared/train/010001.jpg", ir)
    (tmp_path / "llvip/Annotations").mkdir()
    (tmp_path / "llvip/Annotations/010001.xml").write_text(
        "<annotation><object><name>person</name><bndbox><xmin>6</xmin><ymin>4</ymin><xmax>18</xmax><ymax>36</ymax>"
        "</bndbox></object></annotation>")
    pairs = read_pairs(tmp_path / "llvip", "llvip", "train")
    assert len(pairs) == 1 and pairs[0].boxes.tolist() == [[6, 4, 18, 36]]
    # DroneVehicle: IR labels as polygons
    dv = tmp_path / "dv/train"
    _img(dv / "trainimg/00001.jpg", rgb)
    _img(dv / "trainimgr/00001.jpg", np.stack([ir] * 3, -1))
    (dv / "trainlabelr").mkdir()
    (dv / "trainlabelr/00001.xml").write_text(
        "<annotation><object><name>feright car</name><polygon><x1>10</x1><y1>5</y1><x2>30</x2><y2>8</y2>"
        "<x3>28</x3><y3>20</y3><x4>12</x4><y4>18</y4></polygon></object></annotation>")
    dpairs = read_pairs(tmp_path / "dv", "dronevehicle", "train")
    assert dpairs[0].boxes.tolist() == [[10, 5, 30, 20]] and dpairs[0].classes.tolist() == [4]
    # VEDAI (YOLO-converted labels)
    _img(tmp_path / "vedai/00000001_co.png", rgb)
    _img(tmp_path / "vedai/00000001_ir.png", ir)
    (tmp_path / "vedai/00000001.txt").write_text("5 0.5 0.5 0.2 0.5\n")
    vpairs = read_pairs(tmp_path / "vedai", "vedai")
    np.testing.assert_allclose(vpairs[0].boxes, [[24, 10, 36, 30]], atol=1e-4)
    out = stack_pairs({"train": pairs, "val": pairs}, tmp_path / "llvip_stacked")
    img = read_multichannel(tmp_path / "llvip_stacked/images/train/010001.tif")
    assert img.shape == (40, 60, 4) and abs(int(img[..., 3].mean()) - 200) <= 2 and abs(int(img[..., 0].mean()) - 90) <= 2
    lab = read_yolo_labels(tmp_path / "llvip_stacked/labels/train/010001.txt", 1)
    np.testing.assert_allclose(lab[0], [0, 12 / 60, 20 / 40, 12 / 60, 32 / 40], atol=1e-5)
    assert validate_dataset(out["data_yaml"])["channels"] == 4


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pairs(tmp_path / "nope", "llvip")
    with pytest.raises(ValueError, match="layout must be one of"):
        read_pairs(tmp_path, "kaist")
    _img(tmp_path / "v/00000001_co.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="IR partner"):
        read_pairs(tmp_path / "v", "vedai")
    with pytest.raises(ValueError, match="SyntheticConfig.size must be"):
        SyntheticConfig(size=100)
