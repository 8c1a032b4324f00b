"""bench/nerf_pvd_gpu.py: the learning-rate choice goes past a grid edge that wins on val (session 10 chose x2, the top
of x0.5 / x1 / x2, for both PVD pairs); the extras that get time are the first ones; the committed page is its JSON."""

from pathlib import Path

import pytest

from tests.core.cases import load_bench_script

REPO = Path(__file__).resolve().parents[3]


def _trials(scores: dict) -> list[dict]:
    return [{"lr_factor": f, "val_psnr": v} for f, v in scores.items()]


@pytest.mark.parametrize("scores, expected", [
    ({0.5: 24.0, 1.0: 24.5, 2.0: 24.9}, 4.0),                  # the top wins: try twice it
    ({0.5: 24.0, 1.0: 24.5, 2.0: 24.9, 4.0: 25.1}, 8.0),
    ({0.5: 24.0, 1.0: 24.5, 2.0: 24.9, 4.0: 25.1, 8.0: 25.2}, None),  # at the limit
    ({0.5: 24.0, 1.0: 24.5, 2.0: 24.9, 4.0: 24.7}, None),      # x2 now inside
    ({0.5: 24.0, 1.0: 24.5, 2.0: 24.9, 4.0: None}, None),      # x4 diverged: x2 is inside what was tried
    ({0.5: 25.0, 1.0: 24.5, 2.0: 24.1}, 0.25),                 # the bottom wins: try half
    ({0.5: 24.6, 1.0: 24.9, 2.0: 24.1}, None),
    ({0.5: None, 1.0: None, 2.0: None}, None),                 # nothing trained
])
def test_edge_extension(scores, expected):
    assert load_bench_script("nerf_pvd_gpu.py").edge_extension(_trials(scores)) == expected


@pytest.mark.parametrize("left, seconds, overhead, n_extras, expected", [
    (37.0, 3.1, 8.0, 11, 7),   # the 2026-12-03 run: 37 s for 11 extras -> the first 7 get their share
    (2.0, 3.1, 8.0, 11, 1),    # never 0: the first extra is still tried
    (500.0, 3.1, 8.0, 11, 11),  # time for all
    (10.0, 3.1, 0.0, 3, 3),
])
def test_extras_that_fit_keeps_the_first_ones(left, seconds, overhead, n_extras, expected):
    assert load_bench_script("nerf_pvd_gpu.py").extras_that_fit(left, seconds, overhead, n_extras) == expected


def test_committed_page_is_its_results_json_rendered(tmp_path):
    """The committed page is what --report-only writes from the committed results.json (no number typed by hand)."""
    import shutil

    bench = load_bench_script("nerf_pvd_gpu.py")
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs" / "results" / "nerf_pvd", docs / "nerf_pvd")
    for earlier in (REPO / "docs" / "results").glob("nerf_pvd_run*.md"):
        shutil.copy(earlier, docs / earlier.name)
    bench.main(["--device", "cpu", "--out", str(tmp_path / "run"), "--docs", str(docs), "--report-only"])
    assert (docs / "nerf_pvd.md").read_text() == (REPO / "docs" / "results" / "nerf_pvd.md").read_text()
