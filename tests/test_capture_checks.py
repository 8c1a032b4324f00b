"""The host-traffic check the capture tests rely on sees each kind of traffic a CUDA graph capture refuses, and not
the device-only ops a captured step is made of."""

import pytest
import torch

from .capture_checks import HostTraffic

x = torch.randn(6)


@pytest.mark.parametrize("step, expected", [
    (lambda: torch.tensor(2.0) * x, 1),  # a tensor from Python data: a host-to-device copy on a GPU
    (lambda: x.sum().item(), 1),  # a read-back
    (lambda: float(x.max()), 1),
    (lambda: x[x > 0], 1),  # a bool-mask index: its size is read on the host
    (lambda: x.clone().__setitem__(x > 0, 0.0), 2),  # the bool-mask write, and its Python value made a tensor
    (lambda: torch.nonzero(x), 1),
    (lambda: torch.masked_select(x, x > 0), 1),
    (lambda: torch.where(x > 0, x, x.new_zeros(())), 0),  # the device-side choice
    (lambda: x[torch.arange(3)], 0),  # an integer index has a known size
    (lambda: (x * 2).softmax(0).sum(), 0),
])
def test_host_traffic_counts_what_capture_refuses(step, expected):
    with HostTraffic() as traffic:
        step()
    assert traffic.count == expected
