"""DSCLoRA: ConvLoRA in SPAN's convolutions plus spatial-affinity distillation.

Chai et al., "Distillation-Supervised Convolutional Low-Rank Adaptation for Efficient Image
Super-Resolution" (arXiv 2504.11271). The SPABs become SConvLBs (the same block with ConvLoRA on
each conv); ConvLoRA is also put on the conv before the pixel shuffle (``conv_2``) and on the
pixel-shuffle conv (``upsampler.0``). The pre-trained SPAN is frozen; only the low-rank factors
train, and after training they are merged, so the deployed network *is* a SPAN.

Choices the paper leaves open, stated here:

* ConvLoRA sits on the re-parameterised 3x3 convs (``*.eval_conv``), as in the authors' challenge
  model: the student is the deployed SPAN, so merging gives exactly SPAN's parameters and FLOPs.
  Ranks: ``r=2, alpha=4`` in the 18 block convs; ``r=8, alpha=16`` on ``conv_2`` and ``upsampler.0``.
* Loss ``L = l_rec * |SR - HR|_1 + l_ts * |SR - SR_teacher|_1 + l_ad * L_AD``; the paper's lambdas
  were not retrievable. We default to ``1.0, 0.0, 1.0``: with ``l_ts = 0.5`` the L1 pull towards the
  teacher's output (whose gradient does not vanish near the teacher) held the student at the
  teacher (+0.0002 dB in our x4 CPU run, vs +0.04 dB with ``l_ts = 0``; docs/results/sr.md). ``L_AD`` is the mean, over the six block outputs
  and the feature entering the pixel-shuffle tail, of the L1 distance between teacher and student
  spatial-affinity matrices (:func:`.functional.affinity_distance`, features pooled to <= 16x16).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DSCLoRAConfig
from .functional import affinity_distance
from .model import SPAN, is_deployed

__all__ = ["BLOCK_TARGETS", "TAIL_TARGETS", "ADAPTER_NAME", "attach_dsclora", "fold_dsclora", "DistillationLoss"]

BLOCK_TARGETS = r"re:block_\d+\.c[123]_r\.eval_conv"
"""Every conv of the six SConvLBs (the re-parameterised 3x3s)."""
TAIL_TARGETS = ["conv_2.eval_conv", "upsampler.0"]
"""The conv before the pixel shuffle and the pixel-shuffle conv."""
ADAPTER_NAME = "dsclora"


def attach_dsclora(model: SPAN, config: Optional[DSCLoRAConfig] = None):
    """Turn a deployed SPAN into a DSCLoRA student in place (SPABs -> SConvLBs, tail ConvLoRA).

    Uses the core's ``conv_lora`` adapter; everything but the low-rank factors is frozen.
    Returns the two injection reports ``(blocks, tail)``.
    """
    from lowrank_vision.core import apply

    config = config or DSCLoRAConfig()
    if not isinstance(model, SPAN):
        raise TypeError(f"model must be a SPAN, got {type(model).__name__}")
    if not is_deployed(model):
        raise ValueError("model must be re-parameterised first (call model.reparameterize(span))")
    # One adapter name for both groups: ``apply`` re-freezes everything except the named adapter.
    blocks = apply(model, "conv_lora", rank=config.block_rank, alpha=config.block_alpha, targets=BLOCK_TARGETS, adapter_name=ADAPTER_NAME)
    tail = apply(model, "conv_lora", rank=config.tail_rank, alpha=config.tail_alpha, targets=TAIL_TARGETS, adapter_name=ADAPTER_NAME)
    return blocks, tail


def fold_dsclora(model: SPAN) -> SPAN:
    """Merge the ConvLoRA factors into the convs and drop the adapter shells, in place.

    ``core.remove(model, keep_merged=True)``: the update ``W + dW`` stays in each conv and the
    requires-grad flags the model had before :func:`attach_dsclora` come back. Returns a plain SPAN
    whose parameters are exactly SPAN's.
    """
    from lowrank_vision.core import remove

    remove(model, keep_merged=True)
    return model


class DistillationLoss(nn.Module):
    """``loss_fn(student, (lr, hr))`` for :func:`lowrank_vision.core.train.fit`.

    The teacher is frozen, in eval mode, and is *not* a submodule (so it is neither optimised nor
    wrapped by the trainer); it is moved to the batch's device on first use.
    """

    def __init__(self, teacher: SPAN, config: Optional[DSCLoRAConfig] = None) -> None:
        super().__init__()
        self.config = config or DSCLoRAConfig()
        self._teacher = [teacher.eval().requires_grad_(False)]

    @property
    def teacher(self) -> SPAN:
        return self._teacher[0]

    def forward(self, student: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict]:
        lr, hr = batch
        teacher = self.teacher
        if next(teacher.parameters()).device != lr.device:
            teacher.to(lr.device)
        with torch.no_grad():
            t_sr, t_feats = teacher.forward_features(lr)
        s_sr, s_feats = student(lr, return_features=True)
        cfg = self.config
        rec = F.l1_loss(s_sr, hr)
        ts = F.l1_loss(s_sr, t_sr)
        ad = torch.stack([affinity_distance(s, t, cfg.affinity_side) for s, t in zip(s_feats, t_feats)]).mean()
        loss = cfg.lambda_rec * rec + cfg.lambda_ts * ts + cfg.lambda_ad * ad
        # the parts as 0-d tensors, not host floats: a whole-step CUDA graph can capture them (core.train.WholeStepGraph)
        return loss, {"l_rec": rec.detach(), "l_ts": ts.detach(), "l_ad": ad.detach()}
