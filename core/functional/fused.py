"""Fused LoRA for a frozen layer: the frozen op and the low-rank path in as few large ops as possible.

Linear: one GEMM over the merged weight ``W + scale * B A`` (the thin merge is an addmm of size
``C_out x C_in``, much less than the ``tokens x C_out`` add of an unfused low-rank path). Convolutions:
``y = op(x, W) + bias + scale * B(op(x, A))`` as one op over the concatenated kernel ``[W; A]`` (output
channels ``C_out + r``) followed by one 1x1 convolution that adds ``scale * B h`` to the base part
(``h`` is needed for B's gradient, and the concatenated op gives it at the cost of r more output channels).
The custom backwards compute only what an adapter needs: the input gradient (through the merged
weight, or through ``[W; A]``) and the gradients of the two thin factors, never the frozen weight's
gradient (which would cost as much as full fine-tuning). They return no gradient
for ``W`` or ``bias``, so the adapters call them only while both are frozen
(``DeltaAdapter._fusable``); a trainable base parameter sends them down the unfused path.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .lora import addmm_scaled

__all__ = ["fused_lora_linear", "fused_lora_conv", "lora_fused_forward"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in on ``x``'s device (``x.dtype`` without autocast)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _no_autocast(x: Tensor):
    return torch.autocast(x.device.type, enabled=False)


def _scaled_mm(m1: Tensor, m2: Tensor, scale, like: Tensor) -> Tensor:
    """``scale * m1 @ m2`` as one GEMM (addmm with ``beta=0`` ignores its input, here a 1x1 view of ``like``)."""
    return addmm_scaled(like[:1, :1], m1, m2, scale, beta=0)


class _FusedLoRALinear(torch.autograd.Function):
    """Linear: the forward runs one GEMM over the merged weight ``W + scale * B A`` (built by one thin addmm),
    so the low-rank path adds no ``[tokens, C_out]``-sized op; the backward reuses that merged weight for the
    input gradient and forms the factors' gradients from ``h = x A^T`` and ``g B`` (thin GEMMs only). Under autocast
    the merged weight is held in the compute dtype, as the weight strategy's is after the layer casts it: an update
    smaller than that dtype's rounding step of ``W`` reaches the factors' gradients before it shows in the output."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor, scale: float) -> Tensor:
        dtype = _compute_dtype(x)
        with _no_autocast(x):
            return _FusedLoRALinear._forward(ctx, x, weight, bias, lora_a, lora_b, scale, dtype)

    @staticmethod
    def _forward(ctx, x, weight, bias, lora_a, lora_b, scale, dtype):
        out_features = weight.shape[0]
        x2d = x.reshape(-1, x.shape[-1]).to(dtype)
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        merged = addmm_scaled(weight.to(dtype), b, a, scale)
        out = x2d @ merged.t() if bias is None else torch.addmm(bias.to(dtype), x2d, merged.t())
        ctx.save_for_backward(x2d, merged, a, b)
        ctx.scale = scale
        ctx.shapes = (x.shape, lora_a.dtype, lora_b.dtype, x.dtype)
        return out.view(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        with _no_autocast(grad_out):
            return _FusedLoRALinear._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        x2d, merged, a, b = ctx.saved_tensors
        x_shape, a_dtype, b_dtype, x_dtype = ctx.shapes
        g = grad_out.reshape(-1, merged.shape[0]).to(merged.dtype)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ merged).view(x_shape).to(x_dtype)
        if ctx.needs_input_grad[3]:
            grad_a = _scaled_mm((g @ b).t(), x2d, ctx.scale, merged).to(a_dtype)
        if ctx.needs_input_grad[4]:
            grad_b = _scaled_mm(g.t(), x2d @ a.t(), ctx.scale, merged).to(b_dtype)
        return grad_x, None, None, grad_a, grad_b, None


def fused_lora_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_a: Tensor, lora_b: Tensor, scale: float) -> Tensor:
    """``F.linear(x, W, bias) + scale * F.linear(F.linear(x, A), B)`` with a frozen ``W``/``bias``."""
    return _FusedLoRALinear.apply(x, weight, bias, lora_a, lora_b, scale)


