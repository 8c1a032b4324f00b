"""Put adapters into any PyTorch model by swapping modules, and take them out again.

``apply(model, "cp_lora", rank=8, targets="*.conv")`` replaces every matching layer with an
adapter that holds the original layer as ``base_layer`` (PEFT-style module swapping; ``forward``
is never patched), freezes everything else, and returns an :class:`AdapterReport`.
Several named adapters can sit on one model; they stack on shared layers and are switched
with :func:`set_active`.

A module reached under several names (a block registered twice, MONAI's DynUNet skip layers) is
wrapped once and every name points to that one wrapper. ``apply`` (and ``load``/``import_peft``,
which build on it) either finishes or leaves the model exactly as it was (:func:`rollback_on_error`).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .adapters import AdapterConfig, AdapterLayer, get_adapter_class, root_layer
from .functional.layout import SUPPORTED_LAYER_TYPES, UnsupportedLayerError, geometry_of

__all__ = [
    "AdapterReport", "apply", "merge", "unmerge", "remove", "set_active",
    "adapter_layers", "trainable_parameters", "count_parameters", "TargetSpec",
    "Slot", "iter_slots", "module_aliases", "rollback_on_error",
]

TargetSpec = Union[None, str, Sequence[str], type, tuple]
_REQUIRES_GRAD_ATTR = "_lowrank_requires_grad"  # requires_grad flags before the first apply; remove() restores them


@dataclass
class AdapterReport:
    """What :func:`apply` did."""

    method: str
    adapter_name: str
    rank: int
    alpha: float
    wrapped: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    trainable_params: int = 0
    adapter_params: int = 0
    total_params: int = 0

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def __str__(self) -> str:
        lines = [
            f"adapter {self.adapter_name!r}: {self.method}, rank {self.rank}, alpha {self.alpha:g}",
            f"  wrapped {len(self.wrapped)} layers; skipped {len(self.skipped)}",
            f"  trainable {self.trainable_params:,} of {self.total_params:,} parameters ({self.trainable_percent:.3f}%)",
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


@dataclass
class Slot:
    """One position in the module tree that holds an adaptable layer (possibly already wrapped).

    A module registered under two names (a shared block, a layer assigned twice) has one slot per name.
    """

    name: str
    parent: nn.Module
    attr: str
    module: nn.Module

    @property
    def root(self) -> nn.Module:
        return root_layer(self.module)

    def chain(self) -> list[AdapterLayer]:
        """Stacked adapters at this slot, outermost first."""
        out, module = [], self.module
        while isinstance(module, AdapterLayer):
            out.append(module)
            module = module.base_layer
        return out


def iter_slots(model: nn.Module) -> Iterator[Slot]:
    """Every leaf position, aliases included; an adapter stack counts as one leaf named after the original layer."""

    def walk(module: nn.Module, prefix: str) -> Iterator[Slot]:
        for attr, child in module._modules.items():
            if child is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if isinstance(child, AdapterLayer) or not child._modules:
                yield Slot(name, module, attr, child)
            else:
                yield from walk(child, name)

    yield from walk(model, "")


def module_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: first name}`` for every leaf position that holds a module already reached under an earlier name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for slot in iter_slots(model):
        key = id(slot.module)
        if key in first:
            aliases[slot.name] = first[key]
        else:
            first[key] = slot.name
    return aliases


@contextmanager
def rollback_on_error(model: nn.Module) -> Iterator[None]:
    """Run a block that changes ``model``'s adapters; if it raises, put the model back exactly as it was.

    Restores the module tree (every parent's children), ``requires_grad`` flags, the values and scales of
    adapters already present, and the bookkeeping attribute that :func:`remove` reads.
    """
    children = [(m, dict(m._modules)) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    adapters = list({id(m): m for m in model.modules() if isinstance(m, AdapterLayer)}.values())
    values = [(p, p.detach().clone()) for a in adapters for _, p in a.adapter_parameters()]
    scales = [(a, a.scale, a.strategy) for a in adapters]
    had_record = _REQUIRES_GRAD_ATTR in model.__dict__
    record = model.__dict__.get(_REQUIRES_GRAD_ATTR)
    try:
        yield
    except BaseException:
        for module, kids in children:
            module._modules.clear()
            module._modules.update(kids)
        with torch.no_grad():
            for p, value in values:
                p.copy_(value)
        for p, flag in flags:
            p.requires_grad_(flag)
        for adapter, scale, strategy in scales:
            adapter.scale, adapter.strategy = scale, strategy
        model.__dict__.pop(_REQUIRES_GRAD_ATTR, None)
        if had_record:
            model.__dict__[_REQUIRES_GRAD_ATTR] = record
        raise


def _match(name: str, module: nn.Module, targets: TargetSpec) -> bool:
    if targets is None:
        return isinstance(module, SUPPORTED_LAYER_TYPES)
    if isinstance(targets, type) or (isinstance(targets, tuple) and targets and all(isinstance(t, type) for t in targets)):
        return isinstance(module, targets)
    if isinstance(targets, str):
        return _match_pattern(name, targets)
    return any(_match_pattern(name, pattern) for pattern in targets)


def _match_pattern(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def _no_match_error(targets: TargetSpec, names: list[str]) -> ValueError:
    patterns = [targets] if isinstance(targets, str) else list(targets) if not isinstance(targets, type) else []
    close: list[str] = []
    for pattern in patterns:
        if isinstance(pattern, str):
            stem = pattern[3:] if pattern.startswith("re:") else pattern
            close += difflib.get_close_matches(stem.strip("*?."), names, n=5, cutoff=0.4)
            close += [n for n in names if stem.strip("*?.").split(".")[-1] in n][:5]
    close = list(dict.fromkeys(close))[:8]
    hint = f"; close candidates: {', '.join(close)}" if close else f"; adaptable layers include: {', '.join(names[:8])}"
    return ValueError(f"targets={targets!r} matched no adaptable layer{hint}")


def _build_options(cls: type[AdapterLayer], method: str, options: dict):
    try:
        return cls.options_cls(**options)
    except TypeError as exc:
        accepted = [f.name for f in dataclasses.fields(cls.options_cls)]
        unknown = sorted(set(options) - set(accepted))
        raise TypeError(
            f"unknown option(s) {unknown} for method {method!r}; accepted options: {accepted or 'none'} "
            f"(plus rank, alpha, dropout, strategy, fused)"
        ) from exc


def adapter_layers(model: nn.Module, adapter_name: Optional[str] = None, *, unique: bool = False) -> dict[str, AdapterLayer]:
    """``{original layer name: adapter}`` for every adapter (of ``adapter_name`` if given).

    A layer reached under several names (see :func:`module_aliases`) appears under each of them, all
    pointing to one adapter; ``unique=True`` keeps only the first name of each adapter.
    Without ``adapter_name`` the keys are ``"<layer>[<adapter name>]"``.
    """
    out: dict[str, AdapterLayer] = {}
    seen: set[int] = set()
    for slot in iter_slots(model):
        for adapter in slot.chain():
            if adapter_name is None or adapter.adapter_name == adapter_name:
                if unique and id(adapter) in seen:
                    continue
                seen.add(id(adapter))
                key = slot.name if adapter_name is not None else f"{slot.name}[{adapter.adapter_name}]"
                out[key] = adapter
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` counting each tensor once (non-persistent NOLA bases are buffers, not counted)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _mark_trainable(model: nn.Module, adapter_name: str, trainable: Iterable[str]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for adapter in adapter_layers(model, adapter_name).values():
        for _, p in adapter.adapter_parameters():
            p.requires_grad_(True)
    params = dict(model.named_parameters(remove_duplicate=False))  # a shared layer can be named by any of its names
    names = list(params)
    for pattern in trainable:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern + ".*")]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.4)
            raise ValueError(f"trainable pattern {pattern!r} matched no parameter; close candidates: {close}")
        for n in hits:
            params[n].requires_grad_(True)


def apply(
    model: nn.Module,
    method: str,
    *,
    rank: int,
    alpha: Optional[float] = None,
    targets: TargetSpec = None,
    trainable: Sequence[str] = (),
    adapter_name: str = "default",
    dropout: float = 0.0,
    strategy: str = "auto",
    fused: bool = False,
    init=None,
    init_data=None,
    init_loss=None,
    **options,
) -> AdapterReport:
    """Wrap the layers of ``model`` selected by ``targets`` with adapter ``method``.

    Args:
        method: a registered family (``lora``, ``lora_c``, ``conv_lora``, ``cp_lora``, ``dora``, ``dora_c``,
            ``conv_dora``, ``cp_dora``, ``nola``, ``nera``, or a third-party name).
        rank: rank r (CP rank R); ranks above ``min(C_out, C_in*prod(k))`` are allowed with a warning.
        targets: ``None`` for every supported layer (unsupported ones are skipped and reported); a glob on
            module names (``"*.qkv"``; a bare ``"qkv"`` also matches any ``*.qkv``); ``"re:<regex>"`` (full
            match); a list of names/patterns (each must match; naming an unsupported layer is an error);
            or a layer type / tuple of types.
        trainable: glob patterns of parameter or module names that stay trainable (e.g. a new head).
        fused: build the weight-space update through ``torch.compile`` (``AdapterConfig.fused``; not saved by ``save``).
        **options: the family's own options (e.g. ``num_basis_a`` for NOLA, ``detach_norm`` for DoRA).
        init: gradient-informed initialisation (``"lora_ga"``, ``"lora_sb"`` or an object, see ``core.init``), run on
            ``init_data`` (an iterable of batches) with ``init_loss(model, batch) -> loss`` once the adapters are in.
    """
    initialiser = None
    if init is not None:  # core.init: LoRA-GA / LoRA-SB (may pick the family, e.g. lora_sb -> lora_xs)
        from .init import check_init_arguments, get_initialiser

        initialiser = get_initialiser(init)
        check_init_arguments(init, init_data, init_loss)
        method = initialiser.adapter_method(method)
    cls = get_adapter_class(method)
    config = AdapterConfig(rank=rank, alpha=alpha, dropout=dropout, strategy=strategy, fused=fused)  # validates
    cls.check_config(config)
    opts = _build_options(cls, method, options)
    if isinstance(trainable, str):
        trainable = (trainable,)

    slots = list(iter_slots(model))
    adaptable_names = [s.name for s in slots if isinstance(s.root, SUPPORTED_LAYER_TYPES)]
    explicit = targets is not None and not isinstance(targets, (str, type)) and not (
        isinstance(targets, tuple) and targets and all(isinstance(t, type) for t in targets)
    )
    if explicit:
        for pattern in targets:
            if not any(_match_pattern(s.name, pattern) for s in slots):
                raise _no_match_error(pattern, adaptable_names)

    selected: dict[int, list[Slot]] = {}  # id(module) -> every slot holding it; the first one names the adapter
    skipped: dict[str, str] = {}
    for slot in slots:
        if not _match(slot.name, slot.root, targets):
            continue
        reason = None
        try:
            geometry = geometry_of(slot.root)
            reason = cls.unsupported_reason(geometry)
        except UnsupportedLayerError as exc:
            reason = str(exc)
        if reason is None and any(a.adapter_name == adapter_name for a in slot.chain()):
            raise ValueError(f"layer {slot.name!r} already has an adapter named {adapter_name!r}; pick another adapter_name")
        if reason is not None:
            if explicit:
                raise ValueError(f"targets names layer {slot.name!r}, which {cls.method} cannot adapt: {reason}")
            if isinstance(slot.root, SUPPORTED_LAYER_TYPES):
                skipped[slot.name] = reason
            continue
        selected.setdefault(id(slot.module), [])
    if not selected:
        if skipped:
            raise ValueError(f"targets={targets!r} matched only layers {cls.method} cannot adapt: {skipped}")
        raise _no_match_error(targets if targets is not None else "*", adaptable_names)
    for slot in slots:  # every alias of a selected module gets the same wrapper, named or not
        if id(slot.module) in selected:
            selected[id(slot.module)].append(slot)

    with rollback_on_error(model):
        if _REQUIRES_GRAD_ATTR not in model.__dict__:  # restored by remove()
            model.__dict__[_REQUIRES_GRAD_ATTR] = [(p, p.requires_grad) for p in model.parameters()]
        wrappers = []
        for group in selected.values():  # build every adapter first: the model is untouched until all exist
            first = group[0]
            wrappers.append((cls(first.module, config, options=opts, adapter_name=adapter_name, layer_name=first.name), group))
        overparameterised = []
        for adapter, group in wrappers:
            for slot in group:
                setattr(slot.parent, slot.attr, adapter)
            if rank > min(adapter.geometry.out_channels, adapter.geometry.fan_in):
                overparameterised.append(group[0].name)
        _mark_trainable(model, adapter_name, trainable)
        if initialiser is not None:
            initialiser.initialise(model, adapter_name, init_data, init_loss)
    if overparameterised:
        warnings.warn(
            f"rank {rank} exceeds min(C_out, C_in*prod(k)) on {len(overparameterised)} layer(s) "
            f"(e.g. {overparameterised[0]}): over-parameterised update",
            stacklevel=2,
        )
    layers = adapter_layers(model, adapter_name)
    n_trainable, n_total = count_parameters(model)
    return AdapterReport(
        method=cls.method,
        adapter_name=adapter_name,
        rank=rank,
        alpha=config.alpha if config.alpha is not None else float(rank),
        wrapped=list(layers),
        skipped=skipped,
        trainable_params=n_trainable,
        adapter_params=sum(p.numel() for a in adapter_layers(model, adapter_name, unique=True).values() for _, p in a.adapter_parameters()),
        total_params=n_total,
    )


def _tied_weight_owners(model: nn.Module) -> dict[int, list[str]]:
    """``{id(parameter): names of the modules that hold it}`` for parameters held by more than one module."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            continue
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(name)
    return {k: v for k, v in owners.items() if len(v) > 1}


def _strip_base(name: str) -> str:
    return name.replace(".base_layer", "")


def merge(model: nn.Module, adapter_name: Optional[str] = None) -> int:
    """Fold active adapters into the base weights (innermost first). Returns the number merged.

    A layer whose weight is tied to another module's (shared embeddings) is refused before anything
    is merged: folding its update in would change the other module's output too.
    """
    todo: list[tuple[str, AdapterLayer]] = []
    seen: set[int] = set()
    for slot in iter_slots(model):
        for adapter in reversed(slot.chain()):
            if id(adapter) in seen:
                continue
            seen.add(id(adapter))
            if (adapter_name is None or adapter.adapter_name == adapter_name) and adapter.active and not adapter.merged:
                todo.append((slot.name, adapter))
    tied = _tied_weight_owners(model)
    for name, adapter in todo:
        if not adapter.mergeable:
            adapter.merge()  # raises its TypeError before anything is merged
        owners = tied.get(id(adapter.root.weight))
        if owners:
            others = [_strip_base(o) for o in owners if _strip_base(o) != name]
            raise ValueError(
                f"layer {name!r} shares its weight with {', '.join(others)} (tied weights); merging would change "
                f"those layers too. Keep the adapter unmerged, or untie the weights first"
            )
    for _, adapter in todo:
        adapter.merge()
    return len(todo)


def unmerge(model: nn.Module, adapter_name: Optional[str] = None) -> int:
    """Undo :func:`merge` (outermost first), restoring the base weights bit-exactly."""
    count = 0
    for slot in iter_slots(model):
        chain = slot.chain()
        targets = [a for a in chain if a.merged and (adapter_name is None or a.adapter_name == adapter_name)]
        if not targets:
            continue
        # everything merged above the innermost target must come off first
        innermost = chain.index(targets[-1])
        for adapter in chain[: innermost + 1]:
            if adapter.merged:
                adapter.unmerge()
                count += 1
    return count


def remove(model: nn.Module, adapter_name: Optional[str] = None, *, keep_merged: bool = False) -> int:
    """Take adapters out (all, or those named ``adapter_name``), restoring the original layer objects.

    By default merged adapters are unmerged first, so the base state dict comes back bit-exactly.
    With ``keep_merged=True`` the active adapters are merged and their update stays in the weights
    (a plain model with the adapted weights, for deployment). Returns the number of adapter layers removed
    (an adapter reached under several names counts once).
    """
    if keep_merged:
        if adapter_name is not None and len({a.adapter_name for a in adapter_layers(model).values()}) > 1:
            raise ValueError("keep_merged=True needs a model with one adapter name (merge order of stacked adapters)")
        merge(model, adapter_name)
    removed: set[int] = set()
    for slot in iter_slots(model):
        chain = slot.chain()
        if not any(adapter_name is None or a.adapter_name == adapter_name for a in chain):
            continue
        for adapter in chain:
            if keep_merged:
                adapter.commit_merge()
            else:
                adapter.unmerge()
        kept = [a for a in chain if not (adapter_name is None or a.adapter_name == adapter_name)]
        removed.update(id(a) for a in chain if a not in kept)
        module: nn.Module = slot.root
        for adapter in reversed(kept):
            adapter.base_layer = module
            module = adapter
        setattr(slot.parent, slot.attr, module)
    if not adapter_layers(model) and _REQUIRES_GRAD_ATTR in model.__dict__:
        for p, flag in model.__dict__.pop(_REQUIRES_GRAD_ATTR):
            p.requires_grad_(flag)
    return len(removed)


def set_active(model: nn.Module, adapter_name: Union[None, str, Sequence[str]]) -> None:
    """Activate the named adapter(s) (their parameters become trainable); others pass through. ``None``: base model."""
    names = set() if adapter_name is None else {adapter_name} if isinstance(adapter_name, str) else set(adapter_name)
    layers = adapter_layers(model)
    known = {a.adapter_name for a in layers.values()}
    unknown = names - known
    if unknown:
        raise ValueError(f"no adapter named {sorted(unknown)} on this model; adapters present: {sorted(known)}")
    for adapter in layers.values():
        on = adapter.adapter_name in names
        if adapter.merged and not on:
            raise RuntimeError(f"adapter {adapter.adapter_name!r} is merged; unmerge it before deactivating")
        adapter.active = on
        for _, p in adapter.adapter_parameters():
            p.requires_grad_(on)
