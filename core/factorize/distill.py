"""Feature distillation after compression, after PELA.

Guo et al., "PELA: Learning Parameter-Efficient Models with Low-Rank Approximation"
(arXiv 2310.10700): the low-rank model is trained to reproduce the intermediate features of the
frozen original on unlabelled data. Here the features are the outputs of the layers that were
factorised (the compressed model keeps the original module names, so they pair by name) plus
the model output.

PELA's weight-perturbation regularisation keeps the low-rank weights close to the originals; here it
is the term ``weight_regularization * mean_l ||W_hat_l - W_l||^2 / ||W_l||^2`` over the factorised
layers (``W_hat`` the product of the factors, ``W`` the teacher's weight of the same name), off by
default.

Choices the paper leaves open (or that differ from it): each feature term is a *relative* squared
error ``||f_s - f_t||^2 / ||f_t||^2`` so layers of different scale weigh alike; both models run in
eval mode (normalisation statistics and dropout as at inference) and every student parameter
that requires grad is trained with Adam.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..validate import is_int
from .compress import factorized_layers

__all__ = ["DistillReport", "distill", "feature_loss"]


@dataclass
class DistillReport:
    steps: int
    loss_before: float
    """Mean distillation loss over the first batches (before any update)."""
    loss_after: float
    """Same loss on the same batches after training."""
    history: list[float]
    layers: list[str]
    weight_error: tuple[float, float] = (0.0, 0.0)
    """Mean relative weight error ``||W_hat - W||_F / ||W||_F`` of the factorised layers, before and after."""


def _as_input(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class _FeatureTap:
    """Forward hooks that keep the outputs of named modules during one forward."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"feature layers {missing[:5]} are not modules of the model")
        self.features: dict[str, Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(module, args, output):
            self.features[name] = output
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _relative_mse(student: Tensor, teacher: Tensor) -> Tensor:
    return (student - teacher).float().square().sum() / teacher.float().square().sum().clamp_min(1e-12)


def feature_loss(student_feats: dict[str, Tensor], teacher_feats: dict[str, Tensor], student_out: Tensor, teacher_out: Tensor,
                 *, feature_weight: float = 1.0, output_weight: float = 1.0) -> Tensor:
    """Mean relative squared error over the paired features, plus the output term."""
    loss = student_out.new_zeros((), dtype=torch.float32)
    if student_feats and feature_weight:
        loss = loss + feature_weight * sum(_relative_mse(student_feats[n], teacher_feats[n]) for n in student_feats) / len(student_feats)
    if output_weight:
        loss = loss + output_weight * _relative_mse(student_out, teacher_out)
    return loss


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable,
    *,
    steps: int = 100,
    lr: float = 1e-3,
    layers: Optional[Sequence[str]] = None,
    feature_weight: float = 1.0,
    output_weight: float = 1.0,
    weight_regularization: float = 0.0,
) -> DistillReport:
    """Train ``student`` (a compressed copy of ``teacher``) to match ``teacher``'s features on unlabelled batches.

    Args:
        batches: inputs (or ``(inputs, ...)`` tuples; the rest is ignored), cycled for ``steps`` updates.
        layers: module names whose outputs are matched; default every factorised layer of ``student``.
        weight_regularization: weight of PELA's term keeping each factorised weight near the teacher's.
    """
    if not is_int(steps, 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; give at least one batch of unlabelled inputs")
    names = list(layers) if layers is not None else list(factorized_layers(student))
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("student has no parameter that requires grad")
    teacher_mode, student_mode = teacher.training, student.training
    teacher.eval()
    student.eval()
    teacher_tap, student_tap = _FeatureTap(teacher, names), _FeatureTap(student, names)
    optimizer = torch.optim.Adam(params, lr=lr)
    teacher_modules = dict(teacher.named_modules())
    weight_pairs = [(m, teacher_modules[n].weight.detach()) for n, m in factorized_layers(student).items()
                    if isinstance(getattr(teacher_modules.get(n), "weight", None), Tensor)]

    def weight_term() -> Tensor:
        return sum(_relative_mse(m.dense_weight(), w) for m, w in weight_pairs) / max(len(weight_pairs), 1)

    def weight_error() -> float:
        with torch.no_grad():
            return sum(float(_relative_mse(m.dense_weight(), w).sqrt()) for m, w in weight_pairs) / max(len(weight_pairs), 1)

    def loss_on(batch) -> Tensor:
        x = _as_input(batch)
        with torch.no_grad():
            teacher_out = teacher(x)
            teacher_feats = dict(teacher_tap.features)
        student_out = student(x)
        loss = feature_loss(student_tap.features, teacher_feats, student_out, teacher_out,
                            feature_weight=feature_weight, output_weight=output_weight)
        if weight_regularization and weight_pairs:
            loss = loss + weight_regularization * weight_term()
        return loss

    probe = batches[: min(4, len(batches))]
    try:
        error_before = weight_error()
        with torch.no_grad():
            before = sum(float(loss_on(b)) for b in probe) / len(probe)
        history = []
        for batch in itertools.islice(itertools.cycle(batches), steps):
            loss = loss_on(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
        with torch.no_grad():
            after = sum(float(loss_on(b)) for b in probe) / len(probe)
    finally:
        teacher_tap.close()
        student_tap.close()
        teacher.train(teacher_mode)
        student.train(student_mode)
    return DistillReport(steps, before, after, history, names, (error_before, weight_error()))
