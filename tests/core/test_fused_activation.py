"""The fused kernels of the activation strategy (``core.functional.fused``, frozen base layer) against the
weight-space path: same output, same gradients for the input and both factors, no gradient for the frozen weight.

The Linear kernel runs one GEMM over the merged weight and forms the factors' gradients from thin GEMMs only;
the convolution kernels run one op over ``[W; A]``. Both must agree with autograd through ``W + scale * B A``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lowrank_vision.core import apply
from lowrank_vision.core.functional.fused import fused_lora_linear

from .cases import one_layer_model, randomize_adapter

FUSED_LAYERS = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]
METHODS = ["lora", "dora"]


def run(method: str, layer_name: str, strategy: str, calls: list[str]):
    model, x = one_layer_model(method, layer_name, strategy)
    layer = model[0]
    original = layer.delta.fused_forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append("fused" if out is not None else "fallback")
        return out

    layer.delta.fused_forward = spy
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads, x.grad, layer.base_layer.weight.grad


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer_name", FUSED_LAYERS)
def test_fused_activation_path_matches_the_weight_space_path(method, layer_name):
    calls: list[str] = []
    ref_out, ref_grads, ref_gx, _ = run(method, layer_name, "weight", [])
    out, grads, gx, base_grad = run(method, layer_name, "activation", calls)
    assert calls == ["fused"], f"the fused kernel did not run: {calls}"
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) >= 2
    for name, expected in ref_grads.items():
        torch.testing.assert_close(grads[name], expected, rtol=1e-4, atol=1e-5, msg=name)
    assert base_grad is None  # the frozen weight's gradient is never formed


def test_fused_linear_under_bf16_autocast_is_as_close_as_the_unfused_bf16_path():
    """Under autocast the kernel computes in bf16 like ``F.linear`` would; its error against float64 stays within
    a small multiple of the unfused bf16 reference's own error (3-D token input, bias)."""
    torch.manual_seed(1)
    x = torch.randn(2, 37, 64)
    w, bias = torch.randn(48, 64) / 8, torch.randn(48)
    a, b = torch.randn(4, 64) / 8, torch.randn(48, 4) / 2
    scale = 0.5
    exact = (x.double() @ (w.double() + scale * b.double() @ a.double()).t() + bias.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_lora_linear(x, w, bias, a, b, scale)
        unfused = nn.functional.linear(x, w, bias) + scale * nn.functional.linear(nn.functional.linear(x, a), b)
    assert fused.dtype == torch.bfloat16 and fused.shape == (2, 37, 48)
    err_fused = (fused.double() - exact).abs().max().item()
    err_unfused = (unfused.double() - exact).abs().max().item()
    assert err_fused < 3 * err_unfused + 1e-3, (err_fused, err_unfused)
    # backward under autocast: fp32 gradients for the fp32 factors, within bf16 rounding of the float64 gradients
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_lora_linear(x, w, bias, a, b, scale)
    out.float().sum().backward()
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    (x.double() @ (w.double() + scale * b64 @ a64).t()).sum().backward()
    for got, expected in ((a.grad, a64.grad), (b.grad, b64.grad)):
        assert got.dtype == torch.float32
        assert (got.double() - expected).abs().max() < 0.02 * expected.abs().max(), (got, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_takes_the_fused_linear_kernel_inside_a_captured_graph_and_trains_the_same():
    """``auto`` on CUDA: weight space in eager mode, the fused Linear kernel while a CUDA graph is captured
    (``DeltaAdapter._pick_strategy``); the replayed step's gradients equal the eager step's."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply(model, "lora", rank=4, alpha=8)
    randomize_adapter(model)  # on the CPU (its generator is a CPU one), then moved
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(16, 64, device=device)
    picked: list[str] = []
    layer = model[0]
    original = layer._pick_strategy
    layer._pick_strategy = lambda inp: picked.append(original(inp)) or picked[-1]

    def step():
        loss = model(x).square().mean()
        loss.backward()

    step()
    eager = [p.grad.clone() for p in params]
    assert picked == ["weight"]
    for p in params:
        p.grad = None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        step()
    torch.cuda.current_stream().wait_stream(side)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    assert picked[-1] == "activation"
    for got, expected in zip((p.grad for p in params), eager):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
