"""DLRMamba as ultralytics modules: registration, a few training iterations on 4-channel data, distillation, ONNX."""

import csv
import os
import sys
from pathlib import Path

import pytest
import torch

from lowrank_vision.plugins.multispectral_det import model_yaml
from lowrank_vision.plugins.multispectral_det.config import DistillConfig
from lowrank_vision.plugins.multispectral_det.model import RGBIRFusion, ss2d_modules, student_from_teacher
from lowrank_vision.plugins.multispectral_det.ss2d import Factorised


def _detection_model(name="dlrmamba-t", ch=4):
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(model_yaml(name), ch=ch, nc=3, verbose=False)


def test_import_registers_modules_with_ultralytics():
    import lowrank_vision.plugins.multispectral_det  # noqa: F401
    from ultralytics.nn import tasks

    assert tasks.VSSBlock.__module__.endswith("multispectral_det.ss2d") and tasks.RGBIRFusion is RGBIRFusion
    model = _detection_model()
    y = model.eval()(torch.rand(1, 4, 64, 64))
    assert y[0].shape == (1, 4 + 3, 84)  # 8x8 + 4x4 + 2x2 anchors
    with pytest.raises(ValueError, match="model_yaml: name must be one of"):
        model_yaml("dlrmamba-z")


def test_yaml_channels_follow_the_width_and_student_yaml_is_smaller():
    t, s = _detection_model("dlrmamba-t"), _detection_model("dlrmamba-t-lr50")
    widths = [m.channels for _, m in ss2d_modules(t)]
    assert widths == [64, 64, 128]  # P4 (2 blocks at width 0.125 of 512) and P5 (1024 * 0.125)
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (t, s))
    ss2d_t = sum(p.numel() for _, m in ss2d_modules(t) for p in m.parameters())
    ss2d_s = sum(p.numel() for _, m in ss2d_modules(s) for p in m.parameters())
    assert n_t - n_s == ss2d_t - ss2d_s and ss2d_s < 0.5 * ss2d_t


def test_fusion_stem_starts_as_identity_and_checks_channels():
    stem = RGBIRFusion(4)
    x = torch.rand(2, 4, 8, 8)
    torch.testing.assert_close(stem(x), x)
    assert sum(p.numel() for p in stem.parameters()) < 1650
    with pytest.raises(ValueError, match="ir_channels must be in"):
        RGBIRFusion(3, ir_channels=3)


def test_sad_loss_terms_at_svd_initialisation():
    from lowrank_vision.plugins.multispectral_det.distill import SADLoss

    torch.manual_seed(0)
    teacher = _detection_model()
    teacher.args = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
    from types import SimpleNamespace

    teacher.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    student = student_from_teacher(teacher, 0.5)
    assert any(isinstance(m, Factorised) and m.rank for m in student.modules())
    loss = SADLoss(student, teacher, DistillConfig())
    img = torch.rand(2, 4, 64, 64)
    student.train()(img)
    teacher.eval()(img)
    terms = loss.alignment()
    assert terms["svd"].item() == pytest.approx(0.0, abs=1e-10)  # the student starts at the teacher's truncated SVD
    assert terms["state"].item() > 0 and terms["feat"].item() > 0
    with torch.no_grad():
        next(m for m in student.modules() if isinstance(m, Factorised) and m.rank).u.add_(0.1)
    student(img), teacher(img)
    assert loss.alignment()["svd"].item() > 1e-4


def test_ultralytics_trains_teacher_and_distils_student_on_4_channel_tiffs(trained_teacher, tiny_data, tiny_train, tmp_path):
    from lowrank_vision.plugins.multispectral_det.recipes import distill_student, evaluate
    from lowrank_vision.plugins.multispectral_det.ultralytics_host import load_detection_model

    teacher = load_detection_model(trained_teacher["checkpoint"])
    assert teacher.yaml["channels"] == 4 and len(list(ss2d_modules(teacher))) == 3
    result = distill_student(trained_teacher["checkpoint"], tiny_data, DistillConfig(train=tiny_train), tmp_path, "student")
    student = load_detection_model(result["checkpoint"])
    ranks = [m.in_proj.rank for _, m in ss2d_modules(student)]
    assert ranks == [25, 25, 51]  # factor_rank(2E, C, 0.5) = floor(0.5 * 2E * C / (2E + C)), E = 2C, C = 64, 64, 128
    with open(Path(result["save_dir"]) / "results.csv") as f:
        row = next(csv.DictReader(f))
    sad = float(row["train/sad_loss"])
    assert 0 < sad < 100 and float(row["train/cls_loss"]) > 0
    metrics = evaluate(result["checkpoint"], tiny_data, "test", imgsz=64)
    assert set(metrics["per_class"]) <= {"vehicle", "person", "vessel"} and 0 <= metrics["mAP50"] <= 1


