"""Fine-tuning strategies compared in Minoccheri et al. (arXiv 2508.01772).

``none`` (pre-trained only), ``full`` (every weight), ``decoder`` (up-path of each UNet only), and the
adapter families of :mod:`lowrank_vision.core`: ``lora_c``, ``conv_lora``, ``cp_lora``, ``dora_c``,
``conv_dora``, ``cp_dora``. Adapters go on every convolution and transposed convolution of the
chosen ``modules`` (``all``, ``encoder`` or ``decoder``; the paper compares "different modules"
without saying which, so all three are offered and ``all`` is the default). Choice: alpha = rank
(scale 1), so that higher, over-parameterised ranks are not damped; ``apply_strategy(alpha=...)`` (the recipe's
``alpha_over_rank``) overrides it. alpha = 2 * rank gave no consistent gain over alpha = rank at the CPU
preset (docs/results/hemorrhage.md). The learning rates per strategy are set in the recipe.
"""

from __future__ import annotations

import re
import warnings
from typing import Literal

from torch import nn

from .models import DECODER_REGEX

__all__ = ["STRATEGIES", "ADAPTER_METHODS", "apply_strategy", "count_trainable"]

ADAPTER_METHODS = ("lora_c", "conv_lora", "cp_lora", "dora_c", "conv_dora", "cp_dora")
STRATEGIES = ("none", "full", "decoder", *ADAPTER_METHODS)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def apply_strategy(model: nn.Module, strategy: str, rank: int | None = None,
                   modules: Literal["all", "encoder", "decoder"] = "all", alpha: float | None = None) -> int:
    """Prepare ``model`` in place for ``strategy``; returns the number of trainable parameters."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if modules not in ("all", "encoder", "decoder"):
        raise ValueError(f"modules must be 'all', 'encoder' or 'decoder', got {modules!r}")
    if strategy == "none":
        model.requires_grad_(False)
        return 0
    if strategy == "full":
        model.requires_grad_(True)
        return count_trainable(model)
    if strategy == "decoder":
        dec = re.compile(DECODER_REGEX)
        for name, p in model.named_parameters():
            p.requires_grad_(bool(dec.fullmatch(name.rsplit(".", 1)[0])))
        return count_trainable(model)
    if rank is None or int(rank) < 1:
        raise ValueError(f"rank must be an int >= 1 for strategy {strategy!r}, got {rank!r}")
    from lowrank_vision.core import apply

    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    if modules == "all":
        targets = convs
    else:
        dec = re.compile(DECODER_REGEX)
        names = [n for n, m in model.named_modules() if isinstance(m, convs) and bool(dec.fullmatch(n)) == (modules == "decoder")]
        targets = names
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*over-parameterised.*")
        report = apply(model, strategy, rank=int(rank), alpha=float(alpha if alpha is not None else rank), targets=targets)
    return report.trainable_params
