"""What a CUDA graph capture refuses, seen on a CPU: a dispatch mode counting the ops that copy host data to the device
or read device values back to the host."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_TRAFFIC_OPS = (
    torch.ops.aten.lift_fresh.default,  # torch.tensor(python data): on a GPU a host-to-device copy
    torch.ops.aten.lift_fresh_copy.default,
    torch.ops.aten._local_scalar_dense.default,  # .item() / float() / bool(): a read-back, a sync
    torch.ops.aten.masked_select.default,  # output size depends on values: the host reads it
    torch.ops.aten.nonzero.default,
)


MASK_INDEX_OPS = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default)
"""``x[mask]`` and ``x[mask] = v``: with a bool index their size depends on values, and on a CPU the ``nonzero`` they
run happens below a dispatch mode, so they are counted by their bool index."""


def _bool_index(args: tuple) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()))


class HostTraffic(TorchDispatchMode):
    """Counts the :data:`HOST_TRAFFIC_OPS`, and the :data:`MASK_INDEX_OPS` with a bool index, run inside the ``with``
    block (``.count``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in HOST_TRAFFIC_OPS or (func in MASK_INDEX_OPS and _bool_index(args))
        return func(*args, **(kwargs or {}))
