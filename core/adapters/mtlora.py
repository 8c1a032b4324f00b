"""MTLoRA (``mtlora``): a shared (task-agnostic) LoRA plus one task-specific LoRA per task, one task at a time.

Math and choices are in ``core.functional.mtlora``. ``apply(model, "mtlora", rank=8, tasks=("seg", "depth"))``
gives every wrapped layer the shared factors and a pair per task; :func:`set_task` picks the task the
model runs (``None``: the shared update alone). The active task is run-time state: it is not saved,
and a freshly built or loaded adapter starts on the first task. Parameters of the tasks that are not
active get no gradient, so an optimizer leaves them alone. Merging folds in the active task's update;
:func:`set_task` refuses while merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ..functional import lora as F_lora
from ..functional import mtlora as F_mt
from ..functional.layout import LayerGeometry
from ..validate import is_int, require
from .base import DeltaAdapter, LowRankDelta
from .lora import LoRADelta
from .registry import register_adapter

__all__ = ["MTLoRAOptions", "MTLoRADelta", "MTLoRA", "set_task"]


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
        require(self, "tasks", ok and len(set(self.tasks)) == len(self.tasks), "a non-empty tuple of distinct identifier strings")
        require(self, "task_rank", self.task_rank is None or is_int(self.task_rank, 1), "None or an integer >= 1")


class MTLoRADelta(LoRADelta):
    """``dW = scale * (B_s A_s + B_t A_t)`` for the active task ``t``."""

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
        if self.active_task is None:
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


def set_task(model: nn.Module, task: Optional[str], adapter_name: Optional[str] = None) -> int:
    """Make every MTLoRA layer (of ``adapter_name`` if given) run ``task`` (``None``: shared update only).

    Returns the number of layers switched. Raises ``ValueError`` naming the known tasks for an unknown
    one, and ``RuntimeError`` if a layer is merged (unmerge first), before switching anything.
    """
    from ..inject import adapter_layers  # inject imports the adapters package

    layers = [a for a in adapter_layers(model, adapter_name, unique=True).values() if isinstance(a, MTLoRA)]
    if not layers:
        raise ValueError(f"model has no mtlora adapter{'' if adapter_name is None else f' named {adapter_name!r}'}")
    for layer in layers:
        if task is not None and task not in layer.delta.tasks:
            raise ValueError(f"task must be None or one of {layer.delta.tasks} (adapter {layer.adapter_name!r}), got {task!r}")
        if layer.merged and task != layer.active_task:
            raise RuntimeError(f"adapter {layer.adapter_name!r} on {layer.layer_name or 'a layer'} is merged for task "
                               f"{layer.active_task!r}; unmerge it before switching tasks")
    for layer in layers:
        layer.delta.active_task = task
    return len(layers)
