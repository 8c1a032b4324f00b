"""MTLoRA (``mtlora``): a shared (task-agnostic) LoRA plus one task-specific LoRA per task.

Math and choices are in ``core.functional.mtlora``. ``apply(model, "mtlora", rank=8, tasks=("seg", "depth"))``
gives every wrapped layer the shared factors and a pair per task; :func:`set_task` picks what the
model runs: one task (every layer adds that task's update), ``None`` (the shared update alone), or
``"all"`` (the paper's one-pass form: the network runs the shared path and every MTLoRA layer also
emits one feature per task, read with :func:`task_outputs`; :func:`forward_all_tasks` does both).
The mode is run-time state: it is not saved, and a freshly built or loaded adapter starts on the
first task. Parameters of the tasks that are not active, or whose features the loss does not use,
get no gradient, so an optimizer leaves them alone. Merging folds in the active task's update (in
``"all"`` mode the shared one; the task branches still run on the input); :func:`set_task` refuses
to switch while merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from ..functional import lora as F_lora
from ..functional import mtlora as F_mt
from ..functional.layout import LayerGeometry
from ..validate import is_int, require
from .base import DeltaAdapter, LowRankDelta
from .lora import LoRADelta
from .registry import register_adapter

__all__ = ["ALL_TASKS", "MTLoRAOptions", "MTLoRADelta", "MTLoRA", "set_task", "task_outputs", "forward_all_tasks"]

ALL_TASKS = "all"
"""The :func:`set_task` value that runs every task in one pass (so no task may be named ``"all"``)."""


@dataclass
class MTLoRAOptions:
    tasks: tuple[str, ...] = ("task0",)
    """Task names (identifiers); each gets its own task-specific factors."""
    task_rank: Optional[int] = None
    """Rank of each task-specific update; ``None`` means the shared rank."""

    def __post_init__(self) -> None:
        if isinstance(self.tasks, list):
            self.tasks = tuple(self.tasks)  # from a saved JSON config
        ok = isinstance(self.tasks, tuple) and len(self.tasks) > 0 and all(isinstance(t, str) and t.isidentifier() for t in self.tasks)
        ok = ok and len(set(self.tasks)) == len(self.tasks) and ALL_TASKS not in self.tasks
        require(self, "tasks", ok, f"a non-empty tuple of distinct identifier strings other than {ALL_TASKS!r}")
        require(self, "task_rank", self.task_rank is None or is_int(self.task_rank, 1), "None or an integer >= 1")


class MTLoRADelta(LoRADelta):
    """``dW = scale * (B_s A_s + B_t A_t)`` for the active task ``t``; ``scale * B_s A_s`` with none or all."""

    param_names = ("shared_A", "shared_B", "task_A", "task_B")

    def __init__(self, geometry: LayerGeometry, rank: int, options: Optional[MTLoRAOptions] = None, *, layer_name: str = "", dtype=None, device=None):
        LowRankDelta.__init__(self, geometry, rank)
        options = options or MTLoRAOptions()
        shared_a, shared_b = F_lora.init_lora_factors(geometry, rank, dtype=dtype, device=device)
        self.shared_A, self.shared_B = nn.Parameter(shared_a), nn.Parameter(shared_b)
        task_rank = options.task_rank or rank
        self.task_A, self.task_B = nn.ParameterDict(), nn.ParameterDict()
        for task in options.tasks:
            task_a, task_b = F_lora.init_lora_factors(geometry, task_rank, dtype=dtype, device=device)
            self.task_A[task], self.task_B[task] = nn.Parameter(task_a), nn.Parameter(task_b)
        self.tasks = tuple(options.tasks)
        self.active_task: Optional[str] = self.tasks[0]

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Optional[MTLoRAOptions] = None) -> int:
        options = options or MTLoRAOptions()
        return F_mt.mtlora_param_count(geometry, rank, options.task_rank or rank, len(options.tasks))

    def factors(self) -> tuple[Tensor, Tensor]:
        if self.active_task in (None, ALL_TASKS):
            return F_mt.stacked_factors(self.shared_A, self.shared_B)
        return F_mt.stacked_factors(self.shared_A, self.shared_B, self.task_A[self.active_task], self.task_B[self.active_task])


@register_adapter("mtlora")
class MTLoRA(DeltaAdapter):
    """MTLoRA (CVPR 2024): task-agnostic plus task-specific low-rank updates."""

    delta_cls = MTLoRADelta
    options_cls = MTLoRAOptions

    @property
    def active_task(self) -> Optional[str]:
        return self.delta.active_task

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tasks={self.delta.tasks}, active_task={self.active_task!r}"

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        out = super().forward(x, *args, **kwargs)
        self.task_features: Optional[dict[str, Tensor]] = None
        if self.active_task == ALL_TASKS and self.active:
            d = self.delta
            factors = {t: (d.task_A[t], d.task_B[t]) for t in d.tasks}
            self.task_features = F_mt.task_branch_outputs(self.root, self.dropout(x), out, factors, self.geometry, self.scale, **kwargs)
        return out


def _mtlora_layers(model: nn.Module, adapter_name: Optional[str]) -> list[MTLoRA]:
    from ..inject import adapter_layers  # inject imports the adapters package

    layers = [a for a in adapter_layers(model, adapter_name, unique=True).values() if isinstance(a, MTLoRA)]
    if not layers:
        raise ValueError(f"model has no mtlora adapter{'' if adapter_name is None else f' named {adapter_name!r}'}")
    return layers


def set_task(model: nn.Module, task: Optional[str], adapter_name: Optional[str] = None) -> int:
    """Make every MTLoRA layer (of ``adapter_name`` if given) run ``task``: a task name, ``None`` (shared
    update only) or ``"all"`` (shared path plus every task's features in one pass, see :func:`task_outputs`).

    Returns the number of layers switched. Raises ``ValueError`` naming the known tasks for an unknown
    one, and ``RuntimeError`` if a layer is merged (unmerge first), before switching anything.
    """
    layers = _mtlora_layers(model, adapter_name)
    for layer in layers:
        if task not in (None, ALL_TASKS) and task not in layer.delta.tasks:
            raise ValueError(f"task must be None, {ALL_TASKS!r} or one of {layer.delta.tasks} (adapter {layer.adapter_name!r}), got {task!r}")
        if layer.merged and task != layer.active_task:
            raise RuntimeError(f"adapter {layer.adapter_name!r} on {layer.layer_name or 'a layer'} is merged for task "
                               f"{layer.active_task!r}; unmerge it before switching tasks")
    for layer in layers:
        layer.delta.active_task = task
    return len(layers)


def task_outputs(model: nn.Module, adapter_name: Optional[str] = None) -> dict[str, dict[str, Tensor]]:
    """``{task: {layer name: feature}}`` from the last forward in ``"all"`` mode (autograd graph kept).

    Each feature is that layer's output with the shared update plus the task's own (see
    ``core.functional.mtlora``). The stored features are released (a second call raises).
    Raises ``RuntimeError`` if the last forward of a layer did not run in ``"all"`` mode.
    """
    features: dict[str, dict[str, Tensor]] = {}
    for name, layer in ((a.layer_name, a) for a in _mtlora_layers(model, adapter_name)):
        per_task = getattr(layer, "task_features", None)
        if per_task is None:
            raise RuntimeError(f"layer {name or '?'} has no task features: call set_task(model, {ALL_TASKS!r}) and run a forward first")
        for task, feature in per_task.items():
            features.setdefault(task, {})[name] = feature
        layer.task_features = None
    return features


def forward_all_tasks(model: nn.Module, *args: Any, adapter_name: Optional[str] = None, **kwargs: Any) -> tuple[Any, dict[str, dict[str, Tensor]]]:
    """One forward of ``model(*args, **kwargs)`` in ``"all"`` mode: ``(shared-path output, task_outputs(model))``.

    The previous mode of every layer is restored afterwards.
    """
    layers = _mtlora_layers(model, adapter_name)
    previous = [layer.delta.active_task for layer in layers]
    set_task(model, ALL_TASKS, adapter_name)
    try:
        out = model(*args, **kwargs)
        return out, task_outputs(model, adapter_name)
    finally:
        for layer, task in zip(layers, previous):
            layer.delta.active_task = task