def test_training_reads_its_results_csv_without_polars(trained_teacher, monkeypatch):
    from ultralytics.models.yolo.detect import DetectionTrainer

    from lowrank_vision.plugins.multispectral_det.ultralytics_host import detection_trainer

    cls = detection_trainer()
    trainer = cls.__new__(cls)
    trainer.csv = Path(trained_teacher["save_dir"]) / "results.csv"
    with open(trainer.csv) as f:
        row = next(csv.DictReader(f))
    monkeypatch.setitem(sys.modules, "polars", None)  # as on a machine without polars
    with pytest.raises(ImportError):
        DetectionTrainer.read_results_csv(trainer)
    table = trainer.read_results_csv()
    assert table["epoch"] == [1.0] and table["train/box_loss"] == [pytest.approx(float(row["train/box_loss"]))]
    assert issubclass(cls, DetectionTrainer) and trained_teacher["epochs_run"] == 1


def test_a_run_records_its_batch_and_a_changed_batch_is_said(trained_teacher, tiny_train):
    from lowrank_vision.plugins.multispectral_det.recipes import batch_change_note

    assert trained_teacher["batch_used"] == tiny_train.batch  # what ultralytics trained with (halved after a CUDA OOM)
    assert batch_change_note(32, 32) is None
    note = batch_change_note(32, 8)
    assert "batch 8, not the requested 32" in note and "out-of-memory" in note


def test_onnx_export_matches_pytorch_in_onnxruntime(trained_teacher, tmp_path):
    from lowrank_vision.plugins.multispectral_det.metrics import export_onnx, onnx_max_difference
    from lowrank_vision.plugins.multispectral_det.ultralytics_host import load_detection_model

    student = student_from_teacher(load_detection_model(trained_teacher["checkpoint"]), 0.5).eval()
    path = export_onnx(student, tmp_path / "s.onnx", 64)
    check = onnx_max_difference(student, path, 64)
    assert check["output_shape"] == [1, 7, 84]
    assert check["max_abs_diff"] < 1e-3 * max(1.0, check["max_abs_value"])


def test_weights_roundtrip(tmp_path):
    from lowrank_vision.plugins.multispectral_det.weights import WeightsError, load_weights, save_weights

    model = student_from_teacher(_detection_model(), 0.5).eval()
    path = save_weights(model, tmp_path / "w.safetensors")
    again = load_weights(path)
    x = torch.rand(1, 4, 64, 64)
    torch.testing.assert_close(again(x)[0], model.half().float()(x)[0], rtol=1e-3, atol=1e-3)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError):
        load_weights(tmp_path / "bad.safetensors")


def test_plugin_import_is_cheap_and_registers_once_ultralytics_is_imported():
    import subprocess

    code = ("import sys, lowrank_vision.plugins.multispectral_det as p; print('ultralytics' in sys.modules, p.PLUGIN.app); "
            "from ultralytics.nn import tasks; print(tasks.VSSBlock.__name__, tasks.RGBIRFusion.__name__)")
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["False", "lowrank-detect", "VSSBlock", "RGBIRFusion"]


def test_interleaved_latency_times_every_model_each_round_and_restores_threads():
    from lowrank_vision.plugins.multispectral_det.metrics import interleaved_cpu_latency

    before = torch.get_num_threads()
    small, big = torch.nn.Conv2d(4, 4, 1), torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(8)])
    r = interleaved_cpu_latency({"small": small, "big": big}, imgsz=64, threads=1, warmup=1, rounds=5, channels=4)
    assert set(r) == {"small", "big"} and all(len(v["latency_runs_ms"]) == 5 for v in r.values())
    assert r["small"]["min_ms"] <= r["small"]["latency_ms"] <= r["small"]["max_ms"]
    assert r["big"]["latency_ms"] > r["small"]["latency_ms"] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="models must name at least one model"):
        interleaved_cpu_latency({})


