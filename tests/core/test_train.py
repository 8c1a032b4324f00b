"""Tests of the shared trainer (lowrank_vision.core.train): loss goes down, exact resume, config errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lowrank_vision.core.train import StopTraining, TrainConfig, fit, latest_checkpoint, lr_factor, read_metrics

torch.set_num_threads(1)


class LineDataset(Dataset):
    """y = x @ w_true + 0.1, deterministic per index."""

    def __init__(self, n: int = 64, d: int = 8):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, d, generator=g)
        self.y = self.x @ torch.randn(d, 1, generator=g) + 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), {"abs_y": float(y.abs().mean())}


def loader() -> DataLoader:
    return DataLoader(LineDataset(), batch_size=5, shuffle=True)  # 13 batches, last one short


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


@pytest.mark.parametrize(
    "step, kind, warmup, expected",
    [
        (0, "constant", 0, 1.0),
        (0, "constant", 4, 0.25),
        (3, "cosine", 4, 1.0),
        (4, "cosine", 4, 1.0),
        (7, "cosine", 4, 0.5),  # halfway through the 6 decay steps of max_steps=10 -> cos(pi*3/6)
        (10, "cosine", 4, 0.0),
    ],
)
def test_lr_factor_table(step, kind, warmup, expected):
    assert lr_factor(step, max_steps=10, warmup_steps=warmup, kind=kind) == pytest.approx(expected, abs=1e-9)


def test_loss_goes_down_and_metrics_written(tmp_path):
    cfg = TrainConfig(max_steps=40, lr=1e-2, log_every=5, output_dir=str(tmp_path), progress=False, scheduler="constant")
    res = fit(make_model(), loader(), mse, cfg)
    assert res.steps == 40
    lines = read_metrics(tmp_path)
    assert [m["step"] for m in lines] == list(range(5, 45, 5))
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    assert res.final_loss == pytest.approx(lines[-1]["loss"])
    assert {"lr", "abs_y"} <= set(lines[0])


def test_only_trainable_params_change():
    model = make_model()
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    before_head = model[3].weight.detach().clone()
    fit(model, loader(), mse, TrainConfig(max_steps=5, progress=False))
    assert torch.equal(model[0].weight, before)
    assert not torch.equal(model[3].weight, before_head)


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_exact_resume_matches_uninterrupted(tmp_path, grad_accum):
    """N steps straight == stop after N/2 (checkpoint) + resume, bit for bit, across an epoch end."""
    n = 10  # 10 * grad_accum micro-batches > 13 batches per epoch when grad_accum=3
    common = dict(max_steps=n, lr=5e-3, grad_accum=grad_accum, warmup_steps=2, progress=False, log_every=1)
    straight = fit(make_model(), loader(), mse, TrainConfig(**common, output_dir=str(tmp_path / "a"))).model

    class Kill(Exception):
        pass

    def kill_at_half(step, model, metrics):
        if step == n // 2:
            raise Kill

    out_b = str(tmp_path / "b")
    with pytest.raises(Kill):
        fit(make_model(), loader(), mse, TrainConfig(**common, output_dir=out_b, checkpoint_every=n // 2), callbacks=[kill_at_half])
    assert latest_checkpoint(out_b).name == f"step_{n // 2}"
    # the resumed run starts from different initial weights: they must be overwritten by the checkpoint
    resumed = fit(make_model(seed=7), loader(), mse, TrainConfig(**common, output_dir=out_b, checkpoint_every=n // 2, resume=True))
    assert resumed.steps == n
    assert torch.equal(flat(straight), flat(resumed.model))
    steps_logged = [m["step"] for m in read_metrics(out_b)]
    assert steps_logged == list(range(1, n + 1))
    assert [m["loss"] for m in read_metrics(out_b)] == [m["loss"] for m in read_metrics(tmp_path / "a")]


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {here!r})
    from test_train import make_model, loader, mse, flat
    from lowrank_vision.core.train import TrainConfig, fit
    torch.set_num_threads(1)
    kill_at = int(sys.argv[2])
    def hard_kill(step, model, metrics):
        if step == kill_at:
            os._exit(137)  # like SIGKILL: no cleanup, no finally blocks
    cfg = TrainConfig(max_steps=8, lr=5e-3, checkpoint_every=3, output_dir=sys.argv[1], resume=True, progress=False, log_every=1)
    res = fit(make_model(), loader(), mse, cfg, callbacks=[hard_kill])
    torch.save(flat(res.model), os.path.join(sys.argv[1], "final.pt"))
    """
)


