"""Whole-step CUDA graphs in the shared trainer: the fallback rules (CPU) and captured == eager (CUDA only).

The ``gpu``-marked tests are skipped without a CUDA device (a skip here means: not run).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lowrank_vision.core.train import StopTraining, TrainConfig, batch_signature, fit, graph_fallback_reason
from ..capture_checks import FakeGraph, fake_cuda_graphs

torch.set_num_threads(1)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def data(n: int = 64, d: int = 8) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, x @ torch.randn(d, 1, generator=g) + 0.1)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1))


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def mse_with_extra(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), {"abs_y": float(y.abs().mean())}


def mse_with_tensor_extra(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), {"abs_y": y.abs().mean()}


def losses(result) -> list[float]:
    return [m["loss"] for m in result.history]


@pytest.mark.parametrize(
    "kwargs, device, processes, expected",
    [
        ({}, "cpu", 1, None),  # not requested: nothing to explain
        ({"cuda_graph": True}, "cpu", 1, "device is cpu"),
        ({"cuda_graph": True}, "cuda", 2, "2 processes"),
        ({"cuda_graph": True, "grad_accum": 2}, "cuda", 1, "grad_accum=2"),
        ({"cuda_graph": True, "mixed_precision": "fp16"}, "cuda", 1, "fp16"),
        ({"cuda_graph": True, "mixed_precision": "bf16"}, "cuda", 1, None),
    ],
)
def test_graph_fallback_reason_table(kwargs, device, processes, expected):
    reason = graph_fallback_reason(TrainConfig(**kwargs), device, processes)
    assert (reason is None) if expected is None else (expected in reason)


def test_batch_signature_sees_shape_dtype_structure_and_values():
    a = (torch.zeros(4, 8), {"y": torch.zeros(4, 1), "k": 3})
    assert batch_signature(a) == batch_signature((torch.ones(4, 8), {"y": torch.ones(4, 1), "k": 3}))
    assert batch_signature(a) != batch_signature((torch.zeros(3, 8), {"y": torch.zeros(3, 1), "k": 3}))
    assert batch_signature(a) != batch_signature((torch.zeros(4, 8).double(), {"y": torch.zeros(4, 1), "k": 3}))
    assert batch_signature(a) != batch_signature((torch.zeros(4, 8), {"y": torch.zeros(4, 1), "k": 4}))
    assert batch_signature(a) != batch_signature([torch.zeros(4, 8), {"y": torch.zeros(4, 1), "k": 3}])


def test_cuda_graph_on_cpu_falls_back_with_reason_and_same_losses():
    common = dict(max_steps=12, lr=5e-3, warmup_steps=2, log_every=1, progress=False, cpu=True)
    eager = fit(make_model(), DataLoader(data(), batch_size=8, shuffle=True), mse, TrainConfig(**common))
    graphed = fit(make_model(), DataLoader(data(), batch_size=8, shuffle=True), mse, TrainConfig(**common, cuda_graph=True))
    assert eager.cuda_graph == {"requested": False}
    assert graphed.cuda_graph["requested"] is True and graphed.cuda_graph["captured"] is False
    assert graphed.cuda_graph["fallback_reason"].startswith("device is cpu")
    assert graphed.cuda_graph["graph_steps"] == 0 and graphed.cuda_graph["eager_steps"] == 12
    assert losses(graphed) == losses(eager)  # the same eager code path, bit for bit


def test_cuda_graph_must_be_a_bool():
    with pytest.raises(ValueError, match="TrainConfig.cuda_graph must be a bool"):
        TrainConfig(cuda_graph="yes")
    with pytest.raises(ValueError, match="TrainConfig.cuda_graph_fused_builds must be a bool"):
        TrainConfig(cuda_graph=True, cuda_graph_fused_builds=1)


# --------------------------------------------------------------------------------------------- CUDA


def _pair(model_fn, loss_fn, batch_size, **cfg):
    common = dict(max_steps=14, lr=5e-3, warmup_steps=2, log_every=1, progress=False, **cfg)
    eager = fit(model_fn(), DataLoader(data(), batch_size=batch_size, shuffle=True), loss_fn, TrainConfig(**common))
    graphed = fit(model_fn(), DataLoader(data(), batch_size=batch_size, shuffle=True), loss_fn, TrainConfig(**common, cuda_graph=True))
    return eager, graphed


def _lora_model():
    import lowrank_vision.core as lr

    model = make_model()
    lr.apply(model, "lora", rank=4, alpha=8)
    return model


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("model_fn", [make_model, _lora_model], ids=["full", "lora"])
def test_captured_step_matches_eager_on_cuda(model_fn):
    eager, graphed = _pair(model_fn, mse, batch_size=8)  # 8 full batches per epoch: every step has the captured shape
    rec = graphed.cuda_graph
    assert rec["captured"] is True and rec["fallback_reason"] is None, rec
    assert rec["graph_steps"] == 14 - 3 and rec["eager_steps"] == 3
    assert [m["lr"] for m in graphed.history] == pytest.approx([m["lr"] for m in eager.history], rel=1e-6)
    assert losses(graphed) == pytest.approx(losses(eager), rel=1e-4, abs=1e-6)
    for a, b in zip(eager.model.parameters(), graphed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_short_batch_runs_eager_and_graph_continues_on_cuda():
    eager, graphed = _pair(_lora_model, mse, batch_size=5)  # 13 batches per epoch, the 13th has 4 rows
    rec = graphed.cuda_graph
    assert rec["captured"] is True and "batch shapes changed" in rec["fallback_reason"], rec
    assert rec["eager_steps"] == 3 + 1 and rec["graph_steps"] == 14 - 4
    assert losses(graphed) == pytest.approx(losses(eager), rel=1e-4, abs=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_bf16_captured_close_to_eager_on_cuda():
    eager, graphed = _pair(_lora_model, mse, batch_size=8, mixed_precision="bf16")
    assert graphed.cuda_graph["captured"] is True, graphed.cuda_graph
    assert losses(graphed) == pytest.approx(losses(eager), rel=2e-2, abs=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_extra_metrics_keep_the_run_eager_on_cuda():
    eager, graphed = _pair(make_model, mse_with_extra, batch_size=8)
    rec = graphed.cuda_graph
    assert rec["captured"] is False and "extra metrics" in rec["fallback_reason"] and rec["eager_steps"] == 14
    assert losses(graphed) == pytest.approx(losses(eager), rel=1e-4, abs=1e-6)
    assert [m["abs_y"] for m in graphed.history] == pytest.approx([m["abs_y"] for m in eager.history])


@pytest.mark.gpu
@needs_cuda
def test_tensor_extra_metrics_are_captured_on_cuda():
    eager, graphed = _pair(make_model, mse_with_tensor_extra, batch_size=8)
    rec = graphed.cuda_graph
    assert rec["captured"] is True and rec["graph_steps"] > 0, rec
    assert losses(graphed) == pytest.approx(losses(eager), rel=1e-4, abs=1e-6)
    assert [m["abs_y"] for m in graphed.history] == pytest.approx([m["abs_y"] for m in eager.history], rel=1e-6)


# ------------------------------------------------- the graph runner's control flow on CPU, with CUDA calls faked


@pytest.fixture
def fake_cuda(monkeypatch):
    released = fake_cuda_graphs(monkeypatch)
    return released


def _runner(loss_fn=mse, max_grad_norm=1.0):
    from lowrank_vision.core.train import WholeStepGraph

    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, WholeStepGraph(model, opt, loss_fn, max_grad_norm)


def _batch(n=8):
    return tuple(data()[:n])


def test_graph_runner_warms_up_captures_replays_and_runs_odd_batches_eagerly(fake_cuda):
    model, runner = _runner()
    for _ in range(3):  # warm-up: eager steps
        loss, extra = runner.step(_batch())
        assert loss.dim() == 0 and extra == {}
    assert runner.record == {"requested": True, "captured": False, "graph_steps": 0, "eager_steps": 3, "fallback_reason": None,
                             "fused_builds": []}  # a CPU model: no layer switched
    runner.step(_batch())  # capture + first replay
    assert runner.record["captured"] and runner.record["graph_steps"] == 1 and FakeGraph.replays == 1
    static_grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in static_grads)  # the gradients the graph writes stay attached
    runner.step(_batch())
    assert runner.record["graph_steps"] == 2 and FakeGraph.replays == 2
    runner.step(_batch(5))  # another shape: eager, the captured gradients are put back afterwards
    assert runner.record["eager_steps"] == 4 and FakeGraph.replays == 2
    assert "batch shapes changed" in runner.record["fallback_reason"]
    assert all(p.grad is g for p, g in zip(model.parameters(), static_grads))
    runner.step(_batch())
    assert runner.record["graph_steps"] == 3


def test_graph_runner_capture_error_stays_eager_with_reason(fake_cuda, monkeypatch):
    def failing_graph(g):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", failing_graph)
    model, runner = _runner()
    with pytest.warns(RuntimeWarning, match="whole-step CUDA graph off, the run goes on eager: capture failed") as seen:
        for _ in range(5):
            runner.step(_batch())
    assert len([w for w in seen if issubclass(w.category, RuntimeWarning)]) == 1  # said once, not every step
    rec = runner.record
    assert rec["captured"] is False and rec["graph_steps"] == 0 and rec["eager_steps"] == 5
    assert rec["fallback_reason"].startswith("capture failed: RuntimeError: operation not permitted")
    assert [t.tolist() for t in fake_cuda] == [[7]]  # the CUDA generator released once, with the state from before


def dropout_mse_reading_the_host(model, batch):
    """Draws device random numbers and reads a value back (capture refuses the read)."""
    x, y = batch
    x = nn.functional.dropout(x, 0.1)
    return nn.functional.mse_loss(model(x), y) * (1.0 + 0.0 * float(y.abs().max()))


@pytest.mark.gpu
@needs_cuda
def test_failed_capture_leaves_random_draws_working_on_cuda():
    loader = DataLoader(data(), batch_size=8, shuffle=True, drop_last=True)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        result = fit(make_model(), loader, dropout_mse_reading_the_host,
                     TrainConfig(max_steps=10, lr=1e-3, cuda_graph=True, log_every=1, progress=False))
    rec = result.cuda_graph
    assert rec["captured"] is False and rec["eager_steps"] == 10 and rec["fallback_reason"].startswith("capture failed"), rec
    assert torch.rand(4, device="cuda").shape == (4,)  # before the release: "Offset increment outside graph capture"


def test_a_later_fit_gets_a_fresh_device_state():
    """accelerate's PartialState keeps the first fit's device; a stale one must not reach the next fit (a CUDA fit
    after a CPU fit in one process ran on the CPU)."""
    from accelerate.state import PartialState

    from lowrank_vision.core.train import _new_accelerator

    _new_accelerator(TrainConfig(max_steps=1, cpu=True))
    PartialState._shared_state["device"] = torch.device("meta")  # what a stale device looks like
    assert _new_accelerator(TrainConfig(max_steps=1, cpu=True)).device == torch.device("cpu")


def test_graph_runner_gives_up_on_extra_metrics(fake_cuda):
    model, runner = _runner(loss_fn=mse_with_extra)
    with pytest.warns(RuntimeWarning, match=r"extra metrics \['abs_y'\] as host floats"):
        for _ in range(5):
            loss, extra = runner.step(_batch())
            assert set(extra) == {"abs_y"}
    assert runner.record["captured"] is False and runner.record["eager_steps"] == 5
    assert "extra metrics ['abs_y']" in runner.record["fallback_reason"]


@pytest.mark.parametrize("n", [8, 6])
def test_graph_runner_captures_tensor_extras_and_reads_them_after_each_replay(fake_cuda, n):
    """0-d tensor extras are captured with the step (a static tensor per metric, cloned after each replay)."""
    model, runner = _runner(loss_fn=mse_with_tensor_extra)
    for _ in range(6):
        loss, extra = runner.step(_batch(n))
        assert set(extra) == {"abs_y"} and isinstance(extra["abs_y"], torch.Tensor)
    assert runner.record["captured"] is True and runner.record["fallback_reason"] is None
    assert runner.record["eager_steps"] == 3 and runner.record["graph_steps"] == 3 and FakeGraph.replays == 3
    assert float(extra["abs_y"]) == pytest.approx(float(_batch(n)[1].abs().mean()))  # the captured body's value
    assert extra["abs_y"] is not runner.static_extra["abs_y"]  # a copy: the next replay cannot change it


def test_set_lr_kind_round_trip():
    from lowrank_vision.core.train import _set_lr_kind

    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 0.5}, {"params": [nn.Parameter(torch.ones(2))]}], lr=0.25)
    p.grad = torch.ones(2)
    opt.step()  # an eager step: a host step counter, capturable=False (what an eager checkpoint brings back)
    opt.state[p]["step"] = opt.state[p]["step"].double()
    _set_lr_kind(opt, torch.device("cpu"))
    assert [type(g["lr"]) for g in opt.param_groups] == [torch.Tensor, torch.Tensor]
    assert all(g["capturable"] for g in opt.param_groups) and opt.state[p]["step"].dtype == torch.float32
    assert [float(g["lr"]) for g in opt.param_groups] == [0.5, 0.25]
    _set_lr_kind(opt, None)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]


@pytest.mark.gpu
@needs_cuda
def test_graph_resume_from_eager_checkpoint_follows_the_schedule_on_cuda(tmp_path):
    """An eager run's checkpoint holds float lrs; resumed in graph mode the captured step must still read the schedule."""
    common = dict(max_steps=12, lr=5e-3, warmup_steps=2, log_every=1, progress=False)
    straight = fit(make_model(), DataLoader(data(), batch_size=8, shuffle=True), mse, TrainConfig(**common))

    class Kill(Exception):
        pass

    def stop_at_4(step, model, metrics):
        if step == 4:
            raise Kill

    out = str(tmp_path / "run")
    with pytest.raises(Kill):
        fit(make_model(), DataLoader(data(), batch_size=8, shuffle=True), mse, TrainConfig(**common, output_dir=out, checkpoint_every=4),
            callbacks=[stop_at_4])
    resumed = fit(make_model(seed=3), DataLoader(data(), batch_size=8, shuffle=True), mse,
                  TrainConfig(**common, output_dir=out, checkpoint_every=4, resume=True, cuda_graph=True))
    assert resumed.cuda_graph["captured"] is True and resumed.cuda_graph["graph_steps"] == 12 - 4 - 3
    assert [m["lr"] for m in resumed.history] == pytest.approx([m["lr"] for m in straight.history], rel=1e-6)
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-4, abs=1e-6)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_a_run_stopped_by_a_callback_keeps_its_graph_record_on_cuda():
    def deadline(step, model, metrics):
        if step == 7:
            raise StopTraining("deadline")

    res = fit(make_model(), DataLoader(data(), batch_size=8, shuffle=True, drop_last=True), mse,
              TrainConfig(max_steps=20, lr=5e-3, log_every=1, progress=False, cuda_graph=True), callbacks=[deadline])
    assert res.stopped == "deadline" and res.steps == 7
    assert res.cuda_graph["captured"] is True and res.cuda_graph["graph_steps"] == 7 - 3, res.cuda_graph
    assert all(p.grad is None for p in res.model.parameters())
