"""``compress``: swap trained Linear/Conv layers for low-rank factorised ones, ranks chosen per layer.

Budgets (``budget=``):

* ``0.5`` or ``ParamBudget(0.5)``: the whole model keeps at most half of its parameters. Layers
  not factorised (norms, biases, excluded or unsupported layers) count as they are; the rest is
  shared out by WeLore's heavy-tail rule (one global threshold on normalised singular values,
  ``core.functional.factorize.heavy_tail_threshold``).
* ``ErrorBudget(0.3)``: every layer keeps the smallest rank whose relative Frobenius error is at
  most 0.3 (a bound on the matrix form; Tucker and CP at the same parameters report their own error).
* ``ranks=`` (instead of a budget): an int for every layer or ``{layer name: rank}``.

A layer whose factorised form would not save parameters stays dense (reported with the reason).
Conv kernels take ``conv_format="matrix"`` (conv to ``r`` channels + 1x1 conv), ``"tucker"`` or
``"cp"``; Tucker and CP ranks are the largest with no more parameters than the matrix form at
the chosen rank (a choice: WeLore's rule is defined on matrices).

Maestro (Horvath et al., arXiv 2308.14929) ordered-rank training: :func:`factorize_full_rank`
turns layers into full-rank :class:`LowRankLayer` s, :class:`OrderedRankDropout` samples per step
how many leading ranks each layer uses, :func:`group_lasso_penalty` (added to the loss) shrinks the
trailing ranks during training, and :func:`truncate` cuts the ranks after training: to given ranks,
or (``threshold=``) where the learned trailing group norms have fallen below a threshold.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..adapters import AdapterLayer
from ..functional import factorize as F_fact
from ..validate import is_int, is_number, require
from .layers import CONV_TYPES, DENSE_TYPES, FACTORIZED_TYPES, CPConv, LowRankLayer, TuckerConv, kernel_numel, param_count

__all__ = [
    "ParamBudget", "ErrorBudget", "LayerCompression", "CompressionReport", "compress", "truncate",
    "factorize_full_rank", "OrderedRankDropout", "factorized_layers", "replace_modules",
]

CONV_FORMATS = ("matrix", "tucker", "cp")


@dataclass(frozen=True)
class ParamBudget:
    """Keep at most ``fraction`` of the model's parameters."""

    fraction: float
    """Share of the whole model's parameter count that remains, in (0, 1]."""

    def __post_init__(self) -> None:
        require(self, "fraction", is_number(self.fraction) and 0 < self.fraction <= 1, "a number in (0, 1]")


@dataclass(frozen=True)
class ErrorBudget:
    """Per layer, the smallest rank whose relative Frobenius error is at most ``max_error``."""

    max_error: float
    """Largest ``||W - W_r||_F / ||W||_F`` allowed on any factorised layer, in [0, 1)."""

    def __post_init__(self) -> None:
        require(self, "max_error", is_number(self.max_error) and 0 <= self.max_error < 1, "a number in [0, 1)")


@dataclass
class LayerCompression:
    """What happened to one layer."""

    name: str
    type: str
    format: str
    """``matrix``, ``tucker``, ``cp``, or ``dense`` (kept)."""
    rank: int
    full_rank: int
    params_before: int
    params_after: int
    relative_error: float
    """``||W - W_hat||_F / ||W||_F`` of the weight the new layer computes."""
    note: str = ""


@dataclass
class CompressionReport:
    """Per-layer ranks, parameter counts and errors, and the model totals."""

    layers: list[LayerCompression]
    params_before: int
    params_after: int
    budget: str
    threshold: Optional[float] = None
    """WeLore's global threshold on ``s_i / s_1`` (parameter budgets only)."""
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}

    def __str__(self) -> str:
        lines = [f"compressed {self.params_before:,} -> {self.params_after:,} parameters ({100 * self.fraction:.1f}%), budget {self.budget}"]
        lines.append(f"  {'layer':<28} {'format':<7} {'rank':>9} {'before':>9} {'after':>9} {'rel.err':>7}")
        for row in self.layers:
            lines.append(
                f"  {row.name:<28} {row.format:<7} {f'{row.rank}/{row.full_rank}':>9} {row.params_before:>9,} "
                f"{row.params_after:>9,} {row.relative_error:>7.3f}{'  ' + row.note if row.note else ''}"
            )
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# -- model walking ---------------------------------------------------------------------------------
def _matches(name: str, patterns: Union[None, str, Sequence[str]]) -> bool:
    if patterns is None:
        return True
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return any(name == p or fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns)


