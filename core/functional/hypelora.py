"""HypeLoRA: one hyper-network, shared across layers, generates every layer's LoRA factors ``A`` and ``B``.

"HypeLoRA: Hyper-Network-Generated LoRA Adapters for Calibrated Language Model Fine-Tuning":
instead of free ``A_l``, ``B_l`` per layer, a shared hyper-network maps a learned layer
embedding ``z_l`` to the layer's factors, which couples the layers' updates; ``dW_l = scale * B_l A_l``.

How the sharing crosses layers of different shapes (the paper adapts equal-shaped RoBERTa layers;
this is the choice made here, after the chunked weight generation of Ha et al.'s HyperNetworks):
the hyper-network never emits a whole factor. It emits fixed-size chunks: an ``A`` chunk is
``chunk_size`` columns of ``A`` (``[r, c]``), a ``B`` chunk ``chunk_size`` rows of ``B`` (``[c, r]``).
Chunk ``j`` of layer ``l`` is generated from ``[z_l, code(j)]`` where ``code(j)`` is a fixed sinusoidal
code of the chunk index; a layer asks for ``ceil(fan_in / c)`` ``A`` chunks and ``ceil(C_out / c)`` ``B``
chunks and keeps the first ``fan_in`` columns / ``C_out`` rows. So every layer of any shape uses the same
hyper-network weights; only ``z_l`` (``embed_dim`` numbers) is per layer. The rank ``r`` is the same for
every layer of one adapter.

The network: ``h = tanh(W_1 [z; code] + b_1)``, ``A`` chunk ``= (W_A h + b_A) / sqrt(fan_in)``, ``B`` chunk
``= W_B h + b_B``. The ``1/sqrt(fan_in)`` keeps ``A x`` at the same scale on wide and narrow layers.
Initialisation: ``W_1``, ``W_A`` Kaiming-uniform (``nn.Linear``'s), biases zero, ``W_B`` and ``b_B`` zero
(so every ``B_l = 0`` and the model starts unchanged, as LoRA does), ``z_l ~ N(0, 1)``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["chunk_codes", "init_hypernetwork", "generate_chunks", "assemble_a", "assemble_b", "hypernetwork_param_count",
           "num_chunks"]


def num_chunks(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def chunk_codes(count: int, code_dim: int, *, dtype=None, device=None) -> Tensor:
    """``[count, code_dim]`` sinusoidal codes of the chunk indices ``0..count-1`` (periods 2*pi up to 2*pi*10^4)."""
    index = torch.arange(count, dtype=torch.float64).unsqueeze(1)
    half = (code_dim + 1) // 2
    freqs = 10_000.0 ** (-torch.arange(half, dtype=torch.float64) / max(half, 1))
    angles = index * freqs
    codes = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :code_dim]
    return codes.to(dtype=dtype or torch.float32, device=device)


def init_hypernetwork(embed_dim: int, code_dim: int, hidden_dim: int, chunk_size: int, rank: int, *, dtype=None, device=None,
                      generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """Weights ``w1 [h, e + p]``, ``b1 [h]``, ``wa [r * c, h]``, ``ba``, ``wb [c * r, h]``, ``bb`` (``wb``, ``bb`` zero)."""
    def kaiming(rows: int, cols: int) -> Tensor:
        bound = 1.0 / math.sqrt(cols)
        return torch.empty(rows, cols, dtype=dtype, device=device).uniform_(-bound, bound, generator=generator)

    out = rank * chunk_size
    return {
        "w1": kaiming(hidden_dim, embed_dim + code_dim),
        "b1": torch.zeros(hidden_dim, dtype=dtype, device=device),
        "wa": kaiming(out, hidden_dim),
        "ba": torch.zeros(out, dtype=dtype, device=device),
        "wb": torch.zeros(out, hidden_dim, dtype=dtype, device=device),
        "bb": torch.zeros(out, dtype=dtype, device=device),
    }


def generate_chunks(embedding: Tensor, codes: Tensor, w1: Tensor, b1: Tensor, w_head: Tensor, b_head: Tensor) -> Tensor:
    """``[n, r * c]``: one head's chunks for the ``n`` chunk codes of one layer with embedding ``[e]``."""
    inputs = torch.cat([embedding.unsqueeze(0).expand(codes.shape[0], -1), codes.to(embedding.dtype)], dim=1)
    return F.linear(torch.tanh(F.linear(inputs, w1, b1)), w_head, b_head)


def assemble_a(chunks: Tensor, rank: int, fan_in: int) -> Tensor:
    """``A [r, fan_in]`` from ``[n, r * c]`` chunks (chunk ``j`` is columns ``j*c .. j*c+c-1``), scaled by ``1/sqrt(fan_in)``."""
    n = chunks.shape[0]
    a = chunks.view(n, rank, -1).permute(1, 0, 2).reshape(rank, -1)[:, :fan_in]
    return a / math.sqrt(fan_in)


def assemble_b(chunks: Tensor, rank: int, out_channels: int) -> Tensor:
    """``B [C_out, r]`` from ``[n, c * r]`` chunks (chunk ``j`` is rows ``j*c .. j*c+c-1``)."""
    return chunks.view(-1, rank)[:out_channels]


def hypernetwork_param_count(embed_dim: int, code_dim: int, hidden_dim: int, chunk_size: int, rank: int) -> int:
    """The shared network: ``h * (e + p + 1) + 2 * r * c * (h + 1)``."""
    return hidden_dim * (embed_dim + code_dim + 1) + 2 * rank * chunk_size * (hidden_dim + 1)