def test_evaluate_by_condition_splits_the_generated_test_set(trained_teacher, tiny_data, tmp_path):
    import json

    from lowrank_vision.plugins.multispectral_det.recipes import CONDITIONS, evaluate_by_condition

    table = json.loads((Path(tiny_data).parent / "conditions.json").read_text())["images"]
    test = {k: c for k, c in table.items() if k.startswith("train/")}
    result = evaluate_by_condition(trained_teacher["checkpoint"], tiny_data, tmp_path / "by", split="train", imgsz=64)
    expected = {c: sum(v[c] for v in test.values()) for c in CONDITIONS}
    expected["clear"] = sum(not any(v[c] for c in CONDITIONS) for v in test.values())
    assert {k: v["images"] for k, v in result.items()} == {k: n for k, n in expected.items() if n}
    assert all(0 <= v["mAP50"] <= 1 for v in result.values())
    assert not list((tmp_path / "by").glob(".*"))  # nothing half-written
    with pytest.raises(ValueError, match="split must be one of the generated splits"):
        evaluate_by_condition(trained_teacher["checkpoint"], tiny_data, tmp_path / "by", split="holdout")


def test_sad_relative_alignment_is_unit_free_and_brings_the_state_term_to_the_feature_terms_scale():
    from types import SimpleNamespace

    from lowrank_vision.plugins.multispectral_det.distill import SADLoss

    torch.manual_seed(0)
    teacher = _detection_model()
    teacher.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    student = student_from_teacher(teacher, 0.5)
    img = torch.rand(2, 4, 64, 64)
    terms = {}
    for norm in ("mse", "relative"):
        loss = SADLoss(student, teacher, DistillConfig(align_norm=norm))
        student.eval()(img)  # both in eval mode: the untrained BatchNorms' running statistics are the same
        teacher.eval()(img)
        terms[norm] = {k: v.item() for k, v in loss.alignment().items()}
    # mean squares: the hidden states are tiny, so their term is orders of magnitude below the feature term
    assert terms["mse"]["state"] < 1e-2 * terms["mse"]["feat"]
    # relative: both are fractions of the teacher's energy, within an order of magnitude of each other, in (0, 2)
    assert 0.1 < terms["relative"]["state"] / terms["relative"]["feat"] < 10
    assert 0 < terms["relative"]["state"] < 2 and 0 < terms["relative"]["feat"] < 2
    # unit-free: scaling student and teacher outputs alike leaves the relative term unchanged
    pairs = SADLoss(student, teacher, DistillConfig(align_norm="relative"))
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    assert pairs._distance([3 * s], [3 * t]).item() == pytest.approx(pairs._distance([s], [t]).item(), rel=1e-5)
    assert pairs._distance([t], [t]).item() == 0.0


def test_plateau_stopper_stops_after_patience_epochs_without_gain():
    from types import SimpleNamespace

    from lowrank_vision.plugins.multispectral_det.recipes import plateau_stopper

    callback = plateau_stopper(patience=2, min_delta=0.01)
    trainer = SimpleNamespace(stop=False, epoch=0, metrics={})
    stopped_at = None
    for epoch, value in enumerate([0.1, 0.5, 0.505, 0.509, 0.9]):
        trainer.epoch, trainer.metrics = epoch, {"metrics/mAP50(B)": value}
        callback(trainer)
        if trainer.stop:
            stopped_at = epoch + 1
            break
    assert stopped_at == 4  # best 0.5 at epoch 2; epochs 3 and 4 gain < 0.01
    assert trainer.plateau == {"epoch": 4, "best": 0.5, "best_epoch": 2}
    trainer.epoch, trainer.metrics = 4, {"metrics/mAP50(B)": 0.5}  # ultralytics' final_eval: same event, stop already set
    callback(trainer)
    assert trainer.plateau == {"epoch": 4, "best": 0.5, "best_epoch": 2}
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        plateau_stopper(patience=0)


@pytest.mark.slow
def test_distil_from_the_shipped_teacher_weights(tiny_data, tiny_train, tmp_path):
    """A teacher rebuilt from the shipped safetensors has no ``.nc`` attribute (ultralytics' trainer sets it); the SAD
    trainer reads the class count from its YAML instead (this raised AttributeError before)."""
    from lowrank_vision.plugins.multispectral_det.recipes import distill_student
    from lowrank_vision.plugins.multispectral_det.weights import WEIGHTS_DIR, as_ultralytics_checkpoint

    ckpt = as_ultralytics_checkpoint(WEIGHTS_DIR / "dlrmamba_t_teacher.safetensors", tmp_path / "teacher.pt")
    result = distill_student(ckpt, tiny_data, DistillConfig(align_norm="relative", train=tiny_train), tmp_path, "student")
    assert result["align_norm"] == "relative" and result["distilled"] and Path(result["checkpoint"]).is_file()
