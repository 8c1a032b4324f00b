"""Module shells shared by every adapter family.

An :class:`AdapterLayer` wraps one base layer (a real submodule, ``base_layer``) and adds
an update. Families whose update is linear in the weight (LoRA, convLoRA, CP-LoRA, NOLA)
are a :class:`DeltaAdapter` holding a :class:`LowRankDelta` -- a small module that owns the
factors and calls the pure functions in ``core.functional``. DoRA-style variants wrap the
same deltas (``core.adapters.dora``). Adapters can be stacked: the ``base_layer`` of an
adapter may itself be an adapter, and ``root_layer`` walks down to the original layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional

import torch
from torch import Tensor, nn

from ..functional.compiled import compiled_call
from ..functional.layout import LayerGeometry, geometry_of, layer_forward, logical_to_weight
from ..validate import is_int, is_number, require
from .strategy import choose_strategy

__all__ = ["NoOptions", "AdapterConfig", "AdapterLayer", "DeltaAdapter", "LowRankDelta", "root_layer", "STRATEGIES"]

STRATEGIES = ("auto", "weight", "activation")
Strategy = Literal["auto", "weight", "activation"]


@dataclass
class AdapterConfig:
    """Options every adapter family shares."""

    rank: int
    """Rank r of the update (CP rank R for CP-LoRA)."""
    alpha: Optional[float] = None
    """Scale numerator: the update is multiplied by ``alpha / rank``; ``None`` means ``alpha = rank``."""
    dropout: float = 0.0
    """Dropout on the adapter's input path (training only)."""
    strategy: Strategy = "auto"
    """Where the update is computed: ``weight`` (one op with ``W + dW``), ``activation`` (base output + low-rank path) or ``auto``."""
    fused: bool = False
    """Build ``W + dW`` (DoRA: with its norm and magnitude scaling) through ``torch.compile`` whenever the ``weight``
    strategy runs with gradients on (``core.functional.compiled``); same numbers, fewer kernels. Falls back to eager
    where compiling is impossible; ``layer.fused_status`` says which ran and why. An execution choice of this
    process, like a tuned strategy's timing: ``core.io.save`` does not store it."""

    def __post_init__(self) -> None:
        require(self, "rank", is_int(self.rank, 1), "a positive integer")
        require(self, "alpha", self.alpha is None or (is_number(self.alpha) and self.alpha > 0), "a positive number or None")
        require(self, "dropout", is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "a number in [0, 1)")
        require(self, "strategy", self.strategy in STRATEGIES, f"one of {STRATEGIES}")
        require(self, "fused", isinstance(self.fused, bool), "True or False")
        if self.dropout > 0 and self.strategy == "weight":
            raise ValueError(
                f"AdapterConfig.strategy must be 'auto' or 'activation' when dropout > 0 (dropout acts on the adapter's "
                f"input, which the weight-space path never forms), got {self.strategy!r} with dropout={self.dropout!r}"
            )

    @property
    def scale(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank) / self.rank


@dataclass
class NoOptions:
    """This family has no options of its own."""


def root_layer(module: nn.Module) -> nn.Module:
    """The original layer under any number of stacked adapters."""
    while isinstance(module, AdapterLayer):
        module = module.base_layer
    return module