def _candidates(model: nn.Module, targets, exclude) -> tuple[dict[str, nn.Module], dict[str, str]]:
    if any(isinstance(m, AdapterLayer) for m in model.modules()):
        raise ValueError("model carries adapters; merge them in (core.remove(model, keep_merged=True)) or remove them before compressing")
    chosen, skipped = {}, {}
    inside = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, FACTORIZED_TYPES))
    for name, module in model.named_modules():
        if inside and name.startswith(inside):  # the factors of a layer already compressed
            continue
        if not isinstance(module, DENSE_TYPES) or not _matches(name, targets) or (exclude and _matches(name, exclude)):
            continue
        if isinstance(module, CONV_TYPES) and module.groups != 1:
            skipped[name] = f"grouped convolution (groups={module.groups})"
            continue
        chosen[name] = module
    if not chosen:
        raise ValueError(f"targets={targets!r} (exclude={exclude!r}) matched no ungrouped Linear/Conv1d/2d/3d layer")
    return chosen, skipped


def replace_modules(model: nn.Module, replacements: Mapping[int, nn.Module]) -> None:
    """Put ``replacements[id(old)]`` wherever ``old`` sits in ``model`` (every name a shared module has)."""
    for parent in list(model.modules()):
        for attr, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, attr, replacements[id(child)])


def factorized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of every factorised layer in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FACTORIZED_TYPES)}


def _total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# -- compress --------------------------------------------------------------------------------------
def _budget_ranks(budget, model, layers, spectra, shapes) -> tuple[list[int], Optional[float], str]:
    if isinstance(budget, ErrorBudget):
        return F_fact.ranks_for_error(spectra, budget.max_error), None, f"error <= {budget.max_error:g} per layer"
    if not isinstance(budget, ParamBudget):
        raise TypeError(f"budget must be a fraction in (0, 1], a ParamBudget or an ErrorBudget, got {budget!r}")
    total = _total_params(model)
    weights = sum(layer.weight.numel() for layer in layers)
    allowed = math.floor(budget.fraction * total) - (total - weights)
    tau = F_fact.heavy_tail_threshold(spectra, shapes, allowed) if allowed > 0 else None
    if tau is None:
        least = total - weights + sum(min(o + i, o * i) for o, i in shapes)
        raise ValueError(
            f"budget {budget.fraction:g} of {total:,} parameters is out of reach: the layers that are not factorised "
            f"and rank 1 everywhere already need {least:,} ({least / total:.3f} of the model)"
        )
    return F_fact.ranks_for_threshold(spectra, tau), tau, f"{budget.fraction:g} of the parameters (WeLore threshold)"


def _build(layer: nn.Module, rank: int, conv_format: str, cp_iterations: int) -> tuple[nn.Module, str]:
    """The factorised replacement of ``layer`` at matrix rank ``rank``, and its format."""
    bias = None if layer.bias is None else layer.bias.detach()
    weight = layer.weight.detach()
    if conv_format == "matrix" or not isinstance(layer, CONV_TYPES):
        down, up = F_fact.svd_factors(weight, rank)
        return LowRankLayer.from_dense(layer, rank).load_factors(down, up, bias), "matrix"
    out_channels, in_channels = weight.shape[:2]
    allowed = F_fact.matrix_param_count(out_channels, in_channels * kernel_numel(layer), rank)
    if conv_format == "tucker":
        r_out, r_in = F_fact.tucker2_ranks_for(out_channels, in_channels, kernel_numel(layer), allowed)
        p_out, core, p_in = F_fact.tucker2_factors(weight, r_out, r_in)
        return TuckerConv.from_dense(layer, r_out, r_in).load_factors(p_out, core, p_in, bias), "tucker"
    cp_rank = F_fact.cp_rank_for(out_channels, in_channels, layer.kernel_size, allowed)
    factors = F_fact.cp_als(weight, cp_rank, iterations=cp_iterations)
    return CPConv.from_dense(layer, cp_rank).load_factors(factors, bias), "cp"


