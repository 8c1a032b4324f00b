"""SLTrain (``sltrain``): the layer's weight as ``scale * B @ A + S`` with a fixed random sparse support.

Math and the choices the paper leaves open are in ``core.functional.sltrain``. Two modes:

- ``mode="replace"`` (default, pre-training as in the paper): the layer computes with
  ``scale * B @ A + S`` alone; the wrapped layer's dense weight is not used (it stays, frozen, so
  ``remove`` can give the original layer back) and its bias trains with the factors and is saved
  with them (key ``<layer>.base_layer.bias``). ``merge`` writes ``B @ A + S`` into the dense weight;
  ``remove(model, keep_merged=True)`` leaves a plain dense model.
- ``mode="add"``: ``W + scale * B @ A + S`` on a frozen ``W`` (a fine-tuning update); ``B`` and the
  sparse values start at zero.

The support is a non-persistent buffer regenerated from ``seed`` and the layer name, never saved.
:func:`memory_report` gives the bytes the parameterisation needs against the dense weight it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from torch import Tensor, nn

from ..functional import lora as F_lora
from ..functional import sltrain as F_sl
from ..functional.layout import LayerGeometry, channel_view, layer_forward, logical_to_weight
from ..functional.nola import layer_seed
from ..validate import is_int, is_number, require
from .base import AdapterLayer, DeltaAdapter, LowRankDelta
from .registry import register_adapter

__all__ = ["SLTrainOptions", "SLTrainDelta", "SLTrain", "memory_report"]


@dataclass
class SLTrainOptions:
    density: float = 0.03
    """Fraction of the ``C_out x C_in*prod(k)`` entries in the fixed random support of ``S``."""
    mode: Literal["replace", "add"] = "replace"
    """``replace``: the weight is ``B @ A + S`` (pre-training); ``add``: ``W + B @ A + S`` on a frozen ``W``."""
    seed: int = 0
    """Base seed of the support; each layer combines it with a CRC32 of its module name."""

    def __post_init__(self) -> None:
        require(self, "density", is_number(self.density) and 0 < self.density <= 1, "a number in (0, 1]")
        require(self, "mode", self.mode in ("replace", "add"), "'replace' or 'add'")
        require(self, "seed", is_int(self.seed), "an integer")


class SLTrainDelta(LowRankDelta):
    """``scale * B @ A + S``; ``S`` holds ``sparse_values`` at the flat positions of the ``support`` buffer."""

    param_names = ("lora_A", "lora_B", "sparse_values")

    def __init__(self, geometry: LayerGeometry, rank: int, options: Optional[SLTrainOptions] = None, *, layer_name: str = "", dtype=None, device=None):
        super().__init__(geometry, rank)
        options = options or SLTrainOptions()
        nnz = F_sl.support_size(geometry, options.density)
        self.seed = layer_seed(options.seed, layer_name)
        self.register_buffer("support", F_sl.random_support(self.seed, geometry.out_channels * geometry.fan_in, nnz, device=device),
                             persistent=False)
        lora_a, lora_b, values = F_sl.init_sltrain_factors(geometry, rank, nnz, from_scratch=options.mode == "replace", dtype=dtype, device=device)
        self.lora_A = nn.Parameter(lora_a)
        self.lora_B = nn.Parameter(lora_b)
        self.sparse_values = nn.Parameter(values)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Optional[SLTrainOptions] = None) -> int:
        options = options or SLTrainOptions()
        return F_sl.sltrain_param_count(geometry, rank, F_sl.support_size(geometry, options.density))

    def logical_delta(self, scale: float) -> Tensor:
        return F_sl.sltrain_delta(self.lora_A, self.lora_B, self.sparse_values, self.support, self.geometry, scale)

    def bypass(self, layer: nn.Module, x: Tensor, scale: float, **kwargs) -> Optional[Tensor]:
        """``scale * B(A(x))`` plus the layer's op with the dense-scattered ``S`` (no sparse kernels here)."""
        if not F_lora.lora_bypass_supported(self.geometry):
            return None
        g = self.geometry
        sparse = F_sl.sparse_to_dense(self.sparse_values, self.support, g.out_channels, g.fan_in).reshape(g.logical_shape)
        low_rank = F_lora.lora_bypass(layer, x, self.lora_A, self.lora_B, g, scale, **kwargs)
        return low_rank + layer_forward(layer, x, logical_to_weight(sparse, g), None, **kwargs)


