"""NeRA's spline without its basis tensor (``core.functional.nera``): equal, with equal gradients, to the dense
Cox-de Boor evaluation it replaced (``bspline_basis_dense`` / ``kan_layer_dense``, the previous code kept as the
reference), on random inputs on and off the grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowrank_vision.core.functional import nera as F_kan

torch.set_num_threads(1)


def _inputs(order, grid, d_in=6, d_out=4, lead=(3, 5), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    knots = F_kan.knot_vector(grid, order, 2.0, dtype=dtype)
    x = (torch.randn(*lead, d_in, generator=g, dtype=dtype) * 2.5).requires_grad_()  # about 40% beyond [-2, 2], some off the span
    params = [torch.randn(d_out, d_in, generator=g, dtype=dtype), torch.randn(d_out, d_in, grid + order, generator=g, dtype=dtype),
              torch.rand(d_in, generator=g, dtype=dtype) + 0.5, torch.randn(d_in, generator=g, dtype=dtype) * 0.3]
    return x, [p.requires_grad_() for p in params], knots


@pytest.mark.parametrize("order,grid", [(0, 4), (1, 4), (2, 3), (3, 5), (4, 6)])
def test_basis_and_its_gradient_equal_the_recursion(order, grid):
    knots = F_kan.knot_vector(grid, order, 2.0, dtype=torch.float64)
    u = (torch.rand(4000, dtype=torch.float64) * 7 - 3.5).requires_grad_()  # the span is [-2 - 2k/G*2, ...], partly outside
    ours = F_kan.bspline_basis(u, knots, order)
    ref = F_kan.bspline_basis_dense(u, knots, order)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    inside = (u > knots[0]) & (u < knots[-1])
    assert torch.allclose(ours.sum(-1)[inside & (u.abs() < 2.0)], torch.ones(()).double())  # partition of unity on the grid
    assert bool((ours[~inside] == 0).all())
    if order == 0:  # piecewise constant: zero gradient (the recursion has no path to u at all)
        (grad,) = torch.autograd.grad(ours.sum(), u, allow_unused=True)
        assert grad is None or bool((grad == 0).all())
        return
    weights = torch.randn(ref.shape, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), u)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), u)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("order,grid", [(1, 4), (3, 5), (2, 3)])
def test_kan_layer_outputs_and_gradients_equal_the_dense_form(order, grid):
    x, params, knots = _inputs(order, grid)
    out = F_kan.kan_layer(x, *params, knots, order)
    ref = F_kan.kan_layer_dense(x, *params, knots, order)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    grads_ref = torch.autograd.grad(ref, [x, *params], grad_out)
    for name, a, b in zip(["x", "base", "coeff", "scale", "shift"], grads, grads_ref):  # float32 resolution of the largest entry
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5 * max(1.0, float(b.abs().max())), msg=lambda m, n=name: f"d/d{n}: {m}")


def test_spline_term_keeps_far_less_for_backward():
    """Bytes autograd keeps for backward: the dense form keeps the basis and the recursion's levels (several times the
    ``[tokens, d_in, G + k]`` basis); the local form keeps one float per input feature (its position on the grid)."""
    order, grid = 3, 5
    x, params, knots = _inputs(order, grid, d_in=32, lead=(256,))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F_kan.spline_term((x.float() - params[3]) * params[2], params[1], knots, order)
    basis_bytes = 256 * 32 * (grid + order) * 4
    ours = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        u = (x.float() - params[3]) * params[2]
        F.linear(F_kan.bspline_basis_dense(u, knots, order).flatten(-2), params[1].flatten(1))
    dense = sum(saved)
    assert ours < basis_bytes / 2 and dense > 5 * basis_bytes, (ours, basis_bytes, dense)


def test_kan_conv_unchanged():
    order, grid = 3, 5
    g = torch.Generator().manual_seed(3)
    knots = F_kan.knot_vector(grid, order, 3.0)
    x = (torch.randn(2, 3, 7, 7, generator=g) * 2).requires_grad_()
    base, coeff = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, 3, grid + order, 3, 3, generator=g)
    scale, shift = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g) * 0.2
    out = F_kan.kan_conv(x, base, coeff, scale, shift, knots, order, stride=1, padding=1, dilation=1)
    u = (x - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
    features = torch.cat([F.silu(x).unsqueeze(2), F_kan.bspline_basis_dense(u, knots, order).movedim(-1, 2)], 2).flatten(1, 2)
    weight = torch.cat([base.unsqueeze(2), coeff], 2).reshape(4, -1, 3, 3)
    ref = F.conv2d(features, weight, None, 1, 1, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gx, = torch.autograd.grad(out.square().sum(), x)
    gx_ref, = torch.autograd.grad(ref.square().sum(), x)
    # float32 knots are uniform only to rounding; the old form used each knot, the new one the first knot and the
    # step: gradients agree to float32 resolution of their largest entry (cancellation makes single entries noisier)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-5 * float(gx_ref.abs().max()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kan_layer_equals_dense_form_on_cuda_and_captures():
    x, params, knots = _inputs(3, 5, lead=(64,))
    x, knots = x.detach().cuda().requires_grad_(), knots.cuda()
    params = [p.detach().cuda().requires_grad_() for p in params]
    out = F_kan.kan_layer(x, *params, knots, 3)
    ref = F_kan.kan_layer_dense(x, *params, knots, 3)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(out.square().sum(), [x, *params])
    grads_ref = torch.autograd.grad(ref.square().sum(), [x, *params])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-5 * max(1.0, float(b.abs().max())))
    # no host sync or host-to-device copy in forward + backward (the piece matrix is cached). Warm-up on a side stream
    # first, as torch.cuda.graphs asks (and as the trainer does): without it the first capture of this backward failed
    # on an H200 (session 6) with cudaErrorStreamCaptureImplicit (the legacy stream made to wait on the capture)
    # fresh leaves: the eager graphs above keep AccumulateGrad nodes of x and params tied to the default stream
    del out, ref
    x = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in params]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            torch.autograd.grad(F_kan.kan_layer(x, *params, knots, 3).square().sum(), [x])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.autograd.grad(F_kan.kan_layer(x, *params, knots, 3).square().sum(), [x])[0]
    graph.replay()
    torch.testing.assert_close(captured, grads[0], rtol=1e-5, atol=1e-6)