class AdapterLayer(nn.Module):
    """Base shell: wraps ``base_layer``; subclasses implement :meth:`adapted_forward`."""

    method: ClassVar[str] = ""
    """Registry name of the family (set by ``register_adapter``)."""
    mergeable: ClassVar[bool] = True
    """Whether the update can be folded into the base weight (False for nonlinear adapters)."""
    options_cls: ClassVar[type] = NoOptions
    """Dataclass of the family's own options (validated by ``apply``)."""
    strategies: ClassVar[tuple[str, ...]] = STRATEGIES
    """The values of ``AdapterConfig.strategy`` this family honours (a family with one path refuses the others)."""

    @classmethod
    def check_config(cls, config: AdapterConfig) -> None:
        """Refuse shared options this family would silently ignore."""
        if config.strategy not in cls.strategies:
            raise ValueError(
                f"AdapterConfig.strategy must be one of {cls.strategies} for {cls.method or cls.__name__} "
                f"(it has no other execution path), got {config.strategy!r}"
            )

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        """Why this family cannot wrap a layer of ``geometry`` (``None`` if it can)."""
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any) -> int:
        """Closed-form number of trainable parameters on one layer."""
        raise NotImplementedError

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, *, options: Any = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__()
        self.options = options if options is not None else self.options_cls()
        self.base_layer = base_layer
        self.geometry: LayerGeometry = geometry_of(root_layer(base_layer))
        self.config = config
        self.scale: float = config.scale
        """Multiplier of the update; starts at ``config.scale`` (``alpha / rank``). The one mutable copy, for schedules."""
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.strategy: str = config.strategy
        """Current execution strategy; starts at ``config.strategy`` (``tune_strategies`` may change it)."""
        self.strategy_choice: Optional[dict] = None
        """The measured choice and its reasons (set by ``core.tune``, saved and restored by ``core.io``); ``None`` untuned."""
        self.fused: bool = config.fused
        """Whether the weight-space build runs through ``torch.compile`` (starts at ``config.fused``; may be switched)."""
        self.fused_status: Optional[str] = None
        """What the last fused build ran: ``compiled`` or ``eager (fallback: <why>)``; ``None`` before one ran."""
        self.adapter_name = adapter_name
        self.layer_name = layer_name
        self.active = True
        self.merged = False
        self._merge_backup: Optional[Tensor] = None

    # -- helpers ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Rank of the update (read-only; ``config`` is the truth)."""
        return self.config.rank

    @property
    def alpha(self) -> float:
        """Scale numerator (read-only): ``config.alpha``, or the rank when that is ``None``."""
        return float(self.config.alpha if self.config.alpha is not None else self.config.rank)

    @property
    def root(self) -> nn.Module:
        return root_layer(self.base_layer)

    def _factory_kwargs(self) -> dict[str, Any]:
        weight = self.root.weight
        return {"dtype": weight.dtype, "device": weight.device}

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This adapter's own parameters (not the base layer's, not stacked adapters')."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("base_layer.")]

    def base_weight(self) -> Tensor:
        """The weight this adapter adapts: the root weight, or the stacked adapter's effective weight."""
        if isinstance(self.base_layer, AdapterLayer):
            return self.base_layer.effective_weight()
        return self.base_layer.weight

    def effective_weight(self) -> Tensor:
        """Weight (stored layout) that would give this layer's output in one op."""
        raise TypeError(f"{type(self).__name__} ({self.method}) is nonlinear in the input and has no effective weight")

    def delta_weight(self) -> Tensor:
        """Dense update ``W_adapted - W`` in the stored weight layout (what :meth:`merge` adds)."""
        raise TypeError(f"{type(self).__name__} ({self.method}) is nonlinear in the input and has no dense weight update")

    def extra_repr(self) -> str:
        fused = ", fused=True" if self.fused else ""
        return f"method={self.method}, rank={self.rank}, alpha={self.alpha:g}, adapter={self.adapter_name!r}, strategy={self.strategy}{fused}"

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.merged or not self.active:
            return self.base_layer(x, *args, **kwargs)
        return self.adapted_forward(x, *args, **kwargs)

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        raise NotImplementedError

    # -- merge / unmerge ---------------------------------------------------------------------
    def merge(self) -> None:
        """Fold the update into the root weight; the original weight is kept for an exact :meth:`unmerge`."""
        if not self.mergeable:
            raise TypeError(f"{self.method} adapters are nonlinear in the input and cannot be merged into {type(self.root).__name__}.weight")
        if self.merged:
            warnings.warn(f"adapter {self.adapter_name!r} on {self.layer_name or type(self.root).__name__} is already merged")
            return
        if not self.active:
            return
        root = self.root
        with torch.no_grad():
            new_weight = self.effective_weight().detach().to(root.weight.dtype)
            self._merge_backup = root.weight.detach().clone()
            root.weight.copy_(new_weight)
        self.merged = True

    def unmerge(self) -> None:
        """Restore the root weight bit-exactly from the copy taken at :meth:`merge`.

        With stacked adapters, unmerge the outermost first (``core.unmerge`` does).
        """
        if not self.merged:
            return
        with torch.no_grad():
            self.root.weight.copy_(self._merge_backup)
        self._merge_backup = None
        self.merged = False

    def commit_merge(self) -> None:
        """Keep the merged update in the root weight and forget the backup (the adapter can then be taken out)."""
        self._merge_backup = None
        self.merged = False

    def base_requires_grad(self) -> bool:
        """Whether a parameter of the root layer trains (the fused kernels give those no gradient)."""
        return any(p.requires_grad for p in self.root.parameters(recurse=False))


