"""Factorised layers that replace a trained Linear or Conv{1,2,3}d; math in ``core.functional.factorize``.

* :class:`LowRankLayer` (``format="matrix"``): ``down`` is the original layer's op (same kernel,
  stride, padding, dilation, padding mode) with ``rank`` outputs and no bias; ``up`` is a Linear or
  a 1x1 convolution to the original outputs, with the original bias. Its ``active_rank`` lets
  ordered-rank training (Maestro) run only the leading ranks; :meth:`LowRankLayer.truncate` cuts them.
* :class:`TuckerConv` (``format="tucker"``): 1x1 conv ``C_in -> r_in``, the original conv
  ``r_in -> r_out``, 1x1 conv ``r_out -> C_out``.
* :class:`CPConv` (``format="cp"``): 1x1 conv ``C_in -> R``, one depthwise conv per kernel axis
  (each with that axis's stride, padding and dilation), 1x1 conv ``R -> C_out``.

Each class builds an empty shell of the right shapes from the dense layer (``from_dense``; used
to rebuild a saved model) and copies factors in (``load_factors``). ``spec()`` is the JSON record
that rebuilds it.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..functional import factorize as F_fact
from ..functional.layout import layer_forward

__all__ = ["LowRankLayer", "TuckerConv", "CPConv", "FactorizedLayer", "FACTORIZED_TYPES", "DENSE_TYPES", "CONV_TYPES", "rebuild"]

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
DENSE_TYPES = (nn.Linear, *CONV_TYPES)


def _conv_cls(ndim: int) -> type[nn.Module]:
    return CONV_TYPES[ndim - 1]


def _factory(layer: nn.Module) -> dict[str, Any]:
    return {"dtype": layer.weight.dtype, "device": layer.weight.device}


def _pointwise(ndim: int, in_channels: int, out_channels: int, bias: bool, **factory) -> nn.Module:
    return _conv_cls(ndim)(in_channels, out_channels, 1, bias=bias, **factory)


def _dense_record(layer: nn.Module) -> dict[str, Any]:
    return {"type": type(layer).__name__, "weight_shape": list(layer.weight.shape)}


class LowRankLayer(nn.Module):
    """``y = up(down(x))`` with ``down`` of ``rank`` outputs; Linear or Conv{1,2,3}d (groups 1)."""

    format = "matrix"

    def __init__(self, down: nn.Module, up: nn.Module, dense: Optional[dict] = None):
        super().__init__()
        self.down = down
        self.up = up
        self.dense = dense or {}
        """Type and weight shape of the layer this one replaced (for save/load checks)."""
        self.active_rank: int = self.rank
        """How many leading ranks the forward uses (ordered-rank training lowers it; the default is all)."""

    @property
    def rank(self) -> int:
        return self.down.weight.shape[0]

    @classmethod
    def from_dense(cls, layer: nn.Module, rank: int) -> "LowRankLayer":
        """Shell with uninitialised factors, shaped after ``layer``."""
        factory = _factory(layer)
        has_bias = layer.bias is not None
        if isinstance(layer, nn.Linear):
            down = nn.Linear(layer.in_features, rank, bias=False, **factory)
            up = nn.Linear(rank, layer.out_features, bias=has_bias, **factory)
        elif isinstance(layer, CONV_TYPES):
            if layer.groups != 1:
                raise ValueError(f"grouped convolution (groups={layer.groups}) cannot be factorised as down/up convs here")
            down = type(layer)(
                layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode, **factory,
            )
            up = _pointwise(len(layer.kernel_size), rank, layer.out_channels, has_bias, **factory)
        else:
            raise TypeError(f"{type(layer).__name__} cannot be factorised; supported: {', '.join(t.__name__ for t in DENSE_TYPES)}")
        return cls(down, up, _dense_record(layer))

    def load_factors(self, down: Tensor, up: Tensor, bias: Optional[Tensor]) -> "LowRankLayer":
        """Copy ``down [r, fan_in]`` and ``up [C_out, r]`` (``svd_factors`` layout) and the bias in."""
        with torch.no_grad():
            self.down.weight.copy_(down.reshape(self.down.weight.shape))
            self.up.weight.copy_(up.reshape(self.up.weight.shape))
            if bias is not None:
                self.up.bias.copy_(bias)
        return self

    def dense_weight(self) -> Tensor:
        """The product ``up @ down`` in the original layer's weight layout (active ranks only)."""
        k = self.active_rank
        down = self.down.weight[:k].reshape(k, -1)
        up = self.up.weight[:, :k].reshape(self.up.weight.shape[0], k)
        return (up @ down).reshape(self.dense.get("weight_shape") or (up.shape[0], *self.down.weight.shape[1:]))

    def forward(self, x: Tensor) -> Tensor:
        k = self.active_rank
        if k == self.rank:
            return self.up(self.down(x))
        hidden = layer_forward(self.down, x, self.down.weight[:k])
        return layer_forward(self.up, hidden, self.up.weight[:, :k], self.up.bias)

    def truncate(self, rank: int) -> "LowRankLayer":
        """A new layer keeping the leading ``rank`` ranks (exactly what ``active_rank = rank`` computes)."""
        if not 1 <= rank <= self.rank:
            raise ValueError(f"rank must be in 1..{self.rank} for this layer, got {rank!r}")
        dense = self.dense or {}
        shell = type(self)(_resized(self.down, out=rank), _resized(self.up, inp=rank), dict(dense))
        with torch.no_grad():
            shell.down.weight.copy_(self.down.weight[:rank])
            shell.up.weight.copy_(self.up.weight[:, :rank])
            if self.up.bias is not None:
                shell.up.bias.copy_(self.up.bias)
        return shell

    def spec(self) -> dict[str, Any]:
        return {"format": self.format, "rank": self.rank, **self.dense}

    def extra_repr(self) -> str:
        return f"rank={self.rank}, active_rank={self.active_rank}"