def compress(
    model: nn.Module,
    budget: Union[None, float, ParamBudget, ErrorBudget] = None,
    *,
    ranks: Union[None, int, Mapping[str, int]] = None,
    targets: Union[None, str, Sequence[str]] = None,
    exclude: Union[None, str, Sequence[str]] = None,
    conv_format: str = "matrix",
    cp_iterations: int = 100,
) -> CompressionReport:
    """Replace the trained Linear/Conv layers of ``model`` (in place) by factorised layers.

    Args:
        budget: a fraction of the model's parameters to keep (``ParamBudget``), or an ``ErrorBudget``.
        ranks: instead of a budget, one rank for every layer or ``{layer name: rank}`` (only those layers).
        targets / exclude: glob patterns on module names (``"fc*"``; a bare name matches ``*.name`` too).
        conv_format: ``matrix`` (conv to r channels + 1x1), ``tucker`` (Tucker-2) or ``cp`` for conv kernels.
    Returns:
        a :class:`CompressionReport` (per layer: format, rank, parameters before/after, relative error).
    """
    if conv_format not in CONV_FORMATS:
        raise ValueError(f"conv_format must be one of {CONV_FORMATS}, got {conv_format!r}")
    if (budget is None) == (ranks is None):
        raise ValueError("give exactly one of budget= (a fraction, ParamBudget or ErrorBudget) and ranks=")
    if isinstance(ranks, Mapping):
        targets = list(ranks)
    layers, skipped = _candidates(model, targets, exclude)
    if isinstance(ranks, Mapping):  # exact names only (a glob on "conv" would also reach "block.conv")
        layers = {n: m for n, m in layers.items() if n in ranks}
        unknown = sorted(set(ranks) - set(layers) - set(skipped))
        if unknown:
            raise ValueError(f"ranks names {unknown[:5]}, which are not ungrouped Linear/Conv layers of the model (or are already factorised)")
    names = list(layers)
    spectra = [F_fact.singular_values(layer.weight) for layer in layers.values()]
    shapes = [(int(layer.weight.shape[0]), int(layer.weight[0].numel())) for layer in layers.values()]
    threshold = None
    if ranks is not None:
        chosen = [ranks[n] if isinstance(ranks, Mapping) else ranks for n in names]
        for name, r in zip(names, chosen):
            if not is_int(r, 1):
                raise ValueError(f"ranks[{name!r}] must be a positive integer, got {r!r}")
        description = "explicit ranks"
    else:
        budget = ParamBudget(budget) if is_number(budget) else budget
        chosen, threshold, description = _budget_ranks(budget, model, list(layers.values()), spectra, shapes)
    before = _total_params(model)
    rows, replacements = [], {}
    for name, layer, s, (out_dim, fan_in), rank in zip(names, layers.values(), spectra, shapes, chosen):
        full = len(s)
        rank = min(rank, full)
        n_before = param_count(layer)
        if F_fact.matrix_param_count(out_dim, fan_in, rank) >= out_dim * fan_in:
            rows.append(LayerCompression(name, type(layer).__name__, "dense", full, full, n_before, n_before, 0.0, "kept: factors would not be smaller"))
            continue
        built, fmt = _build(layer, rank, conv_format, cp_iterations)
        with torch.no_grad():
            err = float((built.dense_weight() - layer.weight).norm() / layer.weight.norm().clamp_min(1e-30))
        rows.append(LayerCompression(name, type(layer).__name__, fmt, built.rank, full, n_before, param_count(built), err))
        replacements[id(layer)] = built
    replace_modules(model, replacements)
    return CompressionReport(rows, before, _total_params(model), description, threshold, skipped)


# -- Maestro: ordered ranks ------------------------------------------------------------------------
def factorize_full_rank(model: nn.Module, *, targets=None, exclude=None) -> list[str]:
    """Turn every matching Linear/Conv into a full-rank :class:`LowRankLayer` (exact, via SVD).

    For ordered-rank training (Maestro); returns the names of the layers now factorised.
    """
    layers, _ = _candidates(model, targets, exclude)
    replacements = {}
    for layer in layers.values():
        full = min(layer.weight.shape[0], layer.weight[0].numel())
        down, up = F_fact.svd_factors(layer.weight, full)
        replacements[id(layer)] = LowRankLayer.from_dense(layer, full).load_factors(down, up, None if layer.bias is None else layer.bias.detach())
    replace_modules(model, replacements)
    return list(layers)


def _low_rank_layers(model: nn.Module) -> dict[str, LowRankLayer]:
    layers = {n: m for n, m in factorized_layers(model).items() if isinstance(m, LowRankLayer)}
    if not layers:
        raise ValueError("model has no LowRankLayer (run compress(..., conv_format='matrix') or factorize_full_rank first)")
    return layers


