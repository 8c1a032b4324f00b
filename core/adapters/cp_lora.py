"""CP-LoRA adapter (``cp_lora``): rank-R CP decomposition of the kernel update."""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from ..functional import cp as F_cp
from ..functional.layout import LayerGeometry
from .base import DeltaAdapter, LowRankDelta
from .lora import LoRADelta
from .registry import register_adapter

__all__ = ["CPDelta", "CPLoRA"]


class CPDelta(LoRADelta):
    """Factors ``cp_out [C_out, R]`` (zero at start), ``cp_in [C_in, R]``, ``cp_kernel_j [k_j, R]``.

    Seen through :meth:`factors` the update is LoRA with a CP-structured ``A``, so CP-LoRA reuses
    LoRA's one-GEMM weight build and its fused activation path.
    """

    def __init__(self, geometry: LayerGeometry, rank: int, options: Any = None, *, layer_name: str = "", dtype=None, device=None):
        LowRankDelta.__init__(self, geometry, rank)  # no dense lora_A / lora_B parameters
        factors = F_cp.init_cp_factors(geometry, rank, dtype=dtype, device=device)
        names = ["cp_out", "cp_in"] + [f"cp_kernel_{j}" for j in range(geometry.ndim)]
        for name, factor in zip(names, factors):
            self.register_parameter(name, nn.Parameter(factor))
        self.param_names = tuple(names)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return F_cp.cp_param_count(geometry, rank)

    def cp_factors(self) -> list[Tensor]:
        return [getattr(self, name) for name in self.param_names]

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(A, B)`` of the equivalent LoRA update."""
        return F_cp.cp_as_lora_factors(self.cp_factors())

    def weight_build(self) -> tuple[Callable[..., Tensor], tuple[Tensor, ...], dict[str, Any]]:
        """The whole build -- ``A`` from the CP factors, the GEMM, the merge -- as one pure function."""
        return F_cp.cp_add_to_weight, tuple(self.cp_factors()), {"geometry": self.geometry}


@register_adapter("cp_lora")
class CPLoRA(DeltaAdapter):
    """CP-LoRA (Minoccheri et al., arXiv 2508.01772): ``R * (C_out + C_in + sum(k))`` parameters."""

    delta_cls = CPDelta
