"""Block-LoRA: LoRA's factors cut into blocks that all share one down-projection block.

"One Head Eight Arms: Block Matrix based Low Rank Adaptation for CLIP-based Few-Shot Learning"
(Jan 2025): LoRA's ``dW = B A`` is split into ``n`` blocks, ``B = [B_1 ... B_n]`` (``C_out x r/n`` each) and
``A = [A_1; ...; A_n]`` (``r/n x fan_in`` each), and every ``A_i`` is the same shared block ``A_0``
(the one head; the ``B_i`` are the arms). Then ``dW = sum_i B_i A_0 = (sum_i B_i) A_0``: the ``n``
multiplications become one matrix addition and one product of rank ``r/n``.

What follows from that (stated, not hidden): ``dW`` has rank at most ``r/n``, and every ``B_i`` gets
the same gradient, so the ``B_i`` differ only by their initial values; with LoRA's zero init they
stay equal and ``sum_i B_i`` moves ``n`` times as far per plain-SGD step as one block would. The
parameter count is ``C_out * r + (r/n) * fan_in``. Choices left open: ``A_0`` Kaiming-uniform like
LoRA's ``A``, every ``B_i`` zero.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .layout import LayerGeometry

__all__ = ["init_block_lora_factors", "summed_up_projection", "block_lora_param_count"]


def init_block_lora_factors(geometry: LayerGeometry, rank: int, num_blocks: int, *, dtype=None, device=None,
                            generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Shared ``A_0 [r/n, fan_in]`` (Kaiming-uniform) and the stacked arms ``B [n, C_out, r/n]`` (zero)."""
    block = rank // num_blocks
    bound = 1.0 / math.sqrt(geometry.fan_in)
    shared_a = torch.empty(block, geometry.fan_in, dtype=dtype, device=device).uniform_(-bound, bound, generator=generator)
    blocks_b = torch.zeros(num_blocks, geometry.out_channels, block, dtype=dtype, device=device)
    return shared_a, blocks_b


def summed_up_projection(blocks_b: Tensor) -> Tensor:
    """``sum_i B_i`` (``[C_out, r/n]``): the matrix addition that replaces ``n`` block products."""
    return blocks_b.sum(dim=0)


def block_lora_param_count(geometry: LayerGeometry, rank: int, num_blocks: int) -> int:
    """``C_out * r + (r/n) * C_in * prod(k)``."""
    return geometry.out_channels * rank + (rank // num_blocks) * geometry.fan_in
