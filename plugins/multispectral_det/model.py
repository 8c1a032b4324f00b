"""Networks of DLRMamba that are not SS2D: the RGB+IR pixel-level fusion stem, and the teacher -> student step.

Fusion: DLRMamba fuses RGB and IR at the pixel level before the backbone (its baseline takes the
~1.65k-parameter pixel fusion module of S4-MSTD, arXiv 2505.14043). :class:`RGBIRFusion` is a
cross-modal gate of that size class: a small conv net sees all channels and rescales every pixel of
every channel, ``y = x * (1 + tanh(g(x)))``; the last conv starts at zero, so the stem starts as the
identity. It keeps the channel count (the backbone's first ultralytics ``Conv`` changes it).

Student: :func:`student_from_teacher` copies a trained full-rank detector and replaces every SS2D
with its low-rank form, initialised by truncated SVD of the teacher's matrices (:func:`.ss2d.low_rank_from`);
every other layer (convs, neck, head) starts from the teacher's weights.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import Tensor, nn

from .ss2d import SS2D, VSSBlock, low_rank_from

__all__ = ["RGBIRFusion", "student_from_teacher", "ss2d_modules", "set_rank_ratio_in_yaml"]


class RGBIRFusion(nn.Module):
    """Pixel-level RGB+IR fusion on ``[B, C, H, W]`` (``C`` = RGB channels + ``ir_channels``); keeps ``C``."""

    def __init__(self, channels: int, ir_channels: int = 1, hidden: int = 16):
        super().__init__()
        if not 0 < ir_channels < channels:
            raise ValueError(f"RGBIRFusion: ir_channels must be in [1, {channels - 1}] for {channels} input channels, "
                             f"got {ir_channels!r}")
        self.channels, self.ir_channels = channels, ir_channels
        self.gate = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.SiLU(),
            nn.Conv2d(hidden, channels, 1),
        )
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x * (1.0 + torch.tanh(self.gate(x)))


def ss2d_modules(model: nn.Module) -> Iterator[tuple[str, SS2D]]:
    """``(name, SS2D)`` of every scan layer of a detector, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, SS2D):
            yield name, module


def set_rank_ratio_in_yaml(model_yaml: dict, rank_ratio: float) -> dict:
    """A copy of an ultralytics model dict whose VSSBlock rows carry ``rank_ratio`` (4th arg)."""
    out = copy.deepcopy(model_yaml)
    for row in out["backbone"] + out["head"]:
        if row[2] == "VSSBlock":
            args = list(row[3]) + [16, 2.0, 1.0][len(row[3]) - 1:]
            args[3] = float(rank_ratio)
            row[3] = args
    return out


@torch.no_grad()
def student_from_teacher(teacher: nn.Module, rank_ratio: float) -> nn.Module:
    """A deep copy of ``teacher`` with every SS2D factorised at ``rank_ratio`` (SVD init); ``yaml`` updated to match."""
    student = copy.deepcopy(teacher)
    for module in student.modules():
        if isinstance(module, VSSBlock):
            module.ss2d = low_rank_from(module.ss2d, rank_ratio)
    if isinstance(getattr(student, "yaml", None), dict):
        student.yaml = set_rank_ratio_in_yaml(student.yaml, rank_ratio)
    return student