@register_adapter("sltrain")
class SLTrain(DeltaAdapter):
    """SLTrain ("a sparse plus low-rank approach for ... pretraining"): low-rank plus fixed-support sparse weight."""

    delta_cls = SLTrainDelta
    options_cls = SLTrainOptions

    def __init__(self, base_layer: nn.Module, config, *, options: Optional[SLTrainOptions] = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        if self.replaces_base and isinstance(base_layer, AdapterLayer):
            raise ValueError(f"sltrain with mode='replace' must wrap the plain layer, but {layer_name or 'the layer'} already carries "
                             f"adapter {base_layer.adapter_name!r}; use mode='add' to stack it")
        if self.replaces_base and config.dropout > 0:
            raise ValueError(f"AdapterConfig.dropout must be 0 for sltrain with mode='replace' (the whole weight is the adapter), got {config.dropout!r}")

    @property
    def replaces_base(self) -> bool:
        return self.options.mode == "replace"

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Factors and sparse values; with ``mode="replace"`` also the wrapped layer's bias (it trains from scratch)."""
        own = super().adapter_parameters()
        if self.replaces_base and getattr(self.base_layer, "bias", None) is not None:
            own.append(("base_layer.bias", self.base_layer.bias))
        return own

    def effective_weight(self) -> Tensor:
        if not self.replaces_base or self.merged or not self.active:
            return super().effective_weight()
        return self.low_rank_weight().to(self.root.weight.dtype)

    def delta_weight(self) -> Tensor:
        if not self.replaces_base:
            return super().delta_weight()
        return self.low_rank_weight() - self.base_weight()

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if not self.replaces_base:
            return super().adapted_forward(x, *args, **kwargs)
        root = self.root
        bias = getattr(root, "bias", None)
        if self._pick_strategy(x) == "weight":
            return layer_forward(root, x, self.effective_weight(), bias, **kwargs)
        out = self.activation_delta(x, **kwargs)
        return out if bias is None else out + channel_view(bias, self.geometry, out)

    def memory(self) -> dict[str, int]:
        """:func:`core.functional.sltrain.sltrain_memory` for this layer in its parameters' dtype, plus the bytes of the
        wrapped layer's dense weight, which this shell keeps (frozen: no gradient, no optimizer state) so that
        ``remove`` can give the original layer back."""
        g = self.geometry
        report = F_sl.sltrain_memory(g, self.rank, self.delta.support.numel(), value_bytes=self.delta.lora_A.element_size(),
                                     index_bytes=self.delta.support.element_size())
        weight = self.root.weight
        return {**report, "wrapped_dense_weight_bytes": weight.numel() * weight.element_size()}


def memory_report(model: nn.Module, adapter_name: Optional[str] = None) -> dict[str, Any]:
    """Per-layer and total bytes of every SLTrain layer of ``model`` against the dense weights they stand for.

    ``ratio`` is SLTrain's training memory for the weights (values, gradients, Adam states, support
    indices) over a dense layer's (values, gradients, Adam states); ``wrapped_dense_weight_bytes`` is what the
    frozen original weights still take beside it in this adapter form.
    """
    from ..inject import adapter_layers  # inject imports the adapters package

    layers = {name: a for name, a in adapter_layers(model, adapter_name, unique=True).items() if isinstance(a, SLTrain)}
    if not layers:
        raise ValueError(f"model has no sltrain adapter{'' if adapter_name is None else f' named {adapter_name!r}'}")
    per_layer = {name: a.memory() for name, a in layers.items()}
    total = {key: sum(row[key] for row in per_layer.values()) for key in next(iter(per_layer.values()))}
    return {"layers": per_layer, "total": total, "ratio": total["sltrain_training_bytes"] / total["dense_training_bytes"]}
