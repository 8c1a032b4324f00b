"""Structure-aware distillation (DLRMamba, arXiv 2603.06920, Sec. III-C) inside ultralytics' trainer.

Loss (the paper's weights are :class:`.config.DistillConfig`'s defaults)::

    L = 1.0 * L_task + 0.5 * L_SVD + 0.1 * L_state + 1.5 * L_feat

* ``L_task``: ultralytics' own YOLOv8 detection loss (box + cls + DFL, as its trainer computes it).
* ``L_SVD``: for every factorised matrix ``W_s = U_s V_s`` of the student, ``MSE(U_s, (U_t sqrt(S_t))_{:r})
  + MSE(V_s, (sqrt(S_t) V_t^T)_{:r})`` against the truncated SVD of the teacher's matrix (the
  teacher targets are computed once). The paper writes squared Frobenius norms; a mean over entries
  is used so that layers of different size weigh alike, averaged over matrices (``align_norm="mse"``);
  ``align_norm="relative"`` divides each squared error by the target's squared norm instead (unit-free terms:
  the hidden states are ~1e-4 in size, so their mean-square term vanishes next to the others).
* ``L_state``: ``MSE(h_s, P h_t)`` over all time steps, directions, channels and the student's
  state modes, ``P`` = the selection of the student's modes (:func:`.ss2d.teacher_state_projection`).
* ``L_feat``: ``MSE(Y_s, Y_t)`` on every SS2D output.

Choice of integration (ultralytics has no distillation hook for custom losses): a
``DetectionTrainer`` subclass made by :func:`make_sad_trainer`. Its ``get_model`` builds the student
from the teacher checkpoint (:func:`.model.student_from_teacher`), and after ultralytics'
``_setup_train`` (so the EMA copy has no teacher and no recording) it installs :class:`SADLoss` as the
model's ``criterion``. ultralytics multiplies its task loss by the batch size; the alignment terms
get the same factor so the paper's relative weights hold. Checkpoints strip the criterion, so
``best.pt`` holds the student only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import DistillConfig
from .model import ss2d_modules, student_from_teacher
from .ss2d import Factorised, svd_factors, teacher_targets, teacher_state_projection

__all__ = ["SADLoss", "make_sad_trainer", "svd_alignment_targets"]


@torch.no_grad()
def svd_alignment_targets(student: nn.Module, teacher: nn.Module) -> list[tuple[Factorised, torch.Tensor, torch.Tensor]]:
    """``(student factor pair, U target, V target)`` for every factorised matrix of the student's SS2D layers."""
    out = []
    pairs = list(zip(ss2d_modules(student), ss2d_modules(teacher)))
    if not pairs:
        raise ValueError("svd_alignment_targets: the models have no SS2D layers")
    for (sname, s), (tname, t) in pairs:
        if sname != tname:
            raise ValueError(f"svd_alignment_targets: student layer {sname!r} does not match teacher layer {tname!r}")
        for name, dense in teacher_targets(t, s.d_state).items():
            module = getattr(s, name)
            if module.u is not None:
                u, v = svd_factors(dense, module.rank)
                out.append((module, u, v))
    return out


class SADLoss:
    """Criterion: ultralytics' detection loss plus DLRMamba's alignment terms against a frozen teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig):
        from ultralytics.utils.loss import v8DetectionLoss

        self.task = v8DetectionLoss(student)
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        self.pairs = [(s, t) for (_, s), (_, t) in zip(ss2d_modules(student), ss2d_modules(teacher))]
        self.svd_targets = svd_alignment_targets(student, teacher)
        for s, t in self.pairs:
            s.record = t.record = config.distills

    def _distance(self, student: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
        """Mean squared error over all entries (``mse``), or squared error over the target's squared norm (``relative``)."""
        if self.config.align_norm == "mse":
            return sum(F.mse_loss(s, t) for s, t in zip(student, target))
        err = sum((s.float() - t.float()).pow(2).sum() for s, t in zip(student, target))
        return err / sum(t.float().pow(2).sum() for t in target).clamp_min(1e-12)

    def alignment(self) -> dict[str, torch.Tensor]:
        """The three alignment terms from the last student and teacher forward passes."""
        device = next(iter(self.pairs))[0].Ds.device
        zero = torch.zeros((), device=device)
        svd = sum((self._distance([m.u, m.v], [u.to(device), v.to(device)]) for m, u, v in self.svd_targets), zero)
        svd = svd / max(1, len(self.svd_targets))
        state, feat = zero, zero
        for s, t in self.pairs:
            if s.last_states is None or t.last_states is None:
                raise RuntimeError("SADLoss: SS2D states were not recorded in the last forward pass")
            state = state + self._distance([s.last_states], [teacher_state_projection(t.last_states, s.d_state)])
            feat = feat + self._distance([s.last_output], [t.last_output])
        n = max(1, len(self.pairs))
        return {"svd": svd, "state": state / n, "feat": feat / n}

    def _clear(self) -> None:
        for s, t in self.pairs:
            s.last_states = s.last_output = t.last_states = t.last_output = None

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, items = self.task(preds, batch)
        cfg = self.config
        if not cfg.distills or not torch.is_grad_enabled():
            self._clear()
            return loss * cfg.w_task, {**items, "sad_loss": torch.zeros((), device=loss.device)}
        self.teacher.to(batch["img"].device)
        with torch.no_grad():
            self.teacher(batch["img"])
        terms = self.alignment()
        self._clear()
        extra = cfg.w_svd * terms["svd"] + cfg.w_state * terms["state"] + cfg.w_feat * terms["feat"]
        bs = batch["img"].shape[0]
        total = torch.cat([loss.reshape(-1) * cfg.w_task, (extra * bs).reshape(1)])
        return total, {**items, "sad_loss": extra.detach()}


def make_sad_trainer(teacher_checkpoint: Path, config: DistillConfig, teacher: Optional[nn.Module] = None) -> type:
    """A ``DetectionTrainer`` subclass that trains the low-rank student of ``teacher_checkpoint`` with :class:`SADLoss`."""
    from ultralytics.utils.torch_utils import unwrap_model

    from .ultralytics_host import detection_trainer, load_detection_model

    def _teacher() -> nn.Module:
        return teacher if teacher is not None else load_detection_model(teacher_checkpoint)

    class SADTrainer(detection_trainer()):
        """ultralytics' detection trainer with DLRMamba's student and loss."""

        def get_model(self, cfg=None, weights=None, verbose=True):
            base = _teacher()
            nc = getattr(base, "nc", None) or base.yaml.get("nc")  # a model rebuilt from shipped weights has no .nc
            if base.yaml.get("channels") != self.data["channels"] or nc != self.data["nc"]:
                raise ValueError(f"teacher {teacher_checkpoint} has {base.yaml.get('channels')} channels / {nc} classes, "
                                 f"data has {self.data['channels']} / {self.data['nc']}")
            student = student_from_teacher(base, config.rank_ratio) if config.rank_ratio < 1 else base
            for p in student.parameters():
                p.requires_grad_(True)
            return self.set_model_names_for_load(student) if hasattr(self, "set_model_names_for_load") else student

        def _setup_train(self):
            super()._setup_train()
            model = unwrap_model(self.model)
            model.criterion = SADLoss(model, _teacher().to(self.device), config)

    return SADTrainer
