"""NOBLE (``noble``): a permanent CosNet low-rank branch, ``y = base(x) + scale * U(cosnet(D(x)))``.

Math and the choices the paper leaves open are in ``core.functional.noble``. NOBLE is meant for
training from scratch: with ``train_base=True`` (the default) the wrapped layer's own weight and
bias train with the branch, count as the adapter's parameters and are written by ``save`` (keys
``<layer>.base_layer.weight``), so a saved NOBLE model is complete. ``train_base=False`` gives the
branch alone on a frozen layer (the adapter view). The branch is nonlinear in the input: no
``delta_weight``, ``merge`` refuses (``mergeable = False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from ..functional import lora as F_lora
from ..functional import noble as F_noble
from ..functional.layout import LayerGeometry
from ..validate import require
from .base import AdapterLayer
from .registry import register_adapter

__all__ = ["NOBLEOptions", "NOBLE"]


@dataclass
class NOBLEOptions:
    train_base: bool = True
    """Train the wrapped layer's own weight and bias with the branch (training from scratch) and save them with it."""

    def __post_init__(self) -> None:
        require(self, "train_base", isinstance(self.train_base, bool), "True or False")


@register_adapter("noble")
class NOBLE(AdapterLayer):
    """NOBLE branch with the CosNet activation; ``U`` starts at zero so the wrapped layer's output is unchanged at first."""

    mergeable = False
    options_cls = NOBLEOptions
    strategies = ("auto", "activation")  # nonlinear in the input: no weight-space path

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        if geometry.groups != 1:
            return f"noble's down-projection needs an ungrouped layer, got groups={geometry.groups}"
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        """The branch's parameters (with ``train_base`` the wrapped layer's own weight and bias come on top)."""
        return F_noble.noble_branch_param_count(geometry, rank)

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[NOBLEOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        if self.options.train_base and isinstance(base_layer, AdapterLayer):
            raise ValueError(f"noble with train_base=True must wrap the plain layer, but {layer_name or 'the layer'} already carries "
                             f"adapter {base_layer.adapter_name!r}; apply noble first or pass train_base=False")
        kw = self._factory_kwargs()
        down, up = F_lora.init_lora_factors(self.geometry, self.rank, **kw)
        self.noble_down = nn.Parameter(down)
        self.noble_up = nn.Parameter(up)
        for name, value in F_noble.init_cosnet(self.rank, **kw).items():
            setattr(self, f"cosnet_{name}", nn.Parameter(value))

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The branch, and with ``train_base`` the wrapped layer's own weight and bias (``base_layer.<name>``)."""
        own = super().adapter_parameters()
        if self.options.train_base:
            own += [(f"base_layer.{n}", p) for n, p in self.base_layer.named_parameters(recurse=False)]
        return own

    def hidden(self, x: Tensor, **kwargs) -> Tensor:
        """``cosnet(D(x))``: the ``r`` bottleneck features (channels on dim 1 for a conv)."""
        h = F_lora.low_rank_down(self.root, x, self.noble_down, self.geometry, **kwargs)
        return F_noble.cosnet(h, self.cosnet_freq1, self.cosnet_phase1, self.cosnet_mix, self.cosnet_freq2, self.cosnet_phase2,
                              channel_dim=self.geometry.channel_dim)

    def branch(self, x: Tensor, **kwargs) -> Tensor:
        """``scale * U(cosnet(D(x)))``."""
        return F_lora.low_rank_up(self.hidden(x, **kwargs), self.noble_up, self.geometry) * self.scale

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        return base_out + self.branch(self.dropout(x), **kwargs).to(base_out.dtype)


