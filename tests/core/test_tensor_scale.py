"""An adapter's ``scale`` may be a 0-d tensor (a schedule filled in place between the steps of a captured CUDA graph):
same outputs and gradients as the float, no host traffic (``addmm``'s ``alpha`` would read it back), and a graph
captured once follows the value filled in later (GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowrank_vision.core as core

from ..capture_checks import HostTraffic

LAYERS = {
    "linear": (lambda: nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)), (4, 16)),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)), (2, 3, 9, 9)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 1)), (2, 3, 12)),
    "conv_transpose2d": (lambda: nn.Sequential(nn.ConvTranspose2d(3, 6, 2, stride=2), nn.ReLU(), nn.Conv2d(6, 4, 1)), (2, 3, 5, 5)),
}


def _adapted(kind: str, method: str, strategy: str, device="cpu") -> nn.Module:
    torch.manual_seed(0)
    model = LAYERS[kind][0]().to(device)
    core.apply(model, method, rank=2, alpha=4, strategy=strategy)
    for name, p in model.named_parameters():  # non-zero up factors, so the scale matters
        if p.requires_grad and p.ndim >= 1 and float(p.detach().abs().sum()) == 0.0:
            nn.init.normal_(p, std=0.1)
    return model


def _set_scales(model: nn.Module, factor: float, as_tensor: bool, device="cpu") -> None:
    for layer in core.adapter_layers(model).values():
        value = layer.config.scale * factor
        layer.scale = torch.tensor(value, device=device) if as_tensor else value


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("strategy", ["auto", "weight", "activation"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_tensor_scale_gives_the_float_results_without_host_traffic(kind, method, strategy):
    x = torch.randn(*LAYERS[kind][1], generator=torch.Generator().manual_seed(1))
    results = []
    for as_tensor in (False, True):
        model = _adapted(kind, method, strategy)
        _set_scales(model, 0.5, as_tensor)
        with HostTraffic() as traffic:
            out = model(x)
            out.square().sum().backward()
        results.append((out.detach(), [p.grad for p in model.parameters() if p.requires_grad], traffic.count))
    (out_f, grads_f, _), (out_t, grads_t, traffic_t) = results
    assert traffic_t == 0
    assert torch.allclose(out_t, out_f, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_t, grads_f))


def test_a_saved_tensor_scale_is_a_number_in_the_config(tmp_path):
    import json

    model = _adapted("linear", "lora", "auto")
    _set_scales(model, 0.5, as_tensor=True)
    folder = core.io.save(model, tmp_path / "adapter")
    config = json.loads(next(folder.glob("*.json")).read_text())
    scales = [layer["scale"] for layer in config["layers"].values()]
    assert scales == [pytest.approx(2.0 * 0.5)] * 2 and all(type(v) is float for v in scales)  # alpha 4 / rank 2, x 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_a_captured_forward_follows_a_tensor_scale_filled_in_place_on_cuda(kind):
    model = _adapted(kind, "lora", "auto", device="cuda").eval()
    _set_scales(model, 1.0, as_tensor=True, device="cuda")
    static_x = torch.randn(*LAYERS[kind][1], device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = model(static_x)
    for factor in (0.25, 2.0):
        for layer in core.adapter_layers(model).values():
            layer.scale.fill_(layer.config.scale * factor)
        graph.replay()
        with torch.no_grad():
            expected = model(static_x)
        assert torch.allclose(static_out, expected, atol=1e-5), factor
