"""One small training loop shared by every plugin, built on Hugging Face ``accelerate``.

The same :func:`fit` call runs on a CPU, one GPU, or several GPUs/hosts when the script is started
with ``accelerate launch`` or ``torchrun`` (``accelerate`` reads the launcher's environment and wraps
the model in DDP; there is no distributed code here).

Choices this module makes (none of them come from a paper):

* The optimizer is AdamW over the parameters with ``requires_grad`` only (the adapter parameters
  after :func:`lowrank_vision.core.apply`), or over ``param_groups`` when given.
* ``max_steps`` counts *optimizer* steps. Gradient accumulation treats the loader as an endless
  stream: an optimizer step happens after every ``grad_accum`` micro-batches, across epoch ends.
  Each micro-batch loss is divided by ``grad_accum`` and DDP gradient synchronisation is skipped
  (``accelerator.no_sync``) on the non-final micro-batches.
* The learning-rate schedule is linear warm-up then constant or cosine decay to 0 at ``max_steps``;
  it is stepped once per optimizer step (not once per process, unlike a prepared scheduler).
* Shuffling uses accelerate's seedable sampler, so the order of epoch ``e`` depends on
  ``(seed, e)`` only. A checkpoint (``accelerator.save_state``: model, optimizer, scaler, scheduler,
  every process's RNG states) plus ``trainer_state.json`` (step, micro-batches consumed, history)
  is written every ``checkpoint_every`` steps into ``output_dir/checkpoints/step_<N>`` (written to a
  temporary folder, then renamed). ``resume=True`` loads the newest complete checkpoint, rebuilds
  the epoch's batch order, skips the batches already consumed (``accelerator.skip_first_batches``)
  and restores the RNG states *after* the data iterator is created, so an interrupted run finishes
  with the same weights as an uninterrupted one. This is exact when a dataset item depends only on
  its index (model-side randomness such as dropout is restored); random augmentations drawn from
  the global RNG inside ``__getitem__`` or in loader workers are not replayed exactly.
* ``cuda_graph=True`` captures the whole optimizer step (forward, backward, gradient clipping, AdamW
  with ``capturable=True`` and a tensor learning rate that the schedule fills in place) once in a
  ``torch.cuda.graph`` after ``_GRAPH_WARMUP`` eager steps on a side stream, then replays it with each batch
  copied into the captured (static) input tensors. Eager steps are used instead, and the reason is
  recorded in ``TrainResult.cuda_graph``, on a CPU, with several processes (DDP), with ``grad_accum > 1``,
  with fp16 (the gradient scaler's skipped steps are host decisions), when ``loss_fn`` returns extra
  metrics as host floats (0-d tensors are captured and read after each replay), when the capture raises,
  and for any batch whose tensor shapes/dtypes differ from the captured one (only that batch; e.g. a short
  last batch). In graph mode a non-finite loss is
  detected after that step's update (the check needs the host), not before it. Before the warm-up, adapter
  layers whose compiled weight build measured faster under graphs (convolutions, DoRA) are switched to it
  (``core.adapters.base.fuse_builds_for_capture``; ``cuda_graph_fused_builds=False`` skips it); their names go to
  ``TrainResult.cuda_graph["fused_builds"]``.
* ``optimizer_impl`` picks the AdamW kernel (``auto``: fused on an eager CUDA run, foreach otherwise; a
  resumed checkpoint gets this run's kernel back); ``TrainResult.optimizer`` records it.
* ``strategy_tuning`` ("layer"/"model") times the adapter layers' execution strategies on the first batch
  before the first step (``core.tune``; every RNG is put back afterwards, so the run draws the same dropout
  and data as an untuned one) and records each choice and its times in ``TrainResult.strategies``.
* Metrics (``step``, ``loss``, ``lr``, anything ``loss_fn`` returns, ``eval_*`` from ``eval_fn``)
  are appended, one JSON object per line, to ``output_dir/metrics.jsonl``; on resume, lines past
  the checkpoint's step (written by the interrupted run) are dropped first.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import torch
from torch import nn

from .files import append_text, replace_dir, write_json, write_text
from .validate import require

__all__ = ["TrainConfig", "TrainResult", "StopTraining", "WholeStepGraph", "describe_graph_records", "fit", "latest_checkpoint", "read_metrics"]

_CKPT_PREFIX = "step_"


@dataclass
class TrainConfig:
    """Settings of :func:`fit`; every field is validated on construction, naming the bad one."""

    max_steps: int = 100
    """Number of optimizer steps."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast dtype (fp16 also uses a gradient scaler; fp16 needs a GPU)."""
    scheduler: Literal["constant", "cosine"] = "cosine"
    """Learning-rate shape after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many optimizer steps."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this value (``None``: no clipping)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N optimizer steps and at the end (0: never)."""
    output_dir: Optional[str] = None
    """Folder for ``metrics.jsonl`` and ``checkpoints/`` (``None``: write nothing)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir/checkpoints`` if there is one."""
    log_every: int = 10
    """Append a metrics line every N optimizer steps (and always after the last one)."""
    seed: int = 0
    """Seed of every RNG (python, numpy, torch, CUDA) and of the shuffling order."""
    progress: bool = True
    """Show a tqdm bar with the running loss on the main process."""
    cpu: bool = False
    """Force the CPU even when a GPU is visible."""
    keep_last: int = 2
    """How many checkpoints to keep (older ones are deleted; 0 keeps all)."""
    eval_every: int = 0
    """Call ``eval_fn`` every N optimizer steps (0: only after the last step)."""
    cuda_graph: bool = False
    """Replay the whole optimizer step as one captured CUDA graph (static shapes; eager fallback, see the module docstring)."""
    cuda_graph_fused_builds: bool = True
    """With ``cuda_graph``: switch the adapter layers whose compiled weight build measured faster under graphs to it
    before the warm-up (``core.adapters.base.fuse_builds_for_capture``); ``False`` skips the compile (a one-off cost)."""
    optimizer_impl: Literal["auto", "fused", "foreach", "plain"] = "auto"
    """AdamW kernel: ``fused`` (one kernel for all parameters), ``foreach`` (multi-tensor ops), ``plain`` (a loop
    over parameters); ``auto`` is fused on an eager CUDA run, foreach otherwise (the chosen one is in ``TrainResult.optimizer``)."""
    strategy_tuning: Literal["off", "layer", "model"] = "off"
    """Before the first step, time each adapter layer's strategies on the first batch and keep the fastest (``layer``),
    then also time whole steps under the per-layer, cost-model, all-weight and all-activation assignments (``model``);
    see ``core.tune``. The choices and their times are in ``TrainResult.strategies``."""

    def __post_init__(self) -> None:
        require(self, "max_steps", isinstance(self.max_steps, int) and self.max_steps >= 1, "an int >= 1")
        require(self, "lr", self.lr > 0, "> 0")
        require(self, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, "grad_accum", isinstance(self.grad_accum, int) and self.grad_accum >= 1, "an int >= 1")
        require(self, "mixed_precision", self.mixed_precision in ("no", "bf16", "fp16"), "one of 'no', 'bf16', 'fp16'")
        require(self, "scheduler", self.scheduler in ("constant", "cosine"), "one of 'constant', 'cosine'")
        require(self, "warmup_steps", isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "an int >= 0")
        require(self, "max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0, "None or > 0")
        require(self, "checkpoint_every", isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0, "an int >= 0")
        require(self, "log_every", isinstance(self.log_every, int) and self.log_every >= 1, "an int >= 1")
        require(self, "keep_last", isinstance(self.keep_last, int) and self.keep_last >= 0, "an int >= 0")
        require(self, "eval_every", isinstance(self.eval_every, int) and self.eval_every >= 0, "an int >= 0")
        require(self, "cuda_graph", isinstance(self.cuda_graph, bool), "a bool")
        require(self, "cuda_graph_fused_builds", isinstance(self.cuda_graph_fused_builds, bool), "a bool")
        require(self, "optimizer_impl", self.optimizer_impl in ("auto", "fused", "foreach", "plain"), "one of 'auto', 'fused', 'foreach', 'plain'")
        require(self, "strategy_tuning", self.strategy_tuning in ("off", "layer", "model"), "one of 'off', 'layer', 'model'")
        if (self.checkpoint_every or self.resume) and self.output_dir is None:
            raise ValueError("TrainConfig.output_dir must be set when checkpoint_every > 0 or resume=True")


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    steps: int
    """Optimizer steps done in total (including those before a resume)."""
    final_loss: float
    """Mean loss over the micro-batches of the last optimizer step (averaged over processes)."""
    history: list = field(default_factory=list)
    """Every metrics line written (one dict per logged step)."""
    model: Optional[nn.Module] = None
    """The trained model, unwrapped from DDP/autocast."""
    cuda_graph: dict = field(default_factory=dict)
    """Whole-step graph record: ``requested``, ``captured``, ``graph_steps``, ``eager_steps``, ``fallback_reason``
    (why the run, or its first eager batch after capture, was not replayed; ``None`` when every step after warm-up was),
    ``fused_builds`` (the adapter layers switched to the compiled weight build: ``core.adapters.base.fuse_builds_for_capture``;
    ``None`` with ``cuda_graph_fused_builds=False``)."""
    optimizer: dict = field(default_factory=dict)
    """The AdamW kernel used: ``requested`` (``TrainConfig.optimizer_impl``), ``impl`` (fused/foreach/plain), ``reason``."""
    stopped: Optional[str] = None
    """Why a callback ended the run before ``max_steps`` (:class:`StopTraining`'s message); ``None``: it ran them all."""
    strategies: dict = field(default_factory=dict)
    """Measured strategy choice (``TrainConfig.strategy_tuning``): ``mode`` and, when tuned, ``layers``:
    ``{layer name: core.tune strategy_choice record}`` (cost model's pick, measured times, source)."""


class StopTraining(Exception):
    """Raised by a :func:`fit` callback to end the run after the current step (a wall-clock deadline, early stopping):
    ``fit`` returns as after its last step, with ``TrainResult.stopped`` set to the message and the whole-step graph
    record kept. Any other exception from a callback propagates (e.g. to simulate a kill). Under DDP the callback must
    stop every process at the same step."""


# ----------------------------------------------------------------------------- pure helpers


def lr_factor(step: int, *, max_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate before optimizer step ``step`` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def latest_checkpoint(output_dir: str | os.PathLike) -> Optional[Path]:
    """Newest complete ``checkpoints/step_<N>`` folder under ``output_dir`` (``None`` if there is none)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(_CKPT_PREFIX) and p.name[len(_CKPT_PREFIX):].isdigit():
            if (p / "trainer_state.json").is_file():
                found.append((int(p.name[len(_CKPT_PREFIX):]), p))
    return max(found)[1] if found else None


def read_metrics(output_dir: str | os.PathLike) -> list[dict]:
    """The lines of ``output_dir/metrics.jsonl`` as dicts (empty if the file does not exist)."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [record for record in map(_parse_line, path.read_text().splitlines()) if record is not None]


def _parse_line(line: str) -> Optional[dict]:
    """One metrics line as a dict; ``None`` for a blank line or one torn by a crash mid-append."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _truncate_metrics(output_dir: Path, max_step: int) -> None:
    """Drop metrics lines written after ``max_step`` by an interrupted run (atomic rewrite)."""
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if (record := _parse_line(line)) is not None and record.get("step", 0) <= max_step]
    write_text(path, "".join(line + "\n" for line in kept))


def _as_loss(out: Any) -> tuple[torch.Tensor, dict]:
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], dict):
            raise TypeError("loss_fn must return a loss tensor or a (loss, dict of floats or 0-d tensors) tuple")
        loss, extra = out
    else:
        loss, extra = out, {}
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn must return a scalar tensor as the loss, got {type(loss).__name__}")
    return loss, extra


class _StepScheduler:
    """LambdaLR wrapper that is checkpointed with ``accelerator.register_for_checkpointing``."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, max_steps=config.max_steps, warmup_steps=config.warmup_steps, kind=config.scheduler),
        )

    def step(self) -> None:
        self.sched.step()

    def get_last_lr(self) -> list[float]:
        return self.sched.get_last_lr()

    def state_dict(self) -> dict:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state)


