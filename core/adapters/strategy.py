"""Choosing where an adapter's update is computed.

Two execution strategies give the same numbers:

* ``weight``: build ``W + dW`` and run the layer's op once. Backward then pays the full
  weight-gradient of the op, i.e. about what full fine-tuning pays.
* ``activation``: run the frozen op and add a low-rank path (``B(A(x))``). Backward skips the
  op's weight gradient but pays the thin path, which on GPUs is memory-bound.

``choose_strategy`` is the ``auto`` rule: a cost model on shapes (multiply-accumulates of the
extra work each strategy adds to a training step). Convolutions favour the weight space (their
thin ``r``-channel activation maps are bandwidth-bound), Linear layers on many tokens favour
activations.
"""

from __future__ import annotations

import math

from ..functional.layout import LayerGeometry

__all__ = ["choose_strategy", "strategy_costs"]

# Thin (r-channel) activation paths run far below peak throughput; weight them accordingly.
ACTIVATION_PATH_PENALTY = {"linear": 1.0, "embedding": 1.0, "conv": 6.0, "conv_transpose": 6.0}


def strategy_costs(geometry: LayerGeometry, input_shape: tuple[int, ...], rank: int) -> dict[str, float]:
    """Extra multiply-accumulates per training step (forward + backward) of each strategy."""
    if geometry.kind in ("linear", "embedding"):
        positions = math.prod(input_shape[:-1]) if geometry.kind == "linear" else math.prod(input_shape)
    else:
        positions = input_shape[0] * math.prod(input_shape[2:]) if len(input_shape) > 2 else math.prod(input_shape[1:])
    out, fan_in = geometry.out_channels, geometry.fan_in
    weight = 3.0 * out * fan_in * rank + positions * out * fan_in
    activation = 3.0 * positions * rank * (fan_in + out) * ACTIVATION_PATH_PENALTY[geometry.kind]
    return {"weight": weight, "activation": activation}


def choose_strategy(geometry: LayerGeometry, input_shape: tuple[int, ...], rank: int, has_thin_path: bool = True) -> str:
    """``auto``: the cheaper strategy by :func:`strategy_costs`; deltas without a thin path always use the weight space."""
    if geometry.kind == "embedding":
        return "activation"
    if geometry.groups != 1 or not has_thin_path:
        return "weight"
    costs = strategy_costs(geometry, input_shape, rank)
    return "weight" if costs["weight"] <= costs["activation"] else "activation"
