"""GaLore / Fira: loss goes down on a conv net, the Conv3d update is the unfolded matrix's, checkpoints resume exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core.functional import galore as F_galore
from lowrank_vision.core.optim import Fira, GaLore, optimizer_state_bytes

from .cases import train_losses

torch.set_num_threads(1)


def _conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)


def _optimizer(kind: str, model: nn.Module, **kw):
    projected = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    cls, projection = {"galore_svd": (GaLore, "svd"), "galore_dct": (GaLore, "dct"), "fira": (Fira, "svd")}[kind]
    groups = [{"params": projected, "rank": 0.25, "update_proj_gap": kw.pop("gap", 10), "scale": 1.0, "projection": projection},
              {"params": rest}]
    return cls(groups, lr=kw.pop("lr", 1e-2), **kw)


@pytest.mark.parametrize("kind", ["galore_svd", "galore_dct", "fira"])
def test_loss_goes_down_on_a_conv_net(kind):
    model = _conv_net()
    x, y = _data()
    losses = train_losses(model, _optimizer(kind, model, lr=3e-2), x, y, 40)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_conv3d_first_step_is_the_projected_adam_step_of_the_unfolded_kernel():
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 5, 5, 5)
    conv(x).square().mean().backward()
    w0, grad = conv.weight.detach().clone(), conv.weight.grad.clone()
    lr, scale, eps, rank = 0.1, 0.5, 1e-8, 2
    opt = GaLore([{"params": [conv.weight], "rank": rank, "update_proj_gap": 5, "scale": scale, "projection": "svd"}], lr=lr, eps=eps)
    opt.step()
    matrix = grad.reshape(8, 4 * 27)  # [C_out, C_in * k^3]; C_out is the short side -> left projection
    u = torch.linalg.svd(matrix, full_matrices=False)[0][:, :rank]
    low = u.t() @ matrix
    expected = w0 - lr * scale * (u @ (low / (low.abs() + eps))).reshape(w0.shape)
    assert torch.allclose(conv.weight.detach(), expected, atol=1e-6)
    step_matrix = (conv.weight.detach() - w0).reshape(8, -1)
    assert torch.linalg.matrix_rank(step_matrix).item() == rank


def test_conv3d_net_trains_with_dct_projection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 1, 3, padding=1))
    x, target = torch.randn(4, 2, 6, 6, 6), torch.randn(4, 1, 6, 6, 6)
    opt = GaLore([{"params": [model[0].weight, model[2].weight], "rank": 0.5, "update_proj_gap": 5, "scale": 1.0,
                   "projection": "dct"}, {"params": [model[0].bias, model[2].bias]}], lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_dct_selection_recovers_the_planted_columns():
    basis = F_galore.dct_matrix(16)
    assert torch.allclose(basis.t() @ basis, torch.eye(16), atol=1e-5)
    grad = basis[:, [3, 11]] @ torch.randn(2, 40)  # [16, 40]: left side
    assert F_galore.dct_select(grad, basis, 2, "left").tolist() == [3, 11]
    assert F_galore.dct_select(grad.t(), basis, 2, "right").tolist() == [3, 11]


@pytest.mark.parametrize("kind", ["galore_svd", "galore_dct", "fira"])
def test_state_dict_round_trip_resumes_identically(kind):
    x, y = _data()
    model = _conv_net()
    opt = _optimizer(kind, model, gap=3)
    train_losses(model, opt, x, y, 4)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train_losses(model, opt, x, y, 5)  # crosses a basis update (steps 7)

    resumed = _conv_net(seed=5)
    resumed.load_state_dict(saved_model)
    opt2 = _optimizer(kind, resumed, gap=3)
    opt2.load_state_dict(saved_opt)
    train_losses(resumed, opt2, x, y, 5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_quarter_rank_state_is_at_most_35_percent_of_adamw():
    """Four [64, 256] layers at r = 16: moments 2*16*256 + basis 16*64 (SVD) or 16 indices + one shared 64x64 DCT."""
    weights = [nn.Parameter(torch.randn(64, 256)) for _ in range(4)]
    for w in weights:
        w.grad = torch.randn(64, 256)
    adamw = torch.optim.AdamW(weights)
    adamw.step()
    adam_bytes = sum(v.numel() * v.element_size() for w in weights for k, v in adamw.state[w].items() if k != "step")
    ratios = {}
    for projection in ("svd", "dct"):
        opt = GaLore([{"params": weights, "rank": 0.25, "update_proj_gap": 10, "scale": 0.25, "projection": projection}])
        opt.step()
        ratios[projection] = optimizer_state_bytes(opt, weights) / adam_bytes
    assert ratios["svd"] == pytest.approx((2 * 16 * 256 + 16 * 64) / (2 * 64 * 256))
    assert ratios["dct"] == pytest.approx((4 * (2 * 16 * 256 * 4 + 16 * 8) + 64 * 64 * 4) / (4 * 2 * 64 * 256 * 4))
    assert max(ratios.values()) <= 0.35, ratios


def test_bad_group_keys_are_refused():
    w = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="projection"):
        GaLore([{"params": [w], "rank": 2, "projection": "qr"}])
    with pytest.raises(ValueError, match="rank"):
        GaLore([{"params": [w], "rank": 1.5}])
    with pytest.raises(ValueError, match="update_proj_gap"):
        GaLore([{"params": [w], "rank": 2, "update_proj_gap": 0}])