def _resized(layer: nn.Module, out: Optional[int] = None, inp: Optional[int] = None) -> nn.Module:
    """A copy of ``layer``'s configuration with other output/input sizes (weights uninitialised)."""
    factory = _factory(layer)
    if isinstance(layer, nn.Linear):
        return nn.Linear(inp or layer.in_features, out or layer.out_features, bias=layer.bias is not None, **factory)
    return type(layer)(
        inp or layer.in_channels, out or layer.out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, bias=layer.bias is not None, padding_mode=layer.padding_mode, **factory,
    )


class TuckerConv(nn.Module):
    """Tucker-2 convolution: ``last(core(first(x)))``."""

    format = "tucker"

    def __init__(self, first: nn.Module, core: nn.Module, last: nn.Module, dense: Optional[dict] = None):
        super().__init__()
        self.first, self.core, self.last = first, core, last
        self.dense = dense or {}

    @property
    def ranks(self) -> tuple[int, int]:
        """``(r_out, r_in)``."""
        return self.core.out_channels, self.core.in_channels

    @property
    def rank(self) -> int:
        return max(self.ranks)

    @classmethod
    def from_dense(cls, layer: nn.Module, rank_out: int, rank_in: int) -> "TuckerConv":
        if not isinstance(layer, CONV_TYPES) or layer.groups != 1:
            raise TypeError(f"Tucker-2 needs an ungrouped Conv1d/2d/3d, got {type(layer).__name__}")
        factory, ndim = _factory(layer), len(layer.kernel_size)
        first = _pointwise(ndim, layer.in_channels, rank_in, False, **factory)
        core = type(layer)(
            rank_in, rank_out, layer.kernel_size, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
            bias=False, padding_mode=layer.padding_mode, **factory,
        )
        last = _pointwise(ndim, rank_out, layer.out_channels, layer.bias is not None, **factory)
        return cls(first, core, last, _dense_record(layer))

    def load_factors(self, p_out: Tensor, core: Tensor, p_in: Tensor, bias: Optional[Tensor]) -> "TuckerConv":
        with torch.no_grad():
            self.first.weight.copy_(p_in.t().reshape(self.first.weight.shape))
            self.core.weight.copy_(core)
            self.last.weight.copy_(p_out.reshape(self.last.weight.shape))
            if bias is not None:
                self.last.bias.copy_(bias)
        return self

    def dense_weight(self) -> Tensor:
        p_out = self.last.weight.reshape(self.last.weight.shape[0], -1)
        p_in = self.first.weight.reshape(self.first.weight.shape[0], -1).t()
        return F_fact.tucker2_weight(p_out, self.core.weight, p_in)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.core(self.first(x)))

    def spec(self) -> dict[str, Any]:
        r_out, r_in = self.ranks
        return {"format": self.format, "rank_out": r_out, "rank_in": r_in, **self.dense}