class LowRankDelta(nn.Module):
    """Factors of a weight update that is linear in the base weight (``dW``).

    Subclasses set ``param_names`` and implement :meth:`logical_delta`; they may implement
    :meth:`bypass` (the update applied to activations without forming ``dW``).
    """

    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, geometry: LayerGeometry, rank: int, options: Any = None, *, layer_name: str = ""):
        super().__init__()
        self.geometry = geometry

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        return None

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        raise NotImplementedError

    def logical_delta(self, scale: float) -> Tensor:
        raise NotImplementedError

    def bypass(self, layer: nn.Module, x: Tensor, scale: float, **kwargs) -> Optional[Tensor]:
        """Low-rank path on activations, or ``None`` when this delta has none for ``layer``."""
        return None

    def fused_forward(self, layer: nn.Module, x: Tensor, scale: float, bias: Optional[Tensor], **kwargs) -> Optional[Tensor]:
        """``op(x, W) + bias + scale * dW(x)`` in fused kernels, or ``None`` where there are none."""
        return None

    def weight_build(self) -> Optional[tuple[Callable[..., Tensor], tuple[Tensor, ...], dict[str, Any]]]:
        """``(fn, tensors, static)`` with ``fn(weight, *tensors, scale=scale, **static) == add_to_weight(weight, scale)``,
        ``fn`` pure (the ``fused`` option compiles it), or ``None`` where the family has no such function."""
        return None

    def has_thin_path(self) -> bool:
        """Whether the activation path is cheaper than a dense op with ``dW`` (a true low-rank bypass)."""
        return False

    def add_to_weight(self, weight: Tensor, scale: float) -> Tensor:
        """``weight + scale * dW`` in the stored layout."""
        return weight + logical_to_weight(self.logical_delta(scale), self.geometry).to(weight.dtype)


