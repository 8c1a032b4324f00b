"""bench/speed_gpu.py skips a (mode, row) only when every stored variant has the rounds asked for."""

import json

import pytest

from tests.core.cases import load_bench_script


@pytest.mark.parametrize("stored, mode, expected", [
    ({}, "eager", 0),
    ({"cuda": {"cases": {"vit_b": {"rows": {"full": {"rounds_ms": [1, 2, 3]}, "peft_lora": {"rounds_ms": [1, 2]}}}}}}, "eager", 2),
    ({"cuda": {"cases": {"vit_b": {"rows": {"full": {"rounds_ms": [1, 2, 3]}}}}}}, "cuda_graph", 0),
    ({"cuda + cuda graph": {"cases": {"vit_b": {"rows": {"full": {"rounds_ms": [1, 2, 3]}}}}}}, "cuda_graph", 3),
])
def test_stored_rounds(tmp_path, stored, mode, expected):
    results = tmp_path / "bench_results.json"
    results.write_text(json.dumps(stored))
    assert load_bench_script("speed_gpu.py").stored_rounds(results, mode, "vit_b") == expected


def test_dry_run_lists_only_missing_rows(tmp_path, capsys):
    results = tmp_path / "bench_results.json"
    rows = {"full": {"rounds_ms": [1, 2, 3]}}
    results.write_text(json.dumps({"cuda": {"cases": {"resnet50": {"rows": rows}}}}))
    bench = load_bench_script("speed_gpu.py")
    assert bench.main(["--dry-run", "--rows", "resnet50,vit_b", "--modes", "eager", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "skip eager resnet50" in out and out.count("+ ") == 1 and "--models vit_b" in out


def test_rows_are_the_benchmarks_gpu_rows():
    assert sorted(load_bench_script("speed_gpu.py").ROWS) == sorted(load_bench_script("adapters.py").GPU_ROWS)


def test_a_row_whose_host_is_missing_is_skipped_before_it_starts(tmp_path, capsys, monkeypatch):
    bench = load_bench_script("speed_gpu.py")
    real = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name, *a: None if name == "monai" else real(name, *a))
    assert bench.missing_hosts("unet3d_small") == ["monai"] and bench.missing_hosts("resnet50") == []
    results = tmp_path / "bench_results.json"
    assert bench.main(["--dry-run", "--rows", "unet3d_small,resnet50", "--modes", "eager", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "skip unet3d_small: needs monai" in out and out.count("+ ") == 1 and "--models resnet50" in out
    assert set(bench.ROW_HOSTS) == set(bench.ROWS)


@pytest.mark.parametrize("floor_ms, floor_kernel, says", [
    ([29.0, 29.0, 29.1], [29.0, 29.0, 29.0], ("the 0.9 goal is below the frozen floor", "the 0.85 goal is below the frozen floor")),
    ([20.0, 20.0, 20.0], [20.0, 20.0, 20.0], ("the 0.9 goal is above the frozen floor", "the 0.85 goal is above the frozen floor")),
])
def test_goals_print_the_frozen_floor_under_graphs(floor_ms, floor_kernel, says):
    adapters = load_bench_script("adapters.py")
    full = {"rounds_ms": [32.0, 32.0, 32.0], "rounds_kernel_ms": [32.0, 32.0, 32.0]}
    rows = {"full": full, "floor": {"rounds_ms": floor_ms, "rounds_kernel_ms": floor_kernel},
            "ours:lora:auto": {"rounds_ms": [30.0] * 3, "rounds_kernel_ms": [30.0] * 3}}
    page = "\n".join(adapters.goals_section({"cuda + cuda graph": {"cases": {"unet3d_large": {"rows": rows}}}}))
    step = next(line for line in page.splitlines() if line.startswith("| (reference) frozen floor step / full FT, whole-step graphs | unet3d_large"))
    kernel = next(line for line in page.splitlines()
                  if line.startswith("| (reference) frozen floor kernel time / full FT, whole-step graphs | unet3d_large"))
    assert says[0] in step and says[1] in kernel
    assert "| graph lora / graph full FT | unet3d_large | 0.94 [0.94, 0.94] | 3 | 0.9 | no |" in page
