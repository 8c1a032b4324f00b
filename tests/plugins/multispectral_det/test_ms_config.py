"""Config validation names the field; the no-distillation baseline is the same config with zero alignment weights."""

import pytest

from lowrank_vision.plugins.multispectral_det.config import BenchConfig, DetectTrainConfig, DistillConfig


@pytest.mark.parametrize("cls,kwargs,match", [
    (DetectTrainConfig, {"imgsz": 100}, "DetectTrainConfig.imgsz must be a multiple of 32"),
    (DetectTrainConfig, {"optimizer": "Adam"}, "DetectTrainConfig.optimizer must be 'SGD' or 'AdamW'"),
    (DistillConfig, {"rank_ratio": 0.0}, r"DistillConfig.rank_ratio must be in \(0, 1\]"),
    (DistillConfig, {"targets": ("qkv",)}, "DistillConfig.targets must be a non-empty subset"),
    (DistillConfig, {"w_svd": -1.0}, "DistillConfig.w_svd must be >= 0"),
    (DetectTrainConfig, {"time_s": 0}, "DetectTrainConfig.time_s must be None or > 0 seconds"),
    (BenchConfig, {"threads": 0}, "BenchConfig.threads must be an int >= 1"),
    (DistillConfig, {"align_norm": "l1"}, "DistillConfig.align_norm must be 'mse' or 'relative'"),
    (DetectTrainConfig, {"save_period": 0}, "DetectTrainConfig.save_period must be -1 or an int >= 1"),
])
def test_bad_values_name_the_field(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_paper_defaults_and_offline_arguments():
    d = DistillConfig()
    assert (d.w_task, d.w_svd, d.w_state, d.w_feat, d.rank_ratio) == (1.0, 0.5, 0.1, 1.5, 0.5) and d.distills
    assert not DistillConfig(w_svd=0.0, w_state=0.0, w_feat=0.0).distills
    args = DetectTrainConfig().ultralytics_args()
    assert args["amp"] is False and args["plots"] is False and "resume" not in args
    assert (args["optimizer"], args["lr0"], args["momentum"], args["weight_decay"], args["batch"]) == ("SGD", 0.01, 0.937, 5e-4, 8)


def test_time_budget_and_ram_cache_map_to_ultralytics():
    args = DetectTrainConfig(time_s=90.0, cache=True).ultralytics_args()
    assert args["time"] == 90.0 / 3600 and args["cache"] == "ram" and "time_s" not in args
    args = DetectTrainConfig().ultralytics_args()
    assert "time" not in args and args["cache"] is False and args["save_period"] == -1
    assert DetectTrainConfig(save_period=1).ultralytics_args()["save_period"] == 1
