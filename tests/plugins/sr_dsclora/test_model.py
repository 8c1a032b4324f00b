"""SPAN: re-parameterisation is exact, parameter/FLOP counts follow the formula, configs validate."""

import pytest
import torch

from lowrank_vision.core import count_parameters
from lowrank_vision.plugins.sr_dsclora.config import SPANConfig
from lowrank_vision.plugins.sr_dsclora.functional import expand_to_conv3xc, fuse_conv3xc
from lowrank_vision.plugins.sr_dsclora.model import (
    SPAN,
    Conv3XC,
    build_span,
    deployed_param_count,
    is_deployed,
    reparameterize,
)
from lowrank_vision.plugins.sr_dsclora.recipes import RECEPTIVE_RADIUS, count_convs, count_flops, upscale
from lowrank_vision.plugins.sr_dsclora.weights import export_span_state_dict

torch.set_num_threads(1)


def count_params(model):
    return count_parameters(model)[1]

# (scale, channels, gain, expected deployed params)
SPAN_CASES = [
    (4, 26, 2, 130_828),  # the DSCLoRA challenge model (checkpoint count in the reference notes)
    (2, 26, 2, None),
    (3, 16, 2, None),
    (4, 12, 3, None),
]


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("scale, channels, gain, expected", SPAN_CASES)
def test_reparameterized_equals_training_form(scale, channels, gain, expected):
    torch.manual_seed(0)
    model = SPAN(SPANConfig(scale=scale, channels=channels, gain=gain)).train()
    _randomize(model)
    x = torch.rand(2, 3, 13, 17)
    with torch.no_grad():
        y_train = model(x)
        model.eval()
        y_eval = model(x)
        reparameterize(model)
        y_deployed = model(x)
    assert y_train.shape == (2, 3, 13 * scale, 17 * scale)
    assert is_deployed(model)
    scale_of_output = y_train.abs().max().item()
    assert (y_train - y_eval).abs().max().item() <= 1e-5 * max(1.0, scale_of_output)
    assert (y_train - y_deployed).abs().max().item() <= 1e-5 * max(1.0, scale_of_output)
    assert count_params(model) == deployed_param_count(model.config)
    if expected is not None:
        assert count_params(model) == expected


def test_fuse_conv3xc_matches_branches_on_border():
    torch.manual_seed(1)
    conv = Conv3XC(5, 7, gain=2).train()
    _randomize(conv, seed=3)
    x = torch.randn(1, 5, 6, 6)
    with torch.no_grad():
        branches = conv(x)
        kernel, bias = conv.fused()
        folded = torch.nn.functional.conv2d(x, kernel, bias, padding=1)
    assert (branches - folded).abs().max().item() < 1e-5  # includes the border rows/cols


def test_expand_to_conv3xc_round_trip():
    torch.manual_seed(2)
    kernel, bias = torch.randn(6, 4, 3, 3), torch.randn(6)
    w = expand_to_conv3xc(kernel, bias, gain=2)
    k2, b2 = fuse_conv3xc(w["conv.0.weight"], w["conv.0.bias"], w["conv.1.weight"], w["conv.1.bias"],
                          w["conv.2.weight"], w["conv.2.bias"], w["sk.weight"], w["sk.bias"])
    assert torch.allclose(k2, kernel, atol=1e-6) and torch.allclose(b2, bias, atol=1e-6)


def test_span_layout_export_loads_into_training_form():
    torch.manual_seed(3)
    deployed = reparameterize(build_span(4, 10)).eval()
    _randomize(deployed, seed=4)
    fresh = build_span(4, 10)
    fresh.load_state_dict(export_span_state_dict(deployed), strict=True)  # SPAN keys incl. sk/conv.*
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        diff = (fresh.train()(x) - deployed(x)).abs().max().item()
    assert diff < 1e-4


def test_flops_and_convs_follow_the_formula():
    model = reparameterize(build_span(4, 26))
    weights = sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Conv2d)
    assert count_flops(model, (64, 64)) == weights * 64 * 64  # every conv runs at LR resolution
    assert abs(count_flops(model, (256, 256)) / 1e9 - 8.54) < 0.05  # NTIRE 2025 DSCF: 8.54 G
    assert count_convs(model) == 22  # NTIRE 2025 DSCF: 22 convs
    assert count_convs(build_span(4, 26)) == 22  # branch convs are not inference convs


def test_tiled_upscale_equals_whole_image():
    torch.manual_seed(5)
    model = reparameterize(build_span(2, 8)).eval()
    _randomize(model, seed=6)
    lr = torch.rand(3, 70, 53)
    whole = upscale(model, lr)
    tiled = upscale(model, lr, tile=24, overlap=RECEPTIVE_RADIUS)
    assert tiled.shape == (3, 140, 106)
    assert (whole - tiled).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "kwargs, field",
    [({"scale": 5}, "scale"), ({"channels": 0}, "channels"), ({"gain": 0}, "gain"), ({"img_range": 0.0}, "img_range")],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SPANConfig.{field} must be"):
        SPANConfig(**kwargs)


def test_bad_input_shape_is_reported():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        build_span(2, 4)(torch.rand(1, 4, 8, 8))
