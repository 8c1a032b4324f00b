"""bench/sr_ship.py: a GPU run's teacher and DSCLoRA student become the shipped weights, scored again on the bundled
eval photos, with the run's real-photo scores and command in their metadata and the card rewritten."""

from __future__ import annotations

import json

import pytest
import torch

from lowrank_vision.plugins.sr_dsclora.config import SPANConfig
from lowrank_vision.plugins.sr_dsclora.model import SPAN, reparameterize
from lowrank_vision.plugins.sr_dsclora.weights import checkpoint_extra, save_span
from tests.core.cases import load_bench_script


def _run_dir(tmp_path, student_shift: float):
    """A run folder as sr_gpu.py's report stage leaves it: two deployed SPANs and report.json."""
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    teacher = reparameterize(SPAN(SPANConfig(scale=4, channels=8)).eval())
    student = reparameterize(SPAN(SPANConfig(scale=4, channels=8)).eval())
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():  # the student: the teacher with its last conv's bias moved (brighter or darker output)
        list(student.parameters())[-1].add_(student_shift)
    save_span(teacher, run / "span_x4.safetensors")
    save_span(student, run / "dsclora_x4.safetensors")
    real = {name: {"psnr": p, "gain_over_bicubic": p - 30.0, "per_image": [{}] * 3}
            for name, p in (("bicubic", 30.0), ("teacher_l2", 31.0), ("dsclora_s0", 31.1))}
    (run / "report.json").write_text(json.dumps({
        "command": "python3 bench/sr_gpu.py --out runs/x", "device": "NVIDIA H200", "data": "runs/sr/make-data",
        "acceptance": {"teacher": "teacher_l2"}, "stages": {"teacher_l1": {"steps": 100}, "teacher_l2": {"steps": 20}},
        "finetunes": {"plan": {"steps": 7, "runs": ["dsclora_s0", "continued_s0"]}}, "eval": real}))
    return run


def test_ship_stores_scores_and_writes_the_card(tmp_path):
    bench = load_bench_script("sr_ship.py")
    weights = tmp_path / "weights"
    weights.mkdir()
    result = bench.ship(_run_dir(tmp_path, 0.0), weights_dir=weights)
    span, dsclora = checkpoint_extra(weights / "span_x4.safetensors"), checkpoint_extra(weights / "dsclora_x4.safetensors")
    assert span["steps"] == 120 and span["stage"] == "teacher_l2" and span["realphoto_eval_psnr"] == 31.0
    assert dsclora["steps"] == 7 and dsclora["realphoto_gain_over_bicubic"] == pytest.approx(1.1)
    assert dsclora["teacher_psnr"] == span["eval_psnr"] == pytest.approx(result["span"]["eval_psnr"])
    assert span["eval_psnr"] > 10.0 and "bench/sr_ship.py" in span["command"]
    card = (weights / "README.md").read_text()
    assert "31.000 (+1.00)" in card and "31.100 (+1.10)" in card


def test_ship_refuses_a_student_below_its_teacher_and_dry_run_writes_nothing(tmp_path):
    bench = load_bench_script("sr_ship.py")
    weights = tmp_path / "weights"
    weights.mkdir()
    with pytest.raises(SystemExit, match="scores below its teacher"):
        bench.ship(_run_dir(tmp_path, 5.0), weights_dir=weights)
    assert list(weights.iterdir()) == []
    (tmp_path / "run" / "report.json").unlink()
    with pytest.raises(SystemExit, match="no report.json"):
        bench.ship(tmp_path / "run", weights_dir=weights)
