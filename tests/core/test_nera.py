"""NeRA (the paper's KAN form, ``nera``): equal to a naive per-edge KAN reference, zero start, save/load, no merge, grid update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank_vision.core import adapter_layers, apply, count_parameters, get_adapter_class, load, merge, save
from lowrank_vision.core.adapters.nera import NeRAOptions
from lowrank_vision.core.functional.layout import geometry_of
from lowrank_vision.core.functional.nera import nera_param_count


def naive_bspline(u: float, knots: list[float], i: int, k: int) -> float:
    """Cox-de Boor recursion for one basis function, one scalar (textbook form)."""
    if k == 0:
        return 1.0 if knots[i] <= u < knots[i + 1] else 0.0
    left = (u - knots[i]) / (knots[i + k] - knots[i]) * naive_bspline(u, knots, i, k - 1)
    right = (knots[i + k + 1] - u) / (knots[i + k + 1] - knots[i + 1]) * naive_bspline(u, knots, i + 1, k - 1)
    return left + right


def naive_kan_layer(x, base, coeff, scale, shift, grid_size, order, grid_range):
    """out[o] = sum_i w[o,i] silu(x_i) + sum_k c[o,i,k] B_k((x_i - shift_i) * scale_i), loops everywhere."""
    h = 2 * grid_range / grid_size
    knots = [-grid_range + (j - order) * h for j in range(grid_size + 2 * order + 1)]
    d_out, d_in, n_basis = coeff.shape
    out = []
    for o in range(d_out):
        total = 0.0
        for i in range(d_in):
            xi = float(x[i])
            total += float(base[o, i]) * xi / (1 + torch.exp(torch.tensor(-xi)).item())
            u = (xi - float(shift[i])) * float(scale[i])
            total += sum(float(coeff[o, i, k]) * naive_bspline(u, knots, k, order) for k in range(n_basis))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 4))


@pytest.mark.parametrize("order,grid_size", [(3, 5), (1, 4), (2, 3)])
def test_matches_naive_kan_reference(order, grid_size):
    model = _model()
    apply(model, "nera", rank=3, alpha=6.0, targets=["0"], grid_size=grid_size, spline_order=order, grid_range=2.0)
    layer = adapter_layers(model, "default")["0"]
    with torch.no_grad():  # make every parameter non-trivial (the up layer starts at zero)
        for _, p in layer.adapter_parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(4, 6) * 1.5
    ours = layer.adapter_path(x).double().detach()
    layer.requires_grad_(False)
    for row in range(x.shape[0]):
        h = naive_kan_layer(x[row], layer.down_base, layer.down_spline, layer.down_scale, layer.down_shift, grid_size, order, 2.0)
        y = naive_kan_layer(h, layer.up_base, layer.up_spline, layer.up_scale, layer.up_shift, grid_size, order, 2.0)
        torch.testing.assert_close(ours[row], y * 2.0, rtol=1e-4, atol=1e-5)


def test_starts_unchanged_param_count_and_no_merge():
    model, ref = _model(), _model()
    x = torch.randn(8, 6)
    report = apply(model, "nera", rank=2, targets=["0", "2"])
    assert torch.equal(model(x), ref(x))
    expected = nera_param_count(6, 5, 2, 5, 3) + nera_param_count(5, 4, 2, 5, 3)
    assert report.adapter_params == expected == count_parameters(model)[0]
    assert expected == (2 * 6 * 9 + 12) + (5 * 2 * 9 + 4) + (2 * 5 * 9 + 10) + (4 * 2 * 9 + 4)
    cls = get_adapter_class("nera")
    assert cls.param_count(geometry_of(nn.Linear(6, 5)), 2, NeRAOptions()) == nera_param_count(6, 5, 2, 5, 3)
    with pytest.raises(TypeError, match="nonlinear"):
        merge(model)


def naive_kan_conv2d_down(x, base, coeff, scale, shift, stride, grid_size, order, grid_range):
    """h[r, p] = sum over input channels i and taps d of phi_{r,i,d}(x_i(p * stride + d)) (valid conv, loops)."""
    h = 2 * grid_range / grid_size
    knots = [-grid_range + (j - order) * h for j in range(grid_size + 2 * order + 1)]
    r, c_in, n_basis, kh, kw = coeff.shape
    out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = torch.zeros(r, out_h, out_w, dtype=torch.float64)
    for o in range(r):
        for py in range(out_h):
            for px in range(out_w):
                total = 0.0
                for i in range(c_in):
                    for dy in range(kh):
                        for dx in range(kw):
                            xi = float(x[i, py * stride + dy, px * stride + dx])
                            total += float(base[o, i, dy, dx]) * xi / (1 + torch.exp(torch.tensor(-xi)).item())
                            u = (xi - float(shift[i])) * float(scale[i])
                            total += sum(float(coeff[o, i, k, dy, dx]) * naive_bspline(u, knots, k, order) for k in range(n_basis))
                out[o, py, px] = total
    return out


def test_conv_matches_naive_kan_convolution_and_grid_update():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2))
    apply(model, "nera", rank=2, alpha=2.0, targets=["0"], grid_size=3, spline_order=2)
    layer = adapter_layers(model, "default")["0"]
    with torch.no_grad():
        for _, p in layer.adapter_parameters():
            p.add_(torch.randn_like(p) * 0.3)
    layer.requires_grad_(False)
    x = torch.randn(1, 2, 7, 7)
    ours = layer.adapter_path(x).double()[0]
    hidden = naive_kan_conv2d_down(x[0], layer.down_base, layer.down_spline, layer.down_scale, layer.down_shift, 2, 3, 2, 3.0)
    for py in range(3):
        for px in range(3):
            y = naive_kan_layer(hidden[:, py, px], layer.up_base, layer.up_spline, layer.up_scale, layer.up_shift, 3, 2, 3.0)
            torch.testing.assert_close(ours[:, py, px], y, rtol=1e-4, atol=1e-5)
    batch = torch.rand(8, 2, 7, 7) - 0.5
    before = layer.adapter_path(batch)
    layer.update_grid(batch)
    assert (layer.adapter_path(batch) - before).abs().max() < 0.05 * before.abs().max()


def test_convs_start_unchanged_grouped_refused_bad_options_named():
    for conv in (nn.Conv1d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.Conv3d(3, 4, 3, padding=1)):
        model, x = nn.Sequential(conv), torch.randn(2, 3, *([5] * (conv.weight.dim() - 2)))
        ref = model(x)
        report = apply(model, "nera", rank=2, targets=["0"])
        assert torch.equal(model(x), ref)
        assert report.adapter_params == nera_param_count(3, 4, 2, 5, 3, kernel_numel=3 ** (conv.weight.dim() - 2))
    with pytest.raises(ValueError, match="ungrouped"):
        apply(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "nera", rank=2, targets=["0"])
    with pytest.raises(ValueError, match="NeRAOptions.spline_order must be an integer >= 0"):
        apply(_model(), "nera", rank=2, targets=["0"], spline_order=-1)


@pytest.mark.parametrize("field, expected", [("grid_range", "a positive number"), ("spline_init_scale", "a number >= 0")])
def test_bool_is_not_a_number_option(field, expected):
    """``True`` is an int to Python; as a grid range or init scale it is a mistake, refused like in every other family."""
    with pytest.raises(ValueError, match=f"NeRAOptions.{field} must be {expected}, got True"):
        NeRAOptions(**{field: True})
    assert getattr(NeRAOptions(**{field: 2}), field) == 2  # a plain int is still a number


def test_training_lowers_loss_and_save_load_exact(tmp_path):
    torch.manual_seed(1)
    model = _model()
    apply(model, "nera", rank=2, targets=["0", "2"])
    x, y = torch.randn(64, 6), torch.randn(64, 4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    adapter_layers(model, "default")["0"].update_grid(x)
    save(model, tmp_path / "a")
    fresh = _model()
    load(fresh, tmp_path / "a")
    assert torch.equal(fresh(x), model(x))


def test_grid_update_keeps_function_and_fills_grid():
    torch.manual_seed(2)
    model = _model()
    apply(model, "nera", rank=3, targets=["0"], grid_size=8)
    layer = adapter_layers(model, "default")["0"]
    with torch.no_grad():
        layer.up_spline.normal_(0, 0.2)
        layer.up_base.normal_(0, 0.2)
    x = torch.rand(256, 6) * 1.0 - 0.5  # data fill only a sixth of the default grid
    before = layer.adapter_path(x)
    layer.update_grid(x)
    after = layer.adapter_path(x)
    u = (x - layer.down_shift) * layer.down_scale
    assert u.abs().max() <= 3.0 and u.abs().max() > 2.9
    assert (after - before).abs().max() < 0.02 * before.abs().max()
