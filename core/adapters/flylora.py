"""FlyLoRA (``flylora``): frozen sparse random router ``A``, rank-wise top-k, trainable ``B`` only.

Math and the choices the paper leaves open are in ``core.functional.flylora``. ``A`` is a
non-persistent buffer (frozen, not a parameter, regenerated from ``seed`` and the layer name on
``load``); ``B`` starts at zero. The top-k selection depends on the input, so the update is not a
fixed ``dW``: ``merge`` refuses (``mergeable = False``) and the layer runs in activation space.
Linear, ungrouped Conv1d/2d/3d and ConvTranspose1d/2d/3d; an Embedding's input is an index, which
has nothing to route, so it is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from ..functional import flylora as F_fly
from ..functional import lora as F_lora
from ..functional.layout import LayerGeometry
from ..functional.nola import layer_seed
from ..validate import is_int, is_number, require
from .base import AdapterLayer
from .registry import register_adapter

__all__ = ["FlyLoRAOptions", "FlyLoRA"]


@dataclass
class FlyLoRAOptions:
    top_k: Optional[int] = None
    """Experts (rank-one pieces) active per token; ``None`` means ``max(1, rank // 4)``."""
    density: float = 0.125
    """Fraction of each router row that is nonzero (the fly's Kenyon cells sample about 7 of 50 inputs)."""
    seed: int = 0
    """Base seed of the router; each layer combines it with a CRC32 of its module name."""

    def __post_init__(self) -> None:
        require(self, "top_k", self.top_k is None or is_int(self.top_k, 1), "None or an integer >= 1")
        require(self, "density", is_number(self.density) and 0 < self.density <= 1, "a number in (0, 1]")
        require(self, "seed", is_int(self.seed), "an integer")

    def active(self, rank: int) -> int:
        return self.top_k if self.top_k is not None else max(1, rank // 4)


@register_adapter("flylora")
class FlyLoRA(AdapterLayer):
    """FlyLoRA ("Implicit Rank-Wise Mixture-of-Experts"): ``y = base(x) + scale * B topk(A x)`` with ``A`` frozen, sparse and random."""

    mergeable = False
    options_cls = FlyLoRAOptions
    strategies = ("auto", "activation")  # input-dependent expert choice: no weight-space path

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        if geometry.kind == "embedding":
            return "flylora routes a dense input through A; an embedding's input is an index"
        if geometry.groups != 1:
            return f"flylora's router needs an ungrouped layer, got groups={geometry.groups}"
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return F_fly.flylora_param_count(geometry, rank)

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[FlyLoRAOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        self.top_k = self.options.active(self.rank)
        if self.top_k > self.rank:
            raise ValueError(f"FlyLoRAOptions.top_k must be at most the rank {self.rank}, got {self.options.top_k!r}")
        kw = self._factory_kwargs()
        g = self.geometry
        self.seed = layer_seed(self.options.seed, layer_name)
        router = F_fly.sparse_router(self.seed, self.rank, g.fan_in, F_fly.row_nonzeros(g.fan_in, self.options.density), **kw)
        self.register_buffer("router", router, persistent=False)
        self.fly_B = nn.Parameter(F_lora.init_lora_factors(g, self.rank, **kw)[1])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", top_k={self.top_k}, density={self.options.density:g}"

    def routed(self, x: Tensor, **kwargs) -> Tensor:
        """``A x`` with all but the top-k entries per token zeroed (channels on dim 1 for a conv)."""
        h = F_lora.low_rank_down(self.root, x, self.router.to(x.dtype), self.geometry, **kwargs)
        return F_fly.topk_mask(h, self.top_k, channel_dim=self.geometry.channel_dim)

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        out = F_lora.low_rank_up(self.routed(self.dropout(x), **kwargs), self.fly_B, self.geometry) * self.scale
        return base_out + out.to(base_out.dtype)
