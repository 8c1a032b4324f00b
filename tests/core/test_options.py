"""Options that would be accepted and then ignored are errors."""

from __future__ import annotations

import pytest
from torch import nn

from lowrank_vision.core import AdapterConfig, apply, export_peft


def test_nera_has_one_path_so_weight_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy.*nera"):
        apply(nn.Sequential(nn.Linear(4, 4)), "nera", rank=2, strategy="weight")
    apply(nn.Sequential(nn.Linear(4, 4)), "nera", rank=2, strategy="activation")  # the path it runs


def test_dropout_with_weight_strategy_is_refused():
    """Dropout acts on the adapter's input, which the weight-space path never forms."""
    with pytest.raises(ValueError, match="AdapterConfig.strategy"):
        AdapterConfig(rank=2, dropout=0.1, strategy="weight")
    with pytest.raises(ValueError, match="dropout"):
        apply(nn.Sequential(nn.Linear(4, 4)), "lora", rank=2, dropout=0.1, strategy="weight")


def test_errors_name_class_and_field():
    with pytest.raises(ValueError, match=r"AdapterConfig.rank must be a positive integer, got 0"):
        AdapterConfig(rank=0)
    with pytest.raises(ValueError, match=r"NOLAOptions.num_basis_a must be a positive integer, got 0"):
        apply(nn.Sequential(nn.Linear(4, 4)), "nola", rank=2, num_basis_a=0)
    with pytest.raises(ValueError, match=r"SplineLoRAOptions.grid_size must be an integer >= 2, got 1"):
        apply(nn.Sequential(nn.Linear(4, 4)), "spline_lora", rank=2, grid_size=1)
    with pytest.raises(ValueError, match=r"NeRAOptions.grid_size must be an integer >= 1, got 0"):
        apply(nn.Sequential(nn.Linear(4, 4)), "nera", rank=2, grid_size=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0}, "AdapterConfig.alpha must be a positive number or None, got 0"),
    ({"alpha": True}, "AdapterConfig.alpha must be a positive number or None, got True"),
    ({"dropout": 1.0}, r"AdapterConfig.dropout must be a number in \[0, 1\), got 1.0"),
    ({"dropout": True}, r"AdapterConfig.dropout must be a number in \[0, 1\), got True"),
    ({"strategy": "fast"}, r"AdapterConfig.strategy must be one of \('auto', 'weight', 'activation'\), got 'fast'"),
])
def test_adapter_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(rank=2, **kwargs)
    AdapterConfig(rank=2, alpha=4, dropout=0)  # ints are numbers


@pytest.mark.parametrize("family, kwargs, message", [
    ("nola", {"seed": 1.5}, "NOLAOptions.seed must be an integer, got 1.5"),
    ("nola", {"num_basis_b": True}, "NOLAOptions.num_basis_b must be a positive integer, got True"),
    ("spline_lora", {"grid_range": True}, "SplineLoRAOptions.grid_range must be a positive number, got True"),
    ("spline_lora", {"grid_range": 0.0}, "SplineLoRAOptions.grid_range must be a positive number, got 0.0"),
])
def test_family_option_errors(family, kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply(nn.Sequential(nn.Linear(4, 4)), family, rank=2, **kwargs)


def test_export_peft_refuses_mixed_dropout(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    apply(model, "lora", rank=2, targets=["0"], dropout=0.1)
    apply(model, "lora", rank=2, targets=["1"], dropout=0.2)
    with pytest.raises(ValueError, match="dropout"):
        export_peft(model, tmp_path)


@pytest.mark.parametrize("value", ["no", 0, None])
def test_dora_detach_norm_must_be_a_bool(value):
    """A truthy string would otherwise silently mean ``True``."""
    with pytest.raises(ValueError, match="DoRAOptions.detach_norm must be True or False"):
        apply(nn.Sequential(nn.Linear(4, 4)), "dora", rank=2, detach_norm=value)
