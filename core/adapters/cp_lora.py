"""CP-LoRA adapter (``cp_lora``): rank-R CP decomposition of the kernel update."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..functional import cp as F_cp
from ..functional.layout import LayerGeometry
from .base import DeltaAdapter, LowRankDelta
from .registry import register_adapter

__all__ = ["CPDelta", "CPLoRA"]


class CPDelta(LowRankDelta):
    """Factors ``cp_out [C_out, R]`` (zero at start), ``cp_in [C_in, R]``, ``cp_kernel_j [k_j, R]``."""

    def __init__(self, geometry: LayerGeometry, rank: int, options: Any = None, *, layer_name: str = "", dtype=None, device=None):
        super().__init__(geometry, rank)
        factors = F_cp.init_cp_factors(geometry, rank, dtype=dtype, device=device)
        names = ["cp_out", "cp_in"] + [f"cp_kernel_{j}" for j in range(geometry.ndim)]
        for name, factor in zip(names, factors):
            self.register_parameter(name, nn.Parameter(factor))
        self.param_names = tuple(names)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return F_cp.cp_param_count(geometry, rank)

    def factors(self) -> list[Tensor]:
        return [getattr(self, name) for name in self.param_names]

    def logical_delta(self, scale: float) -> Tensor:
        return F_cp.cp_delta(self.factors(), self.geometry, scale)


@register_adapter("cp_lora")
class CPLoRA(DeltaAdapter):
    """CP-LoRA (Minoccheri et al., arXiv 2508.01772): ``R * (C_out + C_in + sum(k))`` parameters."""

    delta_cls = CPDelta
