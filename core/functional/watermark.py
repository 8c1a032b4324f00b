"""Trigger keys and bit decoding for Hot-Swap MarkBoard (pure tensor math; shells in ``core.watermark``).

Bit ``i`` of a signature is read from the model's answers on trigger set ``i``: clean inputs with
a secret pattern stamped onto a secret random subset of their elements. The branch installed for
``bit i = v`` teaches the model to answer ``targets[i, v]`` on that trigger set, so the bit is
whichever of the two target classes wins (``decode_bits``). Choices the paper leaves open here:
the stamp is an element mask (any input shape, not only images) with pattern values ``+-strength``
in units of the clean inputs' standard deviation, and a bit is undecided (``-1``) when neither
target reaches ``min_rate`` of the trigger answers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["make_trigger_key", "stamp", "pick_target_classes", "target_rates", "decode_bits"]


def make_trigger_key(
    input_shape: Sequence[int], n_bits: int, *, fraction: float, strength: float, generator: torch.Generator, kind: str = "scatter"
) -> tuple[Tensor, Tensor]:
    """``(masks [n_bits, *shape] bool, patterns [n_bits, *shape])`` with values ``+-strength`` under the mask.

    ``kind="scatter"``: about ``fraction`` of all elements, anywhere. ``kind="patch"`` (inputs ``[C, *spatial]``):
    one square (cube) window per bit covering about ``fraction`` of the spatial positions, all channels, at a
    random place -- a local pattern that convolutions can pick up wherever it lands.
    """
    shape = (n_bits, *input_shape)
    if kind == "patch":
        spatial = list(input_shape[1:])
        if not spatial:
            raise ValueError(f"patch triggers need inputs [C, *spatial], got shape {tuple(input_shape)}")
        side = [max(1, round(s * fraction ** (1 / len(spatial)))) for s in spatial]
        masks = torch.zeros(shape, dtype=torch.bool)
        for bit in range(n_bits):
            corner = [int(torch.randint(0, s - w + 1, (), generator=generator)) for s, w in zip(spatial, side)]
            window = (bit, slice(None), *[slice(c, c + w) for c, w in zip(corner, side)])
            masks[window] = True
    elif kind == "scatter":
        masks = torch.rand(shape, generator=generator) < fraction
    else:
        raise ValueError(f"kind must be 'scatter' or 'patch', got {kind!r}")
    signs = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
    return masks, signs * strength


def stamp(inputs: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """Clean ``inputs [K, *shape]`` with ``pattern`` written where ``mask`` is set."""
    mask = mask.to(inputs.device)
    return torch.where(mask, pattern.to(inputs), inputs)


def pick_target_classes(n_bits: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """``[n_bits, 2]`` classes: column ``v`` is what the model answers on trigger ``i`` when bit ``i = v``; the two differ."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 to encode a bit, got {num_classes!r}")
    out = torch.empty(n_bits, 2, dtype=torch.long)
    for i in range(n_bits):
        out[i] = torch.randperm(num_classes, generator=generator)[:2]
    return out


def target_rates(predictions: Tensor, targets: Tensor) -> Tensor:
    """``[n_bits, 2]``: the share of trigger answers ``predictions [n_bits, K]`` equal to each target class."""
    return (predictions.unsqueeze(-1) == targets.unsqueeze(1)).float().mean(1)


def decode_bits(rates: Tensor, min_rate: float) -> Tensor:
    """Bits ``[n_bits]`` (``-1`` where neither target class reaches ``min_rate``)."""
    bits = rates.argmax(1)
    return torch.where(rates.max(1).values >= min_rate, bits, torch.full_like(bits, -1))
