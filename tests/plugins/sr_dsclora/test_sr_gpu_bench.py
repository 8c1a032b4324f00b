"""bench/sr_gpu.py's training loop: a resumable run trains, keeps an EMA, and continues from its checkpoint; on CUDA
each step is one captured graph (core.train.WholeStepGraph)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lowrank_vision.plugins.sr_dsclora.config import SPANConfig
from lowrank_vision.plugins.sr_dsclora.model import SPAN
from tests.core.cases import load_bench_script


def _photos(folder, n=3, size=64):
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):  # smooth gradients plus texture: something a network can learn to upscale
        img = np.stack([(xx * (i + 1) + yy) % 256, (yy * 2 + i * 40) % 256, (xx + yy) * 2 % 256], -1).astype(np.float64)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"photo_{i}.png")
    return folder


def _run(bench, tmp_path, device, steps, cuda_graph=True):
    torch.manual_seed(0)
    train = tmp_path / "train"
    sampler = bench.PatchSampler(train if train.exists() else _photos(train), 4, device)
    model = SPAN(SPANConfig(scale=4, channels=8)).to(device)
    before = [p.detach().clone() for p in model.parameters()]
    result = bench.train_run(tmp_path / "run", model, bench._l1, sampler, lr=1e-3, batch=4, lr_patch=8, seed=0,
                             deadline=float("inf"), steps=steps, ckpt_s=1e9, cuda_graph=cuda_graph)
    return result, before


def test_train_run_trains_keeps_an_ema_and_resumes(tmp_path):
    bench = load_bench_script("sr_gpu.py")
    result, before = _run(bench, tmp_path, "cpu", steps=12)
    assert result["steps"] == 12 and not result["cut_short"] and result["cuda_graph"] == {"requested": False}
    trained = [p.detach() for p in result["model"].parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, trained))
    ema = list(result["ema"].parameters())
    # a 12-step run averages over its last ~2.4 steps (decay 1 - 1/2.4, bench.ema_decay_for): between the start and the
    # trained weights, nearer the trained ones (at SPAN's 0.999 it stayed within 5 % of the start)
    moved = sum((e - b).abs().sum() for e, b in zip(ema, before)) / sum((t - b).abs().sum() for t, b in zip(trained, before))
    assert 0.5 < float(moved) < 1.0
    assert (tmp_path / "run" / "ckpt.safetensors").is_file()
    resumed, _ = _run(bench, tmp_path, "cpu", steps=12)  # same planned steps: the checkpoint says it is done
    assert resumed["steps"] == 12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_run_captures_the_step_on_cuda(tmp_path):
    bench = load_bench_script("sr_gpu.py")
    result, before = _run(bench, tmp_path, "cuda", steps=20)
    record = result["cuda_graph"]
    assert record["captured"] and record["graph_steps"] == 20 - record["eager_steps"] and record["eager_steps"] == 3, record
    assert any(not torch.equal(a, b.to(a.device)) for a, b in zip(before, result["model"].parameters()))
    assert all(torch.isfinite(p).all() for p in result["ema"].parameters())


@pytest.mark.parametrize("val, expected", [
    ({"teacher_l1": 30.878, "teacher_l2": 30.861}, "teacher_l1"),  # the 2026-12-02 H200 run: L2 lowered val
    ({"teacher_l1": 30.80, "teacher_l2": 30.85}, "teacher_l2"),
    ({"teacher_l1": 30.80}, "teacher_l1"),  # L2 not finished
    ({}, "teacher_l1"),
])
def test_teacher_is_the_stage_better_on_val(tmp_path, val, expected):
    bench = load_bench_script("sr_gpu.py")
    for stage, psnr in val.items():
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "result.json").write_text(json.dumps({"chosen": "raw", "val_psnr_raw": psnr, "val_psnr_ema": psnr - 1}))
    assert bench.chosen_teacher_stage(tmp_path) == expected
    assert bench._teacher_path(tmp_path, 4) == tmp_path / expected / "span_x4.safetensors"


@pytest.mark.parametrize("runs_after, expected", [(0, 100.0), (1, 90.0), (5, 50.0)])
def test_finetune_deadline_keeps_what_the_later_runs_need(runs_after, expected):
    """Plan: 400 steps at 25 ms (DSCLoRA's probe) -> 10 s per later run, kept back from the stage's deadline."""
    bench = load_bench_script("sr_gpu.py")
    assert bench.finetune_deadline(100.0, runs_after, {"steps": 400, "dsclora_step_s": 0.025}) == pytest.approx(expected)


@pytest.mark.parametrize("planned, expected", [
    (0, 0.999),            # not planned yet: SPAN's decay
    (25_537, 0.999),       # session 10's L1 teacher stage: unchanged
    (5_000, 0.999),        # the longest run that keeps the cap
    (386, 1 - 1 / 77.2),   # session 10's fine-tunes: the last fifth of the run
    (3, 0.0),              # a run shorter than five steps: the EMA is the model
])
def test_ema_decay_spans_the_last_fifth_of_a_short_run(planned, expected):
    assert load_bench_script("sr_gpu.py").ema_decay_for(planned) == pytest.approx(expected)


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_an_imported_teacher_is_the_teacher_and_continued_starts_from_its_exact_training_form(tmp_path, loss):
    from lowrank_vision.datasets.images import load_eval_set
    from lowrank_vision.plugins.sr_dsclora.model import build_span, reparameterize
    from lowrank_vision.plugins.sr_dsclora.weights import save_span

    bench = load_bench_script("sr_gpu.py")
    torch.manual_seed(0)
    src = save_span(reparameterize(build_span(4, channels=8).eval()), tmp_path / "teacher_x4.safetensors", extra={"steps": 321})
    val = load_eval_set(str(_photos(tmp_path / "val", n=2)), 4)
    args = type("Args", (), {"teacher": str(src), "teacher_loss": loss, "scale": 4, "channels": 8, "device": "cpu", "lr_l2": 2e-4})()
    out = tmp_path / "out"
    summary = bench.stage_import_teacher(args, out, val)
    assert summary["steps"] == 321 and summary["loss"] == loss.upper() and summary["chosen"] == "raw"
    assert bench.chosen_teacher_stage(out) == "teacher_import"
    teacher = bench.load_span(bench._teacher_path(out, 4))
    model, loss_fn, lr = bench._build(args, "continued", teacher, out)
    assert loss_fn is (bench._l2 if loss == "l2" else bench._l1) and lr == 2e-4 and model.training
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-5)
    args.channels = 16
    with pytest.raises(SystemExit, match="--scale, --channels"):
        bench.stage_import_teacher(args, tmp_path / "out2", val)


def test_render_only_writes_the_page_from_report_json_alone(tmp_path):
    bench = load_bench_script("sr_gpu.py")
    results = tmp_path / "sr_gpu_ft"
    results.mkdir()
    report = json.loads((bench.ROOT / "docs" / "results" / "sr_gpu_ft" / "report.json").read_text())
    (results / "report.json").write_text(json.dumps(report))
    bench.main(["--render-only", "--results-dir", str(results), "--results-md", str(tmp_path / "page.md")])
    page = (tmp_path / "page.md").read_text()
    assert f"Raw numbers: `{results}/report.json`" in page and "rendered again from its report.json" in page
    margin = report["verdict"]["dsclora_minus_continued_db"]
    assert f"DSCLoRA minus continued SPAN: {margin:+.4f} dB" in page
    committed = (bench.ROOT / "docs" / "results" / "sr_gpu_ft.md").read_text()
    assert committed.split("\n", 3)[3] == page.replace(str(results), "docs/results/sr_gpu_ft").split("\n", 3)[3]  # the page is its JSON's


@pytest.mark.parametrize("scores, expected", [
    ({1e-4: 30.1, 5e-4: 30.3, 2e-3: 30.2}, 5e-4),
    ({1e-4: 30.3, 5e-4: 30.3, 2e-3: 30.2}, 1e-4),  # a tie goes to the smaller rate
    ({1e-4: 30.1, 5e-4: 30.2, 2e-3: 30.4}, 2e-3),
])
def test_finetune_lr_is_the_best_on_val(scores, expected):
    bench = load_bench_script("sr_gpu.py")
    assert bench.best_lr([{"lr": lr, "val_psnr": v} for lr, v in scores.items()])["lr"] == expected
    assert bench.trial_steps({"steps": 2001}) == 1000 and bench.trial_steps({"steps": 12}) == 10


@pytest.mark.parametrize("scores, expected", [
    ({0.25: 30.1, 1.0: 30.3, 4.0: 30.2}, None),     # inside: no extension
    ({0.25: 30.1, 1.0: 30.2, 4.0: 30.4}, 16.0),     # the top wins (2026-12-03: continued and full): one step further
    ({0.25: 30.4, 1.0: 30.2, 4.0: 30.1}, 0.0625),   # the bottom wins
    ({0.25: 30.3, 1.0: 30.3, 4.0: 30.3}, 0.0625),   # flat (DSCLoRA's case): the tie goes to the smallest, so look lower
])
def test_lr_grid_goes_past_a_winning_edge(scores, expected):
    bench = load_bench_script("sr_gpu.py")
    trials = [{"factor": f, "lr": 1e-4 * f, "val_psnr": v} for f, v in scores.items()]
    assert bench.edge_factor(trials, 4.0) == expected
