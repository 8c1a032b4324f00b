"""NOLA adapter (``nola``): LoRA factors mixed from seeded random bases; only coefficients train."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ..functional import nola as F_nola
from ..functional.layout import LayerGeometry
from ..validate import is_int, require, require_ints
from .base import DeltaAdapter, LowRankDelta
from .lora import LoRADelta
from .registry import register_adapter

__all__ = ["NOLAOptions", "NOLADelta", "NOLA"]


@dataclass
class NOLAOptions:
    num_basis_a: int = 64
    """Number of random bases mixed into ``A``."""
    num_basis_b: int = 64
    """Number of random bases mixed into ``B``."""
    seed: int = 0
    """Base seed; each layer's bases use ``seed`` combined with a CRC32 of its module name."""

    def __post_init__(self) -> None:
        require_ints(self, "num_basis_a", "num_basis_b", minimum=1, expected="a positive integer")
        require(self, "seed", is_int(self.seed), "an integer")


layer_seed = F_nola.layer_seed  # kept importable from here


class NOLADelta(LoRADelta):
    """``A = sum_i coeff_a[i] * bases_a[i]``, ``B = sum_j coeff_b[j] * bases_b[j]``; bases are non-persistent buffers."""

    param_names = ("coeff_a", "coeff_b")

    def __init__(self, geometry: LayerGeometry, rank: int, options: Optional[NOLAOptions] = None, *, layer_name: str = "", dtype=None, device=None):
        LowRankDelta.__init__(self, geometry, rank)  # no lora_A / lora_B parameters: they are mixtures
        options = options or NOLAOptions()
        self.seed = F_nola.layer_seed(options.seed, layer_name)
        bases_a, bases_b = F_nola.init_nola_bases(geometry, rank, self.seed, options.num_basis_a, options.num_basis_b, dtype=dtype, device=device)
        self.register_buffer("bases_a", bases_a, persistent=False)
        self.register_buffer("bases_b", bases_b, persistent=False)
        coeff_a, coeff_b = F_nola.init_nola_coefficients(options.num_basis_a, options.num_basis_b, dtype=dtype, device=device)
        self.coeff_a = nn.Parameter(coeff_a)
        self.coeff_b = nn.Parameter(coeff_b)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Optional[NOLAOptions] = None) -> int:
        options = options or NOLAOptions()
        return F_nola.nola_param_count(options.num_basis_a, options.num_basis_b)
    def factors(self) -> tuple[Tensor, Tensor]:
        return F_nola.nola_mix(self.coeff_a, self.bases_a), F_nola.nola_mix(self.coeff_b, self.bases_b)



@register_adapter("nola")
class NOLA(DeltaAdapter):
    """NOLA (Koohpayegani et al., arXiv 2310.02556)."""

    delta_cls = NOLADelta
    options_cls = NOLAOptions
