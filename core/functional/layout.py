"""Layer geometry: one logical kernel layout for every layer type an adapter wraps.

Every adapter in this package computes its update ``dW`` in a *logical* layout
``[C_out, C_in_per_group, *kernel]``. This module maps that layout to and from the
stored weight of each layer type and runs the layer's own operation with a replacement
weight, so the adapter math never needs to know whether it sits on a Linear, a 3-D
convolution, a transposed convolution or an embedding table.

Stored layouts:
    Linear            weight [out, in]                  logical [out, in]
    Conv{1,2,3}d      weight [out, in/groups, *k]       logical (same)
    ConvTranspose     weight [in, out, *k]              logical [out, in, *k]  (dims 0/1 swapped)
    Embedding         weight [num_embeddings, dim]      logical [dim, num_embeddings]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LayerGeometry",
    "UnsupportedLayerError",
    "geometry_of",
    "logical_to_weight",
    "weight_to_logical",
    "layer_forward",
    "SUPPORTED_LAYER_TYPES",
]

LayerKind = Literal["linear", "embedding", "conv", "conv_transpose"]

SUPPORTED_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Embedding,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class UnsupportedLayerError(TypeError):
    """The layer type or configuration cannot carry this adapter."""


@dataclass(frozen=True)
class LayerGeometry:
    """Shape facts an adapter needs about the layer it wraps."""

    kind: LayerKind
    out_channels: int
    """Rows of the logical kernel (output features / channels)."""
    in_channels: int
    """Columns of the logical kernel before the kernel axes (input channels per group)."""
    kernel_size: tuple[int, ...] = ()
    groups: int = 1

    @property
    def logical_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel_size) if self.kernel_size else 1

    @property
    def fan_in(self) -> int:
        """Columns of the logical kernel flattened to a matrix: ``C_in_per_group * prod(k)``."""
        return self.in_channels * self.kernel_numel

    @property
    def weight_out_dim(self) -> int:
        """Axis of the *stored* weight that indexes output channels (1 for transposed convolutions and embeddings)."""
        return 1 if self.kind in ("conv_transpose", "embedding") else 0

    @property
    def channel_dim(self) -> int:
        """Channel axis of the layer's activations: last for Linear/Embedding, 1 for (transposed) convolutions."""
        return -1 if self.kind in ("linear", "embedding") else 1

    @property
    def ndim(self) -> int:
        """Number of spatial kernel axes (0 for Linear and Embedding)."""
        return len(self.kernel_size)


def geometry_of(layer: nn.Module) -> LayerGeometry:
    """Describe ``layer``; raise :class:`UnsupportedLayerError` for layers no adapter can wrap."""
    if isinstance(layer, nn.Linear):
        return LayerGeometry("linear", layer.out_features, layer.in_features)
    if isinstance(layer, nn.Embedding):
        return LayerGeometry("embedding", layer.embedding_dim, layer.num_embeddings)
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        if layer.groups != 1:
            raise UnsupportedLayerError(
                f"grouped transposed convolution (groups={layer.groups}) is not supported: its weight "
                f"layout [C_in, C_out/groups, *k] has no per-output-channel rows to adapt"
            )
        return LayerGeometry("conv_transpose", layer.out_channels, layer.in_channels, tuple(layer.kernel_size), 1)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return LayerGeometry(
            "conv", layer.out_channels, layer.in_channels // layer.groups, tuple(layer.kernel_size), layer.groups
        )
    raise UnsupportedLayerError(
        f"{type(layer).__name__} is not an adaptable layer; supported: "
        + ", ".join(t.__name__ for t in SUPPORTED_LAYER_TYPES)
    )


def logical_to_weight(delta: Tensor, geometry: LayerGeometry) -> Tensor:
    """Map a logical ``[out, in, *k]`` tensor to the layer's stored weight layout."""
    if geometry.weight_out_dim == 1:
        return delta.transpose(0, 1)
    return delta


def weight_to_logical(weight: Tensor, geometry: LayerGeometry) -> Tensor:
    """Inverse of :func:`logical_to_weight` (the swap is its own inverse)."""
    return logical_to_weight(weight, geometry)


def _conv_fn(ndim: int, transposed: bool):
    if transposed:
        return (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[ndim - 1]
    return (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]


def layer_forward(
    layer: nn.Module,
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    groups: Optional[int] = None,
    output_size: Optional[list[int]] = None,
) -> Tensor:
    """Run ``layer``'s own operation (stride, padding, dilation, padding mode, ...) with ``weight``.

    ``weight`` is in the stored layout and may have a different number of output channels
    than the layer (the low-rank down-projection reuses the layer's geometry this way).
    ``groups`` overrides the layer's group count (1 for such projections).
    """
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, nn.Embedding):
        out = F.embedding(x, weight, layer.padding_idx, layer.max_norm, layer.norm_type, layer.scale_grad_by_freq, layer.sparse)
        return out if bias is None else out + bias
    g = layer.groups if groups is None else groups
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        ndim = len(layer.kernel_size)
        output_padding = layer.output_padding
        if output_size is not None:
            output_padding = layer._output_padding(
                x, output_size, layer.stride, layer.padding, layer.kernel_size, ndim, layer.dilation
            )
        return _conv_fn(ndim, True)(x, weight, bias, layer.stride, layer.padding, output_padding, g, layer.dilation)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        ndim = len(layer.kernel_size)
        fn = _conv_fn(ndim, False)
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            return fn(x, weight, bias, layer.stride, 0, layer.dilation, g)
        return fn(x, weight, bias, layer.stride, layer.padding, layer.dilation, g)
    raise UnsupportedLayerError(f"{type(layer).__name__} has no functional form here")


def channel_view(vector: Tensor, geometry: LayerGeometry, like: Tensor) -> Tensor:
    """Reshape a per-output-channel vector to broadcast over a layer output ``like``."""
    if geometry.channel_dim == -1:
        return vector
    return vector.view(1, -1, *([1] * (like.dim() - 2)))