def _new_accelerator(config: TrainConfig):
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        # Several fit() calls in one single-process program may use different precisions and devices: PartialState
        # keeps the first call's device, so without its reset a CUDA fit after a CPU one silently ran on the CPU.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise ValueError("TrainConfig.mixed_precision='fp16' needs a CUDA device; use 'bf16' or 'no' on the CPU")
    from accelerate.utils import AutocastKwargs

    return Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        # autocast's cast cache holds tensors made outside the capture; a captured graph must not rely on it
        kwargs_handlers=[AutocastKwargs(cache_enabled=False)] if config.cuda_graph else [],
    )


# ----------------------------------------------------------------------------- whole-step CUDA graph

_GRAPH_WARMUP = 3
"""Eager steps on a side stream before the capture (lazy state: optimizer moments, cuBLAS workspaces, autotuning)."""


def graph_fallback_reason(config: TrainConfig, device_type: str, num_processes: int) -> Optional[str]:
    """Why a run cannot use a whole-step CUDA graph at all (``None``: it can, or it was not asked for)."""
    if not config.cuda_graph:
        return None
    if device_type != "cuda":
        return f"device is {device_type}: CUDA graphs need a CUDA device"
    if num_processes > 1:
        return f"{num_processes} processes: the whole-step graph is single-process (DDP's reducer is not captured)"
    if config.grad_accum > 1:
        return f"grad_accum={config.grad_accum}: the captured step holds one micro-batch"
    if config.mixed_precision == "fp16":
        return "mixed_precision='fp16': the gradient scaler decides on the host whether a step is skipped"
    return None


