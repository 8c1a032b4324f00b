"""Low-rank training tools: optimizers that project, adjust or replace gradients.

* :class:`GaLore`: AdamW in a low-rank projection of each gradient (truncated SVD or SVD-free DCT basis).
* :class:`Fira`: GaLore plus the norm-scaled full-rank residual and the norm-growth limiter.
* :class:`LoRAPro`: LoRA factors moved by the gradients whose equivalent update best fits the full gradient.
* :class:`EGGROLL`: backprop-free evolution strategies with low-rank perturbations, one batched forward per population.
* :func:`optimizer_state_bytes`: bytes of optimizer state held for given parameters (the GaLore memory measure).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from .eggroll import EGGROLL
from .galore import Fira, GaLore
from .lora_pro import LoRAPro

__all__ = ["GaLore", "Fira", "LoRAPro", "EGGROLL", "optimizer_state_bytes"]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, params: Optional[Iterable[torch.Tensor]] = None) -> int:
    """Bytes of the tensors (and Python int lists, at 8 bytes an entry) in ``optimizer.state`` for ``params``
    (all parameters when ``None``), plus, for :class:`GaLore`/:class:`Fira`, each shared DCT matrix once."""
    wanted = None if params is None else {id(p) for p in params}
    total = 0
    for key, state in optimizer.state.items():
        if not isinstance(key, torch.Tensor) or (wanted is not None and id(key) not in wanted):
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
            elif isinstance(value, list):
                total += 8 * len(value)
    for basis in getattr(optimizer, "_dct_bases", {}).values():
        total += basis.numel() * basis.element_size()
    return total
