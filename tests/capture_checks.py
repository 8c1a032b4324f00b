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


class FakeGraph:
    """Stands for ``torch.cuda.CUDAGraph`` on a CPU (:func:`fake_cuda_graphs`): the body under ``torch.cuda.graph`` runs
    once at capture, as eager code (a real capture only records it); ``replays`` counts the replays."""

    replays = 0

    def replay(self):
        FakeGraph.replays += 1


class _FakeStream:
    def wait_stream(self, other):
        pass


def fake_cuda_graphs(monkeypatch) -> list:
    """Replace the CUDA stream / graph / RNG calls a graph runner makes with CPU stand-ins (:class:`FakeGraph`), so its
    control flow (warm-up, capture, replay, fallback) runs on a CPU. Returns the list that receives each RNG state given to
    ``core.train._release_cuda_rng_from_capture`` (called after a failed capture)."""
    import contextlib

    FakeGraph.replays = 0
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: torch.tensor([7], dtype=torch.uint8))
    released: list = []
    monkeypatch.setattr("lowrank_vision.core.train._release_cuda_rng_from_capture", released.append)
    return released
