"""bench/hemorrhage_gpu.py's verdict: CP-LoRA close to full fine-tuning only counts when full fine-tuning is a
real baseline (above the pre-trained model); the real-geometry run of 2026-12-02 had full below it."""

from __future__ import annotations

import pytest

from tests.core.cases import load_bench_script


def _rows(none: float, full: float, cp: float) -> list[dict]:
    return [{"strategy": "none", "rank": None, "dice_mean": none, "trainable_params": 0},
            {"strategy": "full", "rank": None, "dice_mean": full, "trainable_params": 4_593_406},
            {"strategy": "cp_lora", "rank": 16, "dice_mean": cp, "trainable_params": 57_760}]


@pytest.mark.parametrize("none, full, cp, passes", [
    (0.439, 0.367, 0.619, False),  # the run's numbers: full below none -> no verdict for CP-LoRA vs a tuned full
    (0.439, 0.640, 0.619, True),   # full tuned above none, CP-LoRA within 0.03 of it and >= none + 0.15
    (0.439, 0.700, 0.619, False),  # CP-LoRA more than 0.03 below full
])
def test_acceptance_needs_a_full_fine_tune_above_the_pretrained_model(none, full, cp, passes):
    verdict = load_bench_script("hemorrhage_gpu.py").acceptance(_rows(none, full, cp))
    assert verdict["checked"] and verdict["pass"] is passes
    assert verdict["full_beats_none"] is (full > none)


@pytest.mark.parametrize("chosen, grids, flagged", [
    ({"full": 3e-3, "cp_lora": 3e-2}, {"full": (3e-4, 1e-3, 3e-3), "cp_lora": (1e-2, 3e-2, 1e-1)}, ["full"]),  # session 6, job 2
    ({"full": 3e-4}, {"full": (3e-4, 1e-3, 3e-3)}, ["full"]),
    ({"cp_lora": 3e-2, "dora_c": 1e-2}, {"cp_lora": (1e-2, 3e-2, 1e-1), "dora_c": ()}, []),  # middle; a sibling without a grid
])
def test_the_report_flags_rates_chosen_at_the_edge_of_their_grid(chosen, grids, flagged):
    edges = load_bench_script("hemorrhage_gpu.py").edge_choices(chosen, grids)
    assert [e.split(" ")[0] for e in edges] == flagged