def _set_lr_kind(optimizer: torch.optim.Optimizer, device: Optional[torch.device]) -> None:
    """Every group's lr as a 0-d tensor on ``device`` (graph mode: the captured step reads it) or, with ``None``, as a float.

    For graph mode the groups are also made ``capturable`` with their ``step`` counters on ``device``: a checkpoint
    written by an eager run brings back ``capturable=False`` groups and host step counters."""
    for group in optimizer.param_groups:
        if device is not None and not group.get("capturable", False):
            group["capturable"] = True
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].to(device=device, dtype=torch.float32)
        for key in ("lr", "initial_lr"):
            if key not in group:
                continue
            value = group[key]
            if device is not None and not isinstance(value, torch.Tensor):
                group[key] = torch.tensor(float(value), device=device)
            elif device is None and isinstance(value, torch.Tensor):
                group[key] = float(value)


def choose_optimizer_impl(requested: str, device_type: str, use_graph: bool, params: Sequence[torch.Tensor]) -> tuple[str, str]:
    """``(impl, reason)`` of the AdamW kernel for ``TrainConfig.optimizer_impl``; a fused request that cannot run falls back to foreach."""
    floating = all(p.is_floating_point() for p in params)
    if requested == "fused" and not floating:
        return "foreach", "fused AdamW needs floating-point parameters"
    if requested != "auto":
        return requested, "requested"
    if device_type == "cuda" and floating and not use_graph:
        return "fused", "auto: eager CUDA run"
    if use_graph:
        return "foreach", "auto: whole-step graph (the captured capturable foreach step replays as one graph already)"
    return "foreach", f"auto: {device_type} device"


