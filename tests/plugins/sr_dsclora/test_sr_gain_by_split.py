"""bench/sr_gain_by_split.py: the over-/under-fitting reading and a whole run on written photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lowrank_vision.plugins.sr_dsclora.config import SPANConfig
from lowrank_vision.plugins.sr_dsclora.model import SPAN, reparameterize
from lowrank_vision.plugins.sr_dsclora.weights import save_span
from tests.core.cases import load_bench_script


@pytest.mark.parametrize("train_gain, val_gain, under", [(1.25, 0.92, True), (2.99, 2.5, True), (3.2, 2.1, False)])
def test_verdict_reads_the_gap_and_the_goal_against_the_training_photos_gain(train_gain, val_gain, under):
    bench = load_bench_script("sr_gain_by_split.py")
    words = bench.verdict({"train": {"mean_gain": train_gain}, "val": {"mean_gain": val_gain}})
    assert f"(gap {train_gain - val_gain:.2f} dB)" in words
    assert ("fits them better" in words) is under and ("what is left to close" in words) is (not under)


def _split(folder, seed, n=2, size=48):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.float64)
        Image.fromarray(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)).save(folder / f"p{i}.png")


def test_a_run_scores_every_split_and_writes_the_page_and_json(tmp_path, capsys):
    bench = load_bench_script("sr_gain_by_split.py")
    data = tmp_path / "data"
    for seed, split in enumerate(("train", "val", "eval")):
        _split(data / split, seed)
    weights = save_span(reparameterize(SPAN(SPANConfig(scale=4, channels=8)).eval()), tmp_path / "w.safetensors")
    assert bench.main(["--weights", str(weights), "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "sr_gain_by_split.json").read_text())
    assert list(report["splits"]) == ["train", "val", "eval"]
    for row in report["splits"].values():
        assert row["photos"] == 2 and row["mean_gain"] == pytest.approx(row["model_psnr"] - row["bicubic_psnr"])
        assert np.isfinite(row["bicubic_psnr"]) and 10 < row["bicubic_psnr"] < 60
    page = (tmp_path / "out" / "sr_gain_by_split.md").read_text()
    assert page.count("| 2 |") == 3 and report["verdict"] in page


def test_a_data_folder_without_its_splits_is_refused_in_one_line(tmp_path, capsys):
    bench = load_bench_script("sr_gain_by_split.py")
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "--data: expected a make-data folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
