"""bench/nerf_pvd_gpu.py's learning-rate choice goes past a grid edge that wins on val (session 10 chose x2, the top
of x0.5 / x1 / x2, for both PVD pairs)."""

import pytest

from tests.core.cases import load_bench_script


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