def _new_adamw(param_groups: Sequence[dict], impl: str, **kwargs) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(param_groups), fused=impl == "fused" or None, foreach=impl == "foreach", **kwargs)


def _set_optimizer_impl(optimizer: torch.optim.Optimizer, impl: str) -> None:
    """A loaded state dict brings back the writer's kernel flags; put this run's back."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True if impl == "fused" else None), impl == "foreach"


def _tune_before_training(model: nn.Module, raw: nn.Module, batch: Any, loss_fn: Callable, config: TrainConfig,
                          device: torch.device) -> dict:
    """Measured strategy choice on ``batch`` (``core.tune``), with every RNG put back so training draws what it would have."""
    from .tune import strategy_choices, tune_strategies

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if device.type == "cuda" else "cuda"):
        model.train()
        tune_strategies(raw, lambda _raw: _as_loss(loss_fn(model, batch))[0], autocast_dtype=amp, repeats=3,
                        whole_model=config.strategy_tuning == "model")
    return {"mode": config.strategy_tuning, "layers": strategy_choices(raw)}


def batch_signature(batch: Any) -> tuple:
    """Structure, tensor shapes/dtypes/devices and non-tensor values of a batch: a replay needs all of them equal."""
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten(batch)
    return (str(spec),) + tuple(
        (tuple(x.shape), str(x.dtype), str(x.device)) if isinstance(x, torch.Tensor) else ("value", repr(x)) for x in leaves
    )


def _runs(names: list) -> str:
    """``"2 runs (a, b)"``: a count and the first names."""
    return f"{len(names)} run{'s' if len(names) != 1 else ''} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"


def describe_graph_records(records: dict, missing_why: str = "") -> str:
    """One report line from several runs' ``TrainResult.cuda_graph`` records (``{run name: record or None}``): in how
    many runs that asked for whole-step graphs the step was captured, the replayed and eager steps, each fallback reason
    with its runs, fused builds, and the runs with no record (``None``; ``missing_why`` says why, e.g. a deadline)."""
    if not records:
        return "Whole-step CUDA graphs: no training run recorded."
    missing = sorted(n for n, r in records.items() if r is None)
    known = {n: r for n, r in records.items() if r is not None}
    asked = {n: r for n, r in known.items() if r.get("requested")}
    parts = []
    if known and not asked:
        parts.append(f"off (`--eager`) in all {len(known)} recorded runs")
    if asked:
        captured = [n for n, r in asked.items() if r.get("captured")]
        replays, eager = sum(r.get("graph_steps", 0) for r in asked.values()), sum(r.get("eager_steps", 0) for r in asked.values())
        parts.append(f"captured in {len(captured)} of {len(asked)} runs that asked for them ({replays:,} replayed steps, {eager:,} eager)")
        reasons: dict = {}
        for n, r in asked.items():
            if r.get("fallback_reason"):
                reasons.setdefault(r["fallback_reason"], []).append(n)
        parts += [f"fallback \"{reason}\" in {_runs(names)}" for reason, names in reasons.items()]
        fused = {n: len(r["fused_builds"]) for n, r in asked.items() if r.get("fused_builds")}
        if fused:
            parts.append("fused weight builds in " + ", ".join(f"{n} ({k} layers)" for n, k in fused.items()))
    if missing:
        parts.append(f"no record for {_runs(missing)}" + (f", {missing_why}" if missing_why else ""))
    return "**Whole-step CUDA graphs:** " + "; ".join(parts) + "."


def _release_cuda_rng_from_capture(state: torch.Tensor) -> None:
    """After a failed capture: the current device's default CUDA generator gets a fresh state holding ``state``.

    A capture that raises never reaches the generator's capture epilogue, so the generator stays marked as
    capturing and the next eager random draw fails ("Offset increment outside graph capture"); a state made by a
    new generator is not marked."""
    fresh = torch.Generator(device="cuda")
    fresh.set_state(state)
    torch.cuda.default_generators[torch.cuda.current_device()].graphsafe_set_state(fresh.graphsafe_get_state())


class WholeStepGraph:
    """Warm-up, capture and replay of forward + backward + clipping + optimizer step (see the module docstring).

    Usable outside :func:`fit` by a loop of its own: build the optimizer with ``capturable=True`` and a tensor
    learning rate (fill it in place for a schedule), call :meth:`step` with each batch, and do not zero the
    gradients in between (the eager fallback zeroes them itself; in graph mode they live in the graph's pool)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, max_grad_norm: Optional[float],
                 *, fuse_builds: bool = True):
        self.model, self.optimizer, self.loss_fn, self.max_grad_norm = model, optimizer, loss_fn, max_grad_norm
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.warmup_left = _GRAPH_WARMUP
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_batch = self.static_loss = self.signature = None
        self.static_extra: dict[str, torch.Tensor] = {}
        self.given_up = False
        self.record = {"requested": True, "captured": False, "graph_steps": 0, "eager_steps": 0, "fallback_reason": None}
        self.record["fused_builds"] = None  # None: not asked (fuse_builds=False)
        if fuse_builds:  # before the warm-up, so the compiled builds compile eagerly, never inside the capture
            from .adapters.base import fuse_builds_for_capture  # here: this module imports no adapter code at load

            self.record["fused_builds"] = fuse_builds_for_capture(model)

    def _update(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()

    def _eager(self, batch: Any, note: Optional[str] = None) -> tuple[torch.Tensor, dict]:
        if note is not None and self.record["fallback_reason"] is None:
            self.record["fallback_reason"] = note
        self.record["eager_steps"] += 1
        loss, extra = _as_loss(self.loss_fn(self.model, batch))
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss is {loss.item()}")
        self._update(loss)
        self.optimizer.zero_grad(set_to_none=True)
        host = sorted(k for k, v in extra.items() if not isinstance(v, torch.Tensor))
        if host and self.graph is None and not self.given_up:
            self._give_up(f"loss_fn returns extra metrics {host} as host floats (return 0-d tensors to capture them)")
        return loss.detach().float(), extra

    def _give_up(self, reason: str) -> None:
        """Eager for the rest of the run, said in the record and as a warning (a silent fallback hid a host copy in
        the hemorrhage recipe's loss for two sessions)."""
        self.given_up = True
        self.record["fallback_reason"] = reason
        warnings.warn(f"whole-step CUDA graph off, the run goes on eager: {reason}", RuntimeWarning, stacklevel=3)

    def step(self, batch: Any) -> tuple[torch.Tensor, dict]:
        """One optimizer step on ``batch``: returns (the loss as a 0-d float tensor, extra metrics)."""
        if self.given_up:
            return self._eager(batch)
        if self.graph is None and self.warmup_left > 0:
            self.warmup_left -= 1
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                out = self._eager(batch)
            main.wait_stream(side)
            return out
        signature = batch_signature(batch)
        if self.graph is None:
            rng = torch.cuda.get_rng_state()
            try:
                self._capture(batch, signature)
            except Exception as exc:  # an op that cannot be captured: stay eager for the whole run
                self.graph = None
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                _release_cuda_rng_from_capture(rng)
                self._give_up(f"capture failed: {type(exc).__name__}: {str(exc)[:300]}")
                return self._eager(batch)
        elif signature != self.signature:
            static_grads = [p.grad for p in self.params]
            for p in self.params:
                p.grad = None
            out = self._eager(batch, f"batch shapes changed after capture: {signature[1:]} vs captured {self.signature[1:]}")
            for p, g in zip(self.params, static_grads):
                p.grad = g
            return out
        else:
            from torch.utils._pytree import tree_leaves

            for static, new in zip(tree_leaves(self.static_batch), tree_leaves(batch)):
                if isinstance(static, torch.Tensor):
                    static.copy_(new, non_blocking=True)
        self.graph.replay()
        self.record["graph_steps"] += 1
        loss = self.static_loss.clone()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} (the captured step has already applied its update)")
        return loss, {k: v.clone() for k, v in self.static_extra.items()}

    def _capture(self, batch: Any, signature: tuple) -> None:
        from torch.utils._pytree import tree_map

        self.static_batch = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, batch)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, extra = _as_loss(self.loss_fn(self.model, self.static_batch))
            self._update(loss)
            self.static_loss = loss.detach().float()
            self.static_extra = {k: v.detach().float() for k, v in extra.items()}
        self.graph, self.signature = graph, signature
        self.record["captured"] = True


