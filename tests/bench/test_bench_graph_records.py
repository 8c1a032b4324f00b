"""The HSI, diffusion and tracks4d GPU benches train with whole-step CUDA graphs when the recipe's config asks for them
(``--eager`` turns them off) and keep each trainer run's ``cuda_graph`` record in their JSON and one line of their report.

On a CPU the graph is off and the record says why: the HSI bench's smoke rehearsal runs for real (a few seconds); the
diffusion and tracks4d benches are checked on one real trainer run and on reports written from stage JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.core.cases import load_bench_script

CPU = {"requested": True, "captured": False, "graph_steps": 0, "eager_steps": 3, "fallback_reason": "device is cpu: CUDA graphs need a CUDA device"}
ON_GPU = {"requested": True, "captured": True, "graph_steps": 997, "eager_steps": 3, "fallback_reason": None, "fused_builds": []}
CPU_LINE = 'fallback "device is cpu: CUDA graphs need a CUDA device"'


def _hsi_smoke(tmp_path, *extra):
    bench = load_bench_script("hsi_gpu.py")
    out = tmp_path / "hsi"
    bench.main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(out), "--candidates", "--only", "search", "report", *extra])
    return json.loads((out / "search.json").read_text()), (out / "docs" / "hsi.md").read_text()


def test_hsi_smoke_keeps_each_search_runs_record_and_says_it_in_the_report(tmp_path):
    search, page = _hsi_smoke(tmp_path)
    assert set(search["runs"]) == {"pca15", "pca30", "mnf15"}
    for run in search["runs"].values():
        assert run["cuda_graph"] == {**CPU, "eager_steps": 3}  # the recipe asked for the graph; the CPU trainer ran eager
    assert f"**Whole-step CUDA graphs:** captured in 0 of 3 runs that asked for them (0 replayed steps, 9 eager); {CPU_LINE} in 3 runs" in page


def test_hsi_eager_flag_turns_the_graph_off(tmp_path):
    search, page = _hsi_smoke(tmp_path, "--eager")
    assert all(run["cuda_graph"] == {"requested": False} for run in search["runs"].values())
    assert "**Whole-step CUDA graphs:** off (`--eager`) in all 3 recorded runs." in page


@pytest.mark.parametrize("script", ["hsi_gpu.py", "diffusion_gpu.py", "tracks4d_gpu.py"])
def test_graph_line_counts_captured_runs_fallbacks_fused_builds_and_missing_records(script):
    line = load_bench_script(script).graph_line({
        "a": ON_GPU, "b": {**ON_GPU, "fallback_reason": "batch shapes changed after capture: x vs y", "eager_steps": 4},
        "c": {**ON_GPU, "captured": False, "graph_steps": 0, "eager_steps": 1000, "fallback_reason": "capture failed: RuntimeError: boom"},
        "d": {**ON_GPU, "fused_builds": ["conv1", "conv2"]}, "e": None})
    assert line.startswith("**Whole-step CUDA graphs:** captured in 3 of 4 runs that asked for them (2,991 replayed steps, 1,010 eager); "
                           'fallback "batch shapes changed after capture: x vs y" in 1 run (b); fallback "capture failed: RuntimeError: boom" '
                           "in 1 run (c); fused weight builds in d (2 layers); no record for 1 run (e)"), line


def test_diffusion_trainer_settings_follow_the_recipe_and_the_eager_flag():
    bench = load_bench_script("diffusion_gpu.py")
    s = bench.sizes(True)
    assert bench._graph_requested_by_recipe()
    assert bench._config("lora", 4, 1e-3, 10, s, "no").train.cuda_graph
    assert not bench._config("lora", 4, 1e-3, 10, s, "no", graph=False).train.cuda_graph


def test_diffusion_report_and_raw_json_carry_the_records(tmp_path):
    bench = load_bench_script("diffusion_gpu.py")
    s = bench.sizes(True)
    lr = {"budget_params": 1000, "ranks": {a: 4 for a in bench.ADAPTERS}, "lr_steps": 6, "chosen": {a: s["lrs"][0] for a in bench.ADAPTERS},
          "probe_cuda_graph": {a: {**CPU, "eager_steps": 10} for a in bench.ADAPTERS},
          "results": {f"{a}@{x:g}": {"adapter": a, "lr": x, "steps": 6, "cut_short": False, "concept_val_loss": 0.1, "cuda_graph": {**CPU, "eager_steps": 6}}
                      for a in bench.ADAPTERS for x in s["lrs"]}}
    (tmp_path / "lr.json").write_text(json.dumps(lr))
    docs = tmp_path / "report" / "diffusion.md"
    bench.stage_report(tmp_path, s, "cpu", docs, 60.0, smoke=True)
    page, raw = docs.read_text(), json.loads((docs.parent / "diffusion" / "raw.json").read_text())
    assert f"**Whole-step CUDA graphs:** captured in 0 of 9 runs that asked for them (0 replayed steps, 66 eager); {CPU_LINE} in 9 runs" in page
    assert raw["cuda_graph"]["probe nera"] == {**CPU, "eager_steps": 10} and len(raw["cuda_graph"]) == 9
    records = bench.graph_records({"vae_cuda_graph": CPU, "cuda_graph": None}, None, {"lora": {"cuda_graph": ON_GPU}})
    assert records == {"base VAE": CPU, "base UNet": None, "train lora": ON_GPU}  # None: the base run was cut by its deadline


def test_tracks4d_sizes_follow_the_recipe_and_the_eager_flag():
    bench = load_bench_script("tracks4d_gpu.py")
    assert bench.sizes(True, "cpu").cuda_graph and bench._run_config(bench.sizes(True, "cpu"), 1e-3, 10).train.cuda_graph
    assert not bench._run_config(bench.sizes(True, "cpu", eager=True), 1e-3, 10).train.cuda_graph


def test_tracks4d_timed_training_returns_the_trainers_record():
    """One real (CPU) training run of the bench, as the lr search and the training stage make them."""
    from lowrank_vision.datasets.tracks import make_scene
    from lowrank_vision.plugins.tracks4d.recipes import prepare

    torch.set_num_threads(1)
    bench = load_bench_script("tracks4d_gpu.py")
    s = bench.sizes(True, "cpu")
    pool = prepare([make_scene(seed, s.scene).to_trackset() for seed in range(1, s.batch + 1)])
    run = bench.timed_training(s, 1e-3, 4, hard_deadline=1e9, clock=bench.Clock(1e9), pool=pool, device="cpu")
    assert run["stop"] == "finished" and run["cuda_graph"] == {**CPU, "eager_steps": 4}


def _tracks4d_report(train_graph, search_graphs, finetune_graphs) -> dict:
    """The parts of report.json that the results page reads, around the given records."""
    val = {"depth_abs_rel": 0.3, "depth_abs_rel_median": 0.3, "reprojection_px": 2.0}
    return {"device": "cpu", "gpu_shared": False, "command": "python3 bench/tracks4d_gpu.py --smoke", "budget_s": 150.0, "out": "/tmp/t",
            "stages": {"train": {"seconds": 60.0, "ended_at_s": 80.0, "deadline_s": 100.0}}, "errors": {}, "scene_points": 24,
            "train": {"steps": 40, "planned_steps": 40, "stop": "finished", "seconds": 10.0, "step_time": 0.02, "samples": 320, "best_step": 20,
                      "batch": 8, "mixed_precision": "float32", "parameters": 1000, "weights_bytes": 2000, "val": val,
                      "model_config": {"width": 16, "depth": 1, "num_basis": 4}, "cuda_graph": train_graph},
            "lr_search": {"criterion": "c", "chosen_lr": 1e-3, "val_seeds": [1, 2], "calibration": {"step_time": 0.02, "cuda_graph": train_graph},
                          "candidates": [{"lr": lr, "steps": 10, "val": val, "cuda_graph": g} for lr, g in search_graphs.items()]},
            "finetune_search": {"criterion": "c", "val_seeds": list(finetune_graphs), "chosen": "lora_rigid", "chosen_without_val": False,
                                "candidates": {}, "means": {},
                                "rows": [{"variant": "lora_rigid", "seed": seed, "cuda_graph": g} for seed, g in finetune_graphs.items()]}}


def test_tracks4d_results_page_and_report_json_say_whether_steps_were_captured(tmp_path):
    bench = load_bench_script("tracks4d_gpu.py")
    report = _tracks4d_report(ON_GPU, {1e-3: ON_GPU, 3e-4: None}, {7: {**ON_GPU, "graph_steps": 197}})
    records = bench.graph_records(report)
    assert list(records) == ["calibration", "lr 0.001", "lr 0.0003", "train", "fine-tuning lora_rigid (val 7)"]
    page = bench.write_results_md({**report, "cuda_graph": records}, tmp_path / "tracks4d.md").read_text()
    assert ("**Whole-step CUDA graphs:** captured in 4 of 4 runs that asked for them (3,188 replayed steps, 12 eager); no record for 1 run "
            "(lr 0.0003), non-finite loss, or run before the bench kept it.") in page
    eager = _tracks4d_report({"requested": False}, {1e-3: {"requested": False}}, {})
    assert "**Whole-step CUDA graphs:** off (`--eager`) in all 3 recorded runs." in bench.write_results_md(eager, tmp_path / "e.md").read_text()


def test_tracks4d_finetune_search_worker_records_the_loop(tmp_path):
    """The fine-tuning variant search (a worker per variant and val scene) keeps each per-scene loop's record."""
    from lowrank_vision.plugins.tracks4d.config import FinetuneConfig
    from lowrank_vision.plugins.tracks4d.model import TracksTo4DNet
    from lowrank_vision.plugins.tracks4d.weights import save_weights

    torch.set_num_threads(1)
    bench = load_bench_script("tracks4d_gpu.py")
    s = bench.sizes(True, "cpu")
    torch.manual_seed(0)
    save_weights(tmp_path / "encoder_fp16.safetensors", TracksTo4DNet(s.model), {"command": "test"}, dtype=torch.float16)
    row = bench._finetune_val((tmp_path, 200000, s.scene, "full", FinetuneConfig(steps=3, lr=1e-4), "cpu", s.cuda_graph))
    # the per-scene loop asks for its graph (recipes.SCENE_LOOP_CUDA_GRAPH) and records the CPU's fallback
    assert row["cuda_graph"] == {"requested": True, "captured": False, "graph_steps": 0, "eager_steps": 3,
                                 "fallback_reason": "device is cpu: CUDA graphs need a CUDA device"}
    assert np.isfinite(row["depth_abs_rel"])