class OrderedRankDropout:
    """Maestro's ordered dropout: each :meth:`sample` sets how many leading ranks every layer uses.

    Call :meth:`sample` before each training step and :meth:`reset` (all ranks) before evaluating.
    The layers' forward holds no randomness; the draw happens here, from a seeded generator.
    """

    def __init__(self, model: nn.Module, *, min_fraction: float = 0.0, shared: bool = False, seed: int = 0):
        if not (is_number(min_fraction) and 0 <= min_fraction <= 1):
            raise ValueError(f"min_fraction must be a number in [0, 1], got {min_fraction!r}")
        self.layers = list(_low_rank_layers(model).values())
        self.min_fraction, self.shared = float(min_fraction), shared
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> list[int]:
        ranks = F_fact.sample_ordered_ranks([m.rank for m in self.layers], self.generator, min_fraction=self.min_fraction, shared=self.shared)
        for layer, rank in zip(self.layers, ranks):
            layer.active_rank = rank
        return ranks

    def reset(self) -> None:
        for layer in self.layers:
            layer.active_rank = layer.rank


def _target_ranks(layers: dict[str, LowRankLayer], ranks) -> dict[str, object]:
    """``{name: requested rank}`` from an int, a fraction or a mapping (validated by the caller)."""
    if isinstance(ranks, Mapping):
        unknown = sorted(set(ranks) - set(layers))
        if unknown:
            raise ValueError(f"ranks names layers that are not LowRankLayers: {unknown[:5]}; factorised layers: {sorted(layers)[:8]}")
        return dict(ranks)
    if isinstance(ranks, float):
        if not 0 < ranks <= 1:
            raise ValueError(f"a fractional ranks must be in (0, 1], got {ranks!r}")
        return {name: max(1, math.ceil(ranks * layer.rank)) for name, layer in layers.items()}
    if is_int(ranks, 1):
        return {name: min(ranks, layer.rank) for name, layer in layers.items()}
    raise ValueError(f"ranks must be a positive int, a float in (0, 1] or {{layer name: rank}}, got {ranks!r}")


def group_lasso_penalty(model: nn.Module) -> Tensor:
    """Maestro's hierarchical group lasso summed over every :class:`LowRankLayer` of ``model`` (differentiable).

    Add ``weight * group_lasso_penalty(model)`` to the training loss; the trailing ranks shrink, and
    ``truncate(model, threshold=...)`` then cuts them. Math in ``core.functional.factorize``.
    """
    layers = _low_rank_layers(model)
    return sum(F_fact.hierarchical_group_lasso(m.down.weight, m.up.weight) for m in layers.values())


def group_norms(model: nn.Module) -> dict[str, Tensor]:
    """``{name: trailing group norms}`` of every :class:`LowRankLayer` (detached; see ``trailing_group_norms``)."""
    return {name: F_fact.trailing_group_norms(m.down.weight.detach(), m.up.weight.detach()) for name, m in _low_rank_layers(model).items()}


def truncate(model: nn.Module, ranks: Union[int, float, Mapping[str, int], None] = None, *, threshold: Optional[float] = None) -> dict[str, int]:
    """Cut factorised layers to their leading ranks, in place. Returns ``{name: new rank}``.

    ``ranks``: an int (capped at each layer's rank), a float in (0, 1] (that share of each layer's
    rank, rounded up) or ``{layer name: rank}``. Or, instead, ``threshold`` in [0, 1): per layer, the
    fewest leading ranks whose trailing group norm is at most ``threshold`` times the layer's whole
    norm (the rank learned with :func:`group_lasso_penalty`; ``rank_for_group_threshold``).
    """
    layers = _low_rank_layers(model)
    if (ranks is None) == (threshold is None):
        raise ValueError(f"give exactly one of ranks and threshold, got ranks={ranks!r}, threshold={threshold!r}")
    if threshold is not None:
        if not (is_number(threshold) and 0 <= threshold < 1):
            raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
        ranks = {name: F_fact.rank_for_group_threshold(norms, float(threshold)) for name, norms in group_norms(model).items()}
    replacements, out = {}, {}
    for name, rank in _target_ranks(layers, ranks).items():
        layer = layers[name]
        if not (is_int(rank) and 1 <= rank <= layer.rank):
            raise ValueError(f"rank for {name!r} must be an integer in 1..{layer.rank}, got {rank!r}")
        replacements[id(layer)] = layer.truncate(rank)
        out[name] = rank
    replace_modules(model, replacements)
    return out