class _FusedLoRAConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, down, lora_b, scale, stride, padding, dilation, transposed, output_padding):
        dtype = _compute_dtype(x)
        with _no_autocast(x):
            return _FusedLoRAConv._forward(ctx, x.to(dtype), weight, bias, down, lora_b, scale, stride, padding, dilation, transposed, output_padding, dtype)

    @staticmethod
    def _forward(ctx, x, weight, bias, down, lora_b, scale, stride, padding, dilation, transposed, output_padding, dtype):
        cat_dim = 1 if transposed else 0
        out_channels, rank = weight.shape[cat_dim], down.shape[cat_dim]
        w_cat = torch.cat([weight.to(dtype), down.to(dtype)], cat_dim)
        b_cat = None if bias is None else torch.cat([bias.to(dtype), bias.new_zeros(rank, dtype=dtype)])
        yh = torch.ops.aten.convolution(x, w_cat, b_cat, stride, padding, dilation, transposed, output_padding, 1)
        y, h = yh[:, :out_channels], yh[:, out_channels:]
        ndim = x.dim() - 2
        up = lora_b.to(dtype).mul(scale).view(out_channels, rank, *([1] * ndim))
        out = y + torch.ops.aten.convolution(h, up, None, [1] * ndim, [0] * ndim, [1] * ndim, False, [0] * ndim, 1)
        ctx.save_for_backward(x, w_cat, h, up)
        ctx.conf = (stride, padding, dilation, transposed, output_padding, out_channels, cat_dim)
        ctx.scale = scale
        ctx.dtypes = (down.dtype, lora_b.dtype, down.shape, lora_b.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with _no_autocast(grad_out):
            return _FusedLoRAConv._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        x, w_cat, h, up = ctx.saved_tensors
        stride, padding, dilation, transposed, output_padding, out_channels, cat_dim = ctx.conf
        a_dtype, b_dtype, a_shape, b_shape = ctx.dtypes
        ndim = x.dim() - 2
        ones, zeros = [1] * ndim, [0] * ndim
        g = grad_out.to(w_cat.dtype)
        # 1x1 up-projection: gradients wrt h and wrt the scaled up weight
        g_h, g_up, _ = torch.ops.aten.convolution_backward(g, h, up, None, ones, zeros, ones, False, zeros, 1, [True, True, False])
        grad_x = grad_down = grad_b = None
        conf = (stride, padding, dilation, transposed, output_padding, 1)
        if ctx.needs_input_grad[0]:  # input gradient through [W; A] in one call
            grad_x = torch.ops.aten.convolution_backward(torch.cat([g, g_h], 1), x, w_cat, None, *conf, [True, False, False])[0]
        if ctx.needs_input_grad[3]:  # weight gradient of the r thin channels only
            down = w_cat.narrow(cat_dim, out_channels, w_cat.shape[cat_dim] - out_channels)
            grad_down = torch.ops.aten.convolution_backward(g_h, x, down, None, *conf, [False, True, False])[1].to(a_dtype)
        if ctx.needs_input_grad[4]:
            grad_b = (g_up.flatten(1) * ctx.scale).reshape(b_shape).to(b_dtype)
        return grad_x, None, None, grad_down, grad_b, None, None, None, None, None, None


def fused_lora_conv(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], down: Tensor, lora_b: Tensor, scale: float,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], transposed: bool, output_padding: Sequence[int],
) -> Tensor:
    """Frozen (transposed) convolution plus ``scale * B(conv(x, A))``; ``down`` is ``A`` in the stored layout."""
    return _FusedLoRAConv.apply(x, weight, bias, down, lora_b, scale, list(stride), list(padding), list(dilation), transposed, list(output_padding))


def lora_fused_forward(layer, x: Tensor, lora_a: Tensor, lora_b: Tensor, geometry, scale: float, bias: Optional[Tensor], output_size=None) -> Optional[Tensor]:
    """``op(x, W) + bias + scale * B(A(x))`` through the fused kernels, or ``None`` where they do not apply
    (embeddings, grouped convolutions, string padding, non-zero padding modes)."""
    kind = geometry.kind
    if kind == "linear":
        return fused_lora_linear(x, layer.weight, bias, lora_a, lora_b, scale)
    if kind not in ("conv", "conv_transpose") or geometry.groups != 1 or isinstance(layer.padding, str):
        return None
    if getattr(layer, "padding_mode", "zeros") != "zeros" or x.dim() != geometry.ndim + 2:
        return None
    down = lora_a.reshape(lora_a.shape[0], geometry.in_channels, *geometry.kernel_size)
    if kind == "conv_transpose":
        down = down.transpose(0, 1)
        output_padding = layer.output_padding
        if output_size is not None:
            output_padding = layer._output_padding(x, output_size, layer.stride, layer.padding, layer.kernel_size, geometry.ndim, layer.dilation)
        return fused_lora_conv(x, layer.weight, bias, down, lora_b, scale, layer.stride, layer.padding, layer.dilation, True, output_padding)
    return fused_lora_conv(x, layer.weight, bias, down, lora_b, scale, layer.stride, layer.padding, layer.dilation, False, [0] * geometry.ndim)