class CPConv(nn.Module):
    """CP convolution: 1x1 in, one depthwise conv per kernel axis, 1x1 out."""

    format = "cp"

    def __init__(self, first: nn.Module, axes: nn.ModuleList, last: nn.Module, dense: Optional[dict] = None):
        super().__init__()
        self.first, self.axes, self.last = first, axes, last
        self.dense = dense or {}

    @property
    def rank(self) -> int:
        return self.first.out_channels

    @classmethod
    def from_dense(cls, layer: nn.Module, rank: int) -> "CPConv":
        if not isinstance(layer, CONV_TYPES) or layer.groups != 1:
            raise TypeError(f"CP needs an ungrouped Conv1d/2d/3d, got {type(layer).__name__}")
        factory, ndim = _factory(layer), len(layer.kernel_size)
        first = _pointwise(ndim, layer.in_channels, rank, False, **factory)
        axes = nn.ModuleList()
        for axis in range(ndim):
            def along(value: Union[tuple, str], fill: int):
                return value if isinstance(value, str) else tuple(value[axis] if a == axis else fill for a in range(ndim))
            axes.append(type(layer)(
                rank, rank, along(layer.kernel_size, 1), stride=along(layer.stride, 1), padding=along(layer.padding, 0),
                dilation=along(layer.dilation, 1), groups=rank, bias=False, padding_mode=layer.padding_mode, **factory,
            ))
        last = _pointwise(ndim, rank, layer.out_channels, layer.bias is not None, **factory)
        return cls(first, axes, last, _dense_record(layer))

    def load_factors(self, factors: list[Tensor], bias: Optional[Tensor]) -> "CPConv":
        """``factors = [U (C_out x R), V (C_in x R), K_1 (k_1 x R), ...]`` as :func:`cp_als` returns them."""
        out_factor, in_factor, *kernel_factors = factors
        with torch.no_grad():
            self.first.weight.copy_(in_factor.t().reshape(self.first.weight.shape))
            for conv, kernel in zip(self.axes, kernel_factors):
                conv.weight.copy_(kernel.t().reshape(conv.weight.shape))
            self.last.weight.copy_(out_factor.reshape(self.last.weight.shape))
            if bias is not None:
                self.last.bias.copy_(bias)
        return self

    def dense_weight(self) -> Tensor:
        rank = self.rank
        factors = [self.last.weight.reshape(-1, rank), self.first.weight.reshape(rank, -1).t()]
        factors += [conv.weight.reshape(rank, -1).t() for conv in self.axes]
        return F_fact.cp_weight(factors)

    def forward(self, x: Tensor) -> Tensor:
        x = self.first(x)
        for conv in self.axes:
            x = conv(x)
        return self.last(x)

    def spec(self) -> dict[str, Any]:
        return {"format": self.format, "rank": self.rank, **self.dense}


FactorizedLayer = Union[LowRankLayer, TuckerConv, CPConv]
FACTORIZED_TYPES = (LowRankLayer, TuckerConv, CPConv)


def rebuild(layer: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """An empty factorised shell for dense ``layer`` from a :meth:`spec` record (its type and shape are checked)."""
    record = _dense_record(layer)
    if record["type"] != spec.get("type") or record["weight_shape"] != spec.get("weight_shape"):
        raise ValueError(
            f"layer is {record['type']} with weight shape {tuple(record['weight_shape'])}, the compressed model "
            f"was made from {spec.get('type')} with {tuple(spec.get('weight_shape') or ())}"
        )
    fmt = spec.get("format")
    if fmt == "matrix":
        return LowRankLayer.from_dense(layer, int(spec["rank"]))
    if fmt == "tucker":
        return TuckerConv.from_dense(layer, int(spec["rank_out"]), int(spec["rank_in"]))
    if fmt == "cp":
        return CPConv.from_dense(layer, int(spec["rank"]))
    raise ValueError(f"unknown factorised format {fmt!r}; expected 'matrix', 'tucker' or 'cp'")


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def kernel_numel(layer: nn.Module) -> int:
    return math.prod(layer.kernel_size) if isinstance(layer, CONV_TYPES) else 1
