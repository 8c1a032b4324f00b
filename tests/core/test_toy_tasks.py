"""bench/compress.py keeps its own copy of tests/core/toy_tasks.py's recipes (bench does not import tests): the
two copies must draw the same data and train the same weights, so the documented numbers come from the tested recipe."""

from __future__ import annotations

import torch

from . import toy_tasks
from .cases import load_bench_script


def test_bench_copies_of_the_toy_tasks_match_the_tests():
    torch.set_num_threads(1)
    bench = load_bench_script("compress.py")
    for ours, theirs in ((toy_tasks.make_task(n_train=64, n_test=32), bench.image_task(n_train=64, n_test=32)),
                         (toy_tasks.vector_task(), bench.vector_task())):
        for a, b in zip(ours, theirs):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    (x, y), _ = toy_tasks.make_task(n_train=64, n_test=32)
    torch.manual_seed(0)
    model = toy_tasks.train(toy_tasks.SmallCNN(), x, y, steps=3)
    torch.manual_seed(0)
    copy = bench.train(bench.SmallCNN(), x, y, steps=3)
    for (name, p), q in zip(model.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(p, q), name
    assert toy_tasks.accuracy(model, x, y) == bench.accuracy(copy, x, y)
