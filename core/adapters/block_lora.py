"""Block-LoRA (``block_lora``): ``n`` up-projection blocks over one shared down-projection block.

Math and what it implies are in ``core.functional.block_lora``. The update is linear in the
weight, ``dW = scale * (sum_i B_i) A_0``, so it merges exactly and runs every execution strategy
(LoRA's kernels on the factors ``A_0`` and ``sum_i B_i``). ``rank`` is LoRA's ``r``; it must be a
multiple of ``num_blocks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ..functional import block_lora as F_block
from ..functional.layout import LayerGeometry
from ..validate import is_int, require
from .base import DeltaAdapter, LowRankDelta
from .lora import LoRADelta
from .registry import register_adapter

__all__ = ["BlockLoRAOptions", "BlockLoRADelta", "BlockLoRA"]


@dataclass
class BlockLoRAOptions:
    num_blocks: int = 4
    """Number ``n`` of up-projection blocks (arms) sharing the one down-projection block; must divide the rank."""

    def __post_init__(self) -> None:
        require(self, "num_blocks", is_int(self.num_blocks, 1), "an integer >= 1")


class BlockLoRADelta(LoRADelta):
    """``dW = scale * (sum_i B_i) @ A_0``; ``shared_A: [r/n, fan_in]``, ``blocks_B: [n, C_out, r/n]``."""

    param_names = ("shared_A", "blocks_B")

    def __init__(self, geometry: LayerGeometry, rank: int, options: Optional[BlockLoRAOptions] = None, *, layer_name: str = "", dtype=None, device=None):
        LowRankDelta.__init__(self, geometry, rank)  # no lora_A / lora_B parameters: they are built from the blocks
        options = options or BlockLoRAOptions()
        if rank % options.num_blocks:
            raise ValueError(f"block_lora: rank {rank} must be a multiple of BlockLoRAOptions.num_blocks={options.num_blocks}")
        shared_a, blocks_b = F_block.init_block_lora_factors(geometry, rank, options.num_blocks, dtype=dtype, device=device)
        self.shared_A = nn.Parameter(shared_a)
        self.blocks_B = nn.Parameter(blocks_b)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Optional[BlockLoRAOptions] = None) -> int:
        options = options or BlockLoRAOptions()
        return F_block.block_lora_param_count(geometry, rank, options.num_blocks)

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.shared_A, F_block.summed_up_projection(self.blocks_B)


@register_adapter("block_lora")
class BlockLoRA(DeltaAdapter):
    """Block-LoRA ("One Head Eight Arms", Jan 2025)."""

    delta_cls = BlockLoRADelta
    options_cls = BlockLoRAOptions