class DeltaAdapter(AdapterLayer):
    """Adapter whose update ``dW`` is linear: ``y = op(x, W + scale * dW)``."""

    delta_cls: ClassVar[type[LowRankDelta]] = LowRankDelta
    fused_linear_when_captured: ClassVar[bool] = True
    """``auto`` on a CUDA Linear takes the fused kernel while a CUDA graph is captured (``_pick_strategy``)."""

    @classmethod
    def unsupported_reason(cls, geometry: LayerGeometry) -> Optional[str]:
        return cls.delta_cls.unsupported_reason(geometry)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return cls.delta_cls.param_count(geometry, rank, options)

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, *, options: Any = None, adapter_name: str = "default", layer_name: str = ""):
        super().__init__(base_layer, config, options=options, adapter_name=adapter_name, layer_name=layer_name)
        self.delta = self.delta_cls(self.geometry, self.rank, self.options, layer_name=layer_name, **self._factory_kwargs())

    def logical_delta(self) -> Tensor:
        return self.delta.logical_delta(self.scale)

    def low_rank_weight(self) -> Tensor:
        """``scale * dW`` of the low-rank factors, in the stored weight layout."""
        return logical_to_weight(self.logical_delta(), self.geometry)

    def delta_weight(self) -> Tensor:
        """Dense scaled update in the base layer's stored weight layout."""
        return self.low_rank_weight()

    def effective_weight(self) -> Tensor:
        base = self.base_weight()
        if self.merged or not self.active:
            return base
        if self.fused_build_applies():
            out = self.fused_weight(base)
            if out is not None:
                return out
        return self.delta.add_to_weight(base, self.scale)

    def fused_build_applies(self) -> bool:
        """``fused`` is on, gradients are (the training step) and no outer ``torch.compile`` is tracing this layer."""
        return self.fused and torch.is_grad_enabled() and not torch.compiler.is_compiling()

    def weight_build(self) -> Optional[tuple[Callable[..., Tensor], tuple[Tensor, ...], dict[str, Any]]]:
        """The whole effective-weight build as ``(pure fn, tensors after the base weight, static arguments)``."""
        spec = self.delta.weight_build()
        if spec is None:
            return None
        fn, tensors, static = spec
        return fn, tuple(tensors), {**static, "scale": self.scale}

    def fused_weight(self, base: Tensor) -> Optional[Tensor]:
        """:meth:`weight_build` run through ``torch.compile``; ``None`` (and the reason in ``fused_status``) where it cannot."""
        spec = self.weight_build()
        if spec is None:
            self.fused_status = f"eager (fallback: {type(self.delta).__name__} has no weight-build function)"
            return None
        fn, tensors, static = spec
        out, self.fused_status = compiled_call(fn, (base, *tensors), static)
        return out

    def _pick_strategy(self, x: Tensor) -> str:
        if self.training and not isinstance(self.dropout, nn.Identity):
            return "activation"  # dropout acts on the adapter's input only
        if self.strategy != "auto":
            return self.strategy
        if x.is_cuda and self.geometry.kind != "embedding":
            linear = self.fused_linear_when_captured and self.geometry.kind == "linear"
            if linear and torch.cuda.is_current_stream_capturing() and self._fusable():
                # Inside a captured CUDA graph launches cost nothing, and the fused Linear kernel (no full weight
                # gradient) does less GPU work: ViT-B on an H200, whole-step graphs, 0.88x full fine-tuning vs
                # 0.98x for the weight space (docs/benchmarks.md).
                return "activation"
            # Measured on an H200 in eager mode (docs/benchmarks.md): the weight space won on every model
            # benchmarked; the thin activation path is launch- and bandwidth-bound on GPUs.
            return "weight"
        return choose_strategy(self.geometry, tuple(x.shape), self.rank, self.delta.has_thin_path())

    def fuses_build_under_capture(self) -> bool:
        """Whether :func:`fuse_builds_for_capture` switches this layer to the compiled weight build: an ``auto``
        layer on CUDA, not merged, whose family has a weight-build function, and either a convolution (no fused
        kernel there) or a Linear whose family keeps the weight space under capture (DoRA: its norm needs
        ``W + dW`` anyway)."""
        if self.fused or self.merged or self.strategy != "auto" or self.geometry.kind == "embedding":
            return False
        if not self._on_cuda() or self.delta.weight_build() is None:
            return False
        return self.geometry.kind != "linear" or not self.fused_linear_when_captured

    def _on_cuda(self) -> bool:
        return self.base_weight().is_cuda

    def _fusable(self) -> bool:
        """The fused kernels need the root layer directly below, no dropout on the adapter path and a frozen
        root layer (their backward computes no gradient for the base weight and bias)."""
        if isinstance(self.base_layer, AdapterLayer) or self.base_requires_grad():
            return False
        return isinstance(self.dropout, nn.Identity) or not self.training

    def adapted_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        root = self.root
        bias = getattr(root, "bias", None)
        if self._pick_strategy(x) == "weight":
            return layer_forward(root, x, self.effective_weight(), bias, **kwargs)
        if self._fusable():
            out = self.delta.fused_forward(root, x, self.scale, bias, **kwargs)
            if out is not None:
                return out
        base_out = self.base_layer(x, *args, **kwargs)
        return base_out + self.activation_delta(self.dropout(x), **kwargs).to(base_out.dtype)

    def activation_delta(self, x: Tensor, **kwargs) -> Tensor:
        """``op(x, dW)`` without bias: the low-rank path when the delta has one, else one op with ``dW``."""
        out = self.delta.bypass(self.root, x, self.scale, **kwargs)
        if out is None:
            out = layer_forward(self.root, x, self.low_rank_weight(), None, **kwargs)
        return out


def fuse_builds_for_capture(model: nn.Module) -> list[str]:
    """Turn on the compiled weight build (``fused``) of every layer of ``model`` that
    :meth:`DeltaAdapter.fuses_build_under_capture` selects, before a whole-step CUDA graph is warmed up and
    captured; returns their names (the trainer records them in ``TrainResult.cuda_graph["fused_builds"]``).

    Chosen from measured cost (H200, bf16, whole-step graphs, medians of 3 interleaved rounds, ``docs/benchmarks.md``),
    step time of the compiled build vs ``auto``'s eager weight space: LoRA on convolutions 0.94 vs 0.94 (small 3-D
    UNet), 0.91 vs 0.94 (diffusers UNet), 1.04 vs 1.05 (ResNet-50) of full fine-tuning; CP-LoRA 0.97 vs 1.03, 0.92 vs
    0.97, 1.06 vs 1.10; DoRA 0.96 vs 0.97, 0.93 vs 1.05, 1.05 vs 1.10, and on ViT-B's Linear layers 0.98 vs 1.17 for the weight space. On
    Linear LoRA / CP-LoRA layers the fused Linear kernel ``auto`` takes under capture was faster (ViT-B 0.88 and 0.89
    vs 0.94 and 1.05), so those are left alone. The build compiles during the eager warm-up steps (a one-off cost);
    where it cannot compile it falls back to the eager build (``fused_status`` says so)."""
    switched = []
    for name, module in model.named_modules():
        if isinstance(module, DeltaAdapter) and module.fuses_build_under_capture():
            module.fused = True
            switched.append(module.layer_name or name)
    return switched