def test_hard_kill_then_resume_in_subprocess(tmp_path):
    """A process killed at step 5 (checkpoint at 3) and restarted with resume reaches the same weights."""
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(here=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, kill):
        return subprocess.run([sys.executable, str(script), str(out), str(kill)], env=env, capture_output=True, text=True)

    first = run(tmp_path / "k", 5)
    assert first.returncode == 137, first.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "k").name == "step_3"
    second = run(tmp_path / "k", -1)
    assert second.returncode == 0, second.stderr[-2000:]
    ref = run(tmp_path / "ref", -1)
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "k" / "final.pt"), torch.load(tmp_path / "ref" / "final.pt"))
    assert [m["step"] for m in read_metrics(tmp_path / "k")] == list(range(1, 9))


def test_bf16_autocast_runs_on_cpu():
    res = fit(make_model(), loader(), mse, TrainConfig(max_steps=3, mixed_precision="bf16", cpu=True, progress=False))
    assert res.steps == 3 and res.final_loss == res.final_loss  # finite, not NaN


def test_returned_model_is_plain_and_a_copy_trains_again():
    """A trained model comes back without accelerate's marks, so a deepcopy of it is placed on the device
    and trained again (a copy that kept the "prepared" mark was left on the CPU on CUDA machines)."""
    import copy

    first = fit(make_model(), loader(), mse, TrainConfig(max_steps=3, mixed_precision="bf16", cpu=True, progress=False)).model
    assert "_is_accelerate_prepared" not in first.__dict__ and "forward" not in first.__dict__
    x = torch.randn(4, 8)
    assert first(x).dtype == torch.float32
    before = flat(first).clone()
    second = fit(copy.deepcopy(first), loader(), mse, TrainConfig(max_steps=3, cpu=True, progress=False)).model
    assert not torch.equal(flat(second), before) and torch.equal(flat(first), before)


