"""The recipe's trainer captures the whole step as one CUDA graph (``trainer()`` asks for it). Until session 11 the
loss built its BCE ``pos_weight`` with ``torch.tensor(..., device=...)``, a host-to-device copy that capture refuses,
so every GPU fine-tune fell back to eager (seen in ``bench/fused_builds_gpu.py``'s first H200 run)."""

from __future__ import annotations

import pytest
import torch

from lowrank_vision.plugins.hemorrhage_seg.config import UNetConfig, trainer
from lowrank_vision.plugins.hemorrhage_seg.model import build_network
from lowrank_vision.plugins.hemorrhage_seg.recipes import apply_strategy, seg_loss

from ...capture_checks import HostTraffic


def _loader(n: int = 8):
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(2, 32, 32, 16, generator=g), "label": (torch.rand(1, 32, 32, 16, generator=g) > 0.9).float()}
            for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=2, shuffle=True, drop_last=True)


@pytest.mark.parametrize("kind", ["3d", "multiview"])
def test_the_loss_builds_no_tensor_from_host_data(kind):
    net = build_network(UNetConfig(kind=kind))
    batch = next(iter(_loader()))
    with HostTraffic() as mode:
        loss = seg_loss(net, batch)
    assert mode.count == 0
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss) > 1.0  # soft Dice (~1 at init) + weighted BCE
    with HostTraffic() as mode:
        torch.tensor(10.0).item()
    assert mode.count == 2  # the check sees what the old loss did, and a read-back


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["full", "cp_lora", "cp_dora"])
def test_the_recipe_step_is_captured_on_cuda(strategy):
    from lowrank_vision.core.train import fit

    net = build_network(UNetConfig())
    apply_strategy(net, strategy, rank=None if strategy == "full" else 4)
    result = fit(net, _loader(), seg_loss, trainer(12, 1e-2, progress=False))
    record = result.cuda_graph
    assert record["captured"] and record["fallback_reason"] is None, record
    assert record["graph_steps"] == 12 - record["eager_steps"] and record["graph_steps"] >= 8, record
    assert torch.isfinite(torch.tensor(result.final_loss))