# ----------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: Callable[[nn.Module, Any], Any],
    config: TrainConfig,
    *,
    param_groups: Optional[Sequence[dict]] = None,
    callbacks: Sequence[Callable[[int, nn.Module, dict], Any]] = (),
    eval_fn: Optional[Callable[[nn.Module], dict]] = None,
) -> TrainResult:
    """Train ``model`` for ``config.max_steps`` optimizer steps; see the module docstring.

    ``loss_fn(model, batch)`` returns a scalar loss or ``(loss, {name: float})``; the batch is already
    on the device. ``callbacks`` are called as ``cb(step, model, metrics)`` after every optimizer step
    (``model`` unwrapped); one that raises :class:`StopTraining` ends the run there and ``fit`` returns normally
    (``TrainResult.stopped``), any other exception propagates (e.g. to simulate a kill).
    ``eval_fn(model) -> {name: float}`` runs every ``config.eval_every`` steps and after the last one,
    in eval mode, under ``torch.no_grad``; its values are logged with an ``eval_`` prefix.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(train_loader, torch.utils.data.DataLoader):
        raise TypeError(f"train_loader must be a torch.utils.data.DataLoader, got {type(train_loader).__name__}")
    if len(train_loader) == 0:
        raise ValueError("train_loader yields no batches (empty dataset, or drop_last with fewer items than batch_size)")
    if config.eval_every and eval_fn is None:
        raise ValueError(f"TrainConfig.eval_every must be 0 when fit() gets no eval_fn, got {config.eval_every!r}")

    accelerator = _new_accelerator(config)
    set_seed(config.seed)
    out_dir = Path(config.output_dir) if config.output_dir else None
    if out_dir is not None and accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)

    if param_groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no parameter with requires_grad=True; nothing to train")
        param_groups = [{"params": params}]
    graph_reason = graph_fallback_reason(config, accelerator.device.type, accelerator.num_processes)
    use_graph = config.cuda_graph and graph_reason is None
    impl, impl_reason = choose_optimizer_impl(config.optimizer_impl, accelerator.device.type, use_graph,
                                              [p for g in param_groups for p in g["params"]])
    if use_graph:  # the schedule fills a tensor lr in place, so the captured AdamW reads the current value
        optimizer = _new_adamw(param_groups, impl, lr=torch.tensor(config.lr, device=accelerator.device),
                               weight_decay=config.weight_decay, capturable=True)
        _set_lr_kind(optimizer, accelerator.device if use_graph else None)
    else:
        optimizer = _new_adamw(param_groups, impl, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _StepScheduler(optimizer, config)
    model.__dict__.pop("_is_accelerate_prepared", None)  # left by an earlier accelerator (e.g. a copied model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, train_loader)
    accelerator.register_for_checkpointing(scheduler)

    step, consumed, history = 0, 0, []
    ckpt = latest_checkpoint(out_dir) if (config.resume and out_dir is not None) else None
    if config.resume and ckpt is None:
        warnings.warn(f"resume=True but no checkpoint under {out_dir}/checkpoints; starting from step 0")
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state.get("max_steps") != config.max_steps or state.get("grad_accum") != config.grad_accum:
            raise ValueError(
                f"checkpoint {ckpt} was written with max_steps={state.get('max_steps')}, grad_accum="
                f"{state.get('grad_accum')}; the config has {config.max_steps}, {config.grad_accum}"
            )
        step, consumed, history = state["step"], state["consumed"], state["history"]

    n_batches = len(loader)
    epoch, skip = divmod(consumed, n_batches)

    def batches():
        nonlocal epoch
        first = True
        while True:
            loader.set_epoch(epoch)
            src = accelerator.skip_first_batches(loader, skip) if (first and skip) else loader
            first = False
            yield from src
            epoch += 1

    stream = batches()
    if ckpt is not None:
        # Build the iterator (it draws from the global RNG) before restoring the RNG states.
        pending = next(stream)
        try:
            accelerator.load_state(str(ckpt))
        except Exception as exc:
            raise RuntimeError(f"cannot resume from {ckpt}: it does not match this model/optimizer ({exc})") from exc
        # a checkpoint of the other mode holds the other kind of lr (float vs the graph's in-place tensor)
        _set_lr_kind(optimizer.optimizer, accelerator.device if use_graph else None)
        _set_optimizer_impl(optimizer.optimizer, impl)
        scheduler.sched.base_lrs = [b if use_graph else float(b) for b in scheduler.sched.base_lrs]
        if accelerator.is_main_process and out_dir is not None:
            _truncate_metrics(out_dir, step)
    else:
        pending = None

    def next_batch():
        nonlocal pending
        if pending is not None:
            b, pending = pending, None
            return b
        return next(stream)

    def run_eval(metrics: dict) -> None:
        raw = accelerator.unwrap_model(model)
        was_training = raw.training
        raw.eval()
        with torch.no_grad():
            values = eval_fn(raw)
        raw.train(was_training)
        metrics.update({f"eval_{k}": float(v) for k, v in values.items()})

    strategies = {"mode": config.strategy_tuning}
    if config.strategy_tuning != "off" and step < config.max_steps:
        if pending is None:
            pending = next(stream)
        strategies = _tune_before_training(model, accelerator.unwrap_model(model), pending, loss_fn, config, accelerator.device)
    graph = (WholeStepGraph(model, optimizer.optimizer, loss_fn, config.max_grad_norm, fuse_builds=config.cuda_graph_fused_builds)
             if use_graph else None)
    eager_steps_before = step
    bar = tqdm(total=config.max_steps, initial=step, desc="train", disable=not (config.progress and accelerator.is_main_process), dynamic_ncols=True)
    running, last_loss, stopped = None, float("nan"), None
    model.train()
    while step < config.max_steps:
        loss_sum = torch.zeros((), device=accelerator.device)
        extras: dict[str, float] = {}
        lr = float(scheduler.get_last_lr()[0])
        if graph is not None:
            consumed += 1
            loss_sum, extra = graph.step(next_batch())
            extras = {k: float(v) for k, v in extra.items()}
        for micro in range(config.grad_accum if graph is None else 0):
            batch = next_batch()
            consumed += 1
            sync = micro == config.grad_accum - 1
            ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with ctx:
                loss, extra = _as_loss(loss_fn(model, batch))
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step} (micro-batch {micro})")
                accelerator.backward(loss / config.grad_accum)
            loss_sum += loss.detach().float()
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v) / config.grad_accum
        if graph is None:
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        if graph is None:
            optimizer.zero_grad(set_to_none=True)
        step += 1

        local = (loss_sum / config.grad_accum).item()
        running = local if running is None else 0.9 * running + 0.1 * local
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        metrics = {"step": step, "loss": local, "lr": lr, **extras}
        is_last = step == config.max_steps
        if step % config.log_every == 0 or is_last:
            metrics["loss"] = last_loss = accelerator.reduce(loss_sum / config.grad_accum, reduction="mean").item()
            if eval_fn is not None and (is_last or (config.eval_every and step % config.eval_every == 0)):
                run_eval(metrics)
            history.append(metrics)
            if out_dir is not None and accelerator.is_main_process:
                append_text(out_dir / "metrics.jsonl", json.dumps(metrics) + "\n")
        elif eval_fn is not None and config.eval_every and step % config.eval_every == 0:
            run_eval(metrics)
        if out_dir is not None and config.checkpoint_every and (step % config.checkpoint_every == 0 or is_last):
            _save_checkpoint(accelerator, out_dir, config, step, consumed, history)
        try:
            for cb in callbacks:
                cb(step, accelerator.unwrap_model(model), metrics)
        except StopTraining as exc:
            stopped = str(exc) or type(exc).__name__
            if not history or history[-1]["step"] != step:  # the step it stopped at was not logged
                last_loss = accelerator.reduce(loss_sum / config.grad_accum, reduction="mean").item()
            break
    bar.close()
    if graph is not None:  # the graph's gradient buffers go with it, as an eager run ends with no gradients
        graph.optimizer.zero_grad(set_to_none=True)
        graph.graph = graph.static_batch = None
    accelerator.wait_for_everyone()
    if math.isnan(last_loss) and history:
        last_loss = history[-1]["loss"]
    # a plain module again: no autocast wrapper on forward, and no "prepared" mark, which accelerate reads
    # to skip device placement (a deepcopy of a returned model would otherwise stay on the CPU in the next fit)
    trained = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    trained.__dict__.pop("_is_accelerate_prepared", None)
    if getattr(trained.__dict__.get("forward"), "__func__", None) is type(trained).forward:
        del trained.__dict__["forward"]
    if graph is not None:
        graph_record = graph.record
    else:
        graph_record = {"requested": config.cuda_graph}
        if config.cuda_graph:
            graph_record.update(captured=False, graph_steps=0, eager_steps=step - eager_steps_before, fallback_reason=graph_reason)
    return TrainResult(steps=step, final_loss=float(last_loss), history=history, model=trained, cuda_graph=graph_record,
                       optimizer={"requested": config.optimizer_impl, "impl": impl, "reason": impl_reason}, strategies=strategies,
                       stopped=stopped)


def _save_checkpoint(accelerator, out_dir: Path, config: TrainConfig, step: int, consumed: int, history: list) -> None:
    """``save_state`` into ``step_<N>.tmp`` then rename, so a kill never leaves a half checkpoint."""
    root = out_dir / "checkpoints"
    final = root / f"{_CKPT_PREFIX}{step}"
    tmp = root / f"{_CKPT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {"step": step, "consumed": consumed, "history": history, "max_steps": config.max_steps,
                 "grad_accum": config.grad_accum, "config": asdict(config)}
        write_json(tmp / "trainer_state.json", state, indent=1)
        replace_dir(tmp, final)
        if config.keep_last:
            done = sorted(
                (int(p.name[len(_CKPT_PREFIX):]), p) for p in root.iterdir()
                if p.is_dir() and p.name.startswith(_CKPT_PREFIX) and p.name[len(_CKPT_PREFIX):].isdigit()
            )
            for _, p in done[: -config.keep_last]:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
