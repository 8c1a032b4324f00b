"""A tiny generated 4-channel data set and one trained teacher, shared by the detector tests (session scope)."""

import os

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from lowrank_vision.datasets.multispectral import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("ms_data")
    return write_dataset(root / "data", SyntheticConfig(n_train=4, n_val=2, n_test=2, size=64))["data_yaml"]


@pytest.fixture(scope="session")
def tiny_train():
    from lowrank_vision.plugins.multispectral_det.config import DetectTrainConfig

    return DetectTrainConfig(epochs=1, imgsz=64, batch=2, mosaic=0.0)


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, tiny_data, tiny_train):
    import torch

    from lowrank_vision.plugins.multispectral_det import model_yaml
    from lowrank_vision.plugins.multispectral_det.recipes import train_detector

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("ms_runs")
    return train_detector(model_yaml("dlrmamba-t"), tiny_data, tiny_train, out, "teacher")