def test_eval_fn_and_callbacks():
    seen = []
    res = fit(make_model(), loader(), mse, TrainConfig(max_steps=4, eval_every=2, log_every=2, progress=False),
              callbacks=[lambda s, m, met: seen.append(s)], eval_fn=lambda m: {"n_params": sum(p.numel() for p in m.parameters())})
    assert seen == [1, 2, 3, 4]
    assert [h.get("eval_n_params") for h in res.history] == [8 * 16 + 16 + 16 + 1] * 2


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_a_callback_that_raises_stop_training_ends_the_run_and_fit_returns_its_record(cuda_graph):
    """A deadline-style stop: ``fit`` returns the model as it was after that step (the same weights as an uninterrupted
    run's at that step), the step's loss, and the whole-step graph record (here the CPU's eager fallback) that an
    exception propagating out of ``fit`` would lose."""
    cfg = TrainConfig(max_steps=8, lr=5e-3, log_every=3, progress=False, cuda_graph=cuda_graph)
    at_five = {}

    def keep(step, model, metrics):
        if step == 5:
            at_five.update(weights=flat(model).clone(), loss=metrics["loss"])

    fit(make_model(), loader(), mse, cfg, callbacks=[keep])

    def deadline(step, model, metrics):
        if step == 5:
            raise StopTraining("deadline reached after step 5")

    res = fit(make_model(), loader(), mse, cfg, callbacks=[deadline])
    assert res.steps == 5 and res.stopped == "deadline reached after step 5"
    assert torch.equal(flat(res.model), at_five["weights"])
    assert res.final_loss == pytest.approx(at_five["loss"], rel=1e-6)  # step 5 was not a logged step (log_every=3)
    assert [h["step"] for h in res.history] == [3]
    if cuda_graph:
        assert res.cuda_graph == {"requested": True, "captured": False, "graph_steps": 0, "eager_steps": 5,
                                  "fallback_reason": res.cuda_graph["fallback_reason"]} and "CUDA" in res.cuda_graph["fallback_reason"]
    else:
        assert res.cuda_graph == {"requested": False}
    assert fit(make_model(), loader(), mse, cfg).stopped is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"lr": 0.0}, "lr"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"scheduler": "linear"}, "scheduler"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"checkpoint_every": 5}, "output_dir"),
        ({"log_every": 0}, "log_every"),
        ({"optimizer_impl": "apex"}, "optimizer_impl"),
        ({"strategy_tuning": "on"}, "strategy_tuning"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_bad_inputs():
    frozen = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        fit(frozen, loader(), mse, TrainConfig(max_steps=1, progress=False))
    with pytest.raises(ValueError, match="no batches"):
        fit(make_model(), DataLoader(LineDataset(n=3), batch_size=5, drop_last=True), mse, TrainConfig(max_steps=1, progress=False))
    with pytest.raises(TypeError, match="loss_fn"):
        fit(make_model(), loader(), lambda m, b: (1.0, 2.0), TrainConfig(max_steps=1, progress=False))


def test_eval_every_without_eval_fn_is_an_error_not_ignored():
    with pytest.raises(ValueError, match="TrainConfig.eval_every"):
        fit(make_model(), loader(), mse, TrainConfig(max_steps=2, eval_every=1, progress=False))


def test_resume_with_other_architecture_fails_clearly(tmp_path):
    cfg = TrainConfig(max_steps=2, checkpoint_every=2, output_dir=str(tmp_path), progress=False)
    fit(make_model(), loader(), mse, cfg)
    other = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(RuntimeError, match="cannot resume"):
        fit(other, loader(), mse, TrainConfig(max_steps=2, checkpoint_every=2, output_dir=str(tmp_path), resume=True, progress=False))


# ----------------------------------------------------------------------------- AdamW kernels, measured strategies


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_adamw_kernel_steps_equal_the_plain_step(impl):
    from lowrank_vision.core.train import _new_adamw

    torch.manual_seed(0)
    shapes = [(4, 8), (8,), (3, 2, 5)]
    ref_params = [nn.Parameter(torch.randn(s)) for s in shapes]
    params = [nn.Parameter(p.detach().clone()) for p in ref_params]
    ref = _new_adamw([{"params": ref_params}], "plain", lr=1e-2, weight_decay=0.1)
    opt = _new_adamw([{"params": params}], impl, lr=1e-2, weight_decay=0.1)
    assert opt.param_groups[0]["foreach"] == (impl == "foreach") and bool(opt.param_groups[0]["fused"]) == (impl == "fused")
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ref_params, params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
    for p, q in zip(ref_params, params):
        assert not torch.equal(p, q.new_zeros(q.shape))
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_fit_records_the_adamw_kernel_and_foreach_trains_like_plain():
    cfg = dict(max_steps=6, lr=1e-2, progress=False, scheduler="constant")
    plain = fit(make_model(), loader(), mse, TrainConfig(**cfg, optimizer_impl="plain"))
    auto = fit(make_model(), loader(), mse, TrainConfig(**cfg))
    assert plain.optimizer == {"requested": "plain", "impl": "plain", "reason": "requested"}
    assert auto.optimizer["impl"] == "foreach" and auto.optimizer["requested"] == "auto"  # a CPU run
    torch.testing.assert_close(flat(auto.model), flat(plain.model), rtol=1e-5, atol=1e-6)


def test_choose_optimizer_impl_table():
    from lowrank_vision.core.train import choose_optimizer_impl

    floats, ints = [torch.zeros(2)], [torch.zeros(2, dtype=torch.long)]
    assert choose_optimizer_impl("auto", "cuda", False, floats)[0] == "fused"
    assert choose_optimizer_impl("auto", "cuda", True, floats)[0] == "foreach"
    assert choose_optimizer_impl("auto", "cpu", False, floats)[0] == "foreach"
    assert choose_optimizer_impl("fused", "cpu", False, ints)[0] == "foreach"
    assert choose_optimizer_impl("plain", "cuda", False, floats) == ("plain", "requested")


@pytest.mark.parametrize("mode", ["layer", "model"])
def test_fit_measured_strategies_are_recorded_and_train_like_untuned(mode):
    from lowrank_vision.core import adapter_layers, apply

    def adapted():
        model = make_model()
        apply(model, "lora", rank=2, targets=("0",))
        return model

    cfg = dict(max_steps=4, lr=1e-2, progress=False, scheduler="constant")
    untuned = fit(adapted(), loader(), mse, TrainConfig(**cfg))
    tuned = fit(adapted(), loader(), mse, TrainConfig(**cfg, strategy_tuning=mode))
    assert untuned.strategies == {"mode": "off"}
    layers = tuned.strategies["layers"]
    assert tuned.strategies["mode"] == mode and set(layers) == set(adapter_layers(tuned.model))
    for name, record in layers.items():
        assert record["strategy"] == adapter_layers(tuned.model)[name].strategy
        assert record["input_shape"][-1] in (8, 16) and record["device"] == "cpu"
        if record["source"] == "measured":
            assert record["strategy"] == min(record["times_s"], key=record["times_s"].get)
        assert (mode == "model") == ("model_times_s" in record)
    # same numbers: the strategies compute the same update, and the tuning put every RNG back (dropout draws)
    torch.testing.assert_close(flat(tuned.model), flat(untuned.model), rtol=1e-5, atol=1e-6)
