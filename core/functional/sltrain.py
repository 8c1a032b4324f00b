"""SLTrain: a weight parameterised as low-rank plus sparse with a fixed random support.

"SLTrain: a sparse plus low-rank approach for parameter and memory efficient pretraining"
(2024): ``W = scale * B @ A + S`` where ``S`` is zero outside a support drawn
uniformly at random once and kept fixed; only ``B``, ``A`` and the values of ``S`` on the support
train. It is meant for pre-training: the dense ``W`` is never a parameter.

Choices the abstract leaves open (stated here):
- the support is ``nnz = max(1, round(density * C_out * C_in * prod(k)))`` distinct positions of the
  logical ``[C_out, C_in * prod(k)]`` matrix, drawn by ``torch.randperm`` on a CPU generator seeded
  from the option ``seed`` and the layer's name (so it is the same on every device, is never saved
  and comes back with ``load``).
- initialisation for pre-training (``mode="replace"``): ``A`` and ``B`` Kaiming-uniform (bounds
  ``1/sqrt(fan_in)`` and ``1/sqrt(r)``), the sparse values drawn from ``nn.Linear``'s own init
  distribution ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. For ``mode="add"`` (the same parameterisation
  as an update on a frozen weight) ``B`` and the sparse values start at zero so ``dW = 0``.
- the forward pass forms the dense ``scale * B @ A + S`` (a scatter of the values into zeros) and
  runs the layer's own op once, as the paper's reference implementation of a linear layer does; the
  savings are in parameters, gradients and optimizer state, which :func:`sltrain_memory` reports.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .layout import LayerGeometry
from .lora import addmm_scaled

__all__ = ["support_size", "random_support", "init_sltrain_factors", "sparse_to_dense", "sltrain_delta", "sltrain_param_count",
           "sltrain_memory"]


def support_size(geometry: LayerGeometry, density: float) -> int:
    """Number of trainable sparse entries: ``max(1, round(density * C_out * C_in * prod(k)))``."""
    return max(1, round(density * geometry.out_channels * geometry.fan_in))


def random_support(seed: int, numel: int, nnz: int, *, device=None) -> Tensor:
    """Sorted flat indices of ``nnz`` distinct positions out of ``numel``, a pure function of ``seed`` (CPU generator)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    return torch.randperm(numel, generator=generator)[:nnz].sort().values.to(device)


def init_sltrain_factors(geometry: LayerGeometry, rank: int, nnz: int, *, from_scratch: bool, dtype=None, device=None,
                         generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
    """``A [r, fan_in]``, ``B [C_out, r]`` and the sparse values ``[nnz]`` (see the module docstring for the two inits)."""
    bound_a = 1.0 / math.sqrt(geometry.fan_in)
    lora_a = torch.empty(rank, geometry.fan_in, dtype=dtype, device=device).uniform_(-bound_a, bound_a, generator=generator)
    if not from_scratch:
        return lora_a, torch.zeros(geometry.out_channels, rank, dtype=dtype, device=device), torch.zeros(nnz, dtype=dtype, device=device)
    bound_b = 1.0 / math.sqrt(rank)
    lora_b = torch.empty(geometry.out_channels, rank, dtype=dtype, device=device).uniform_(-bound_b, bound_b, generator=generator)
    values = torch.empty(nnz, dtype=dtype, device=device).uniform_(-bound_a, bound_a, generator=generator)
    return lora_a, lora_b, values


def sparse_to_dense(values: Tensor, support: Tensor, rows: int, cols: int) -> Tensor:
    """``S [rows, cols]``: ``values`` scattered at the flat positions ``support``, zeros elsewhere (differentiable in ``values``)."""
    return values.new_zeros(rows * cols).scatter(0, support, values).view(rows, cols)


def sltrain_delta(lora_a: Tensor, lora_b: Tensor, values: Tensor, support: Tensor, geometry: LayerGeometry, scale: float) -> Tensor:
    """Logical ``[C_out, C_in, *k]`` weight ``scale * B @ A + S``."""
    sparse = sparse_to_dense(values.to(lora_a.dtype), support, geometry.out_channels, geometry.fan_in)
    return addmm_scaled(sparse, lora_b, lora_a, scale).reshape(geometry.logical_shape)


def sltrain_param_count(geometry: LayerGeometry, rank: int, nnz: int) -> int:
    """``r * (C_out + C_in * prod(k)) + nnz``."""
    return rank * (geometry.out_channels + geometry.fan_in) + nnz


def sltrain_memory(geometry: LayerGeometry, rank: int, nnz: int, *, value_bytes: int = 4, index_bytes: int = 8,
                   optimizer_states: int = 2) -> dict[str, int]:
    """Bytes one layer needs for its weight: the dense weight it replaces vs SLTrain's factors, values and support.

    ``optimizer_states`` is the number of state tensors per trainable value (2 for Adam). The gradient of a
    trainable tensor costs as much as the tensor. Activations are not counted (both forms run the same op).
    """
    dense = geometry.out_channels * geometry.fan_in
    trainable = sltrain_param_count(geometry, rank, nnz)
    per_value = value_bytes * (2 + optimizer_states)  # the value, its gradient and the optimizer states
    return {
        "dense_weight_params": dense,
        "sltrain_params": trainable,
        "dense_training_bytes": dense * per_value,
        "sltrain_training_bytes": trainable * per_value + nnz * index_bytes,
        "support_index_bytes": nnz * index_bytes,
    }
