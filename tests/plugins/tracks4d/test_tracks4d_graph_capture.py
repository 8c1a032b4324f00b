"""The encoder's training step is capturable as one whole-step CUDA graph (``TrainRunConfig().train`` asks for it): the
model builds its 6-D identity rotation on the device (it was copied from a host tuple at each forward), the loss returns
its terms as 0-d tensors (it read five floats back to the host per step), and the rigid / rotation-only stages are 0-d
bool tensors refilled in place between steps (a Python bool would have frozen the captured stage)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lowrank_vision.datasets.tracks import SceneConfig, make_scene
from lowrank_vision.plugins.tracks4d.config import LossConfig, ModelConfig, TrainRunConfig
from lowrank_vision.plugins.tracks4d.model import TracksTo4DNet, decode_motion, mean_observation, project
from lowrank_vision.plugins.tracks4d.recipes import _forward, _StageFlags, fit_encoder, loss_terms, pool_batch, prepare

from ...capture_checks import HostTraffic

torch.set_num_threads(1)
SMALL = ModelConfig(width=16, depth=1, heads=2, mlp_ratio=2, octaves=4, num_basis=4, conv_kernel=5)
TINY_SCENE = SceneConfig(frames=8, points=24)
TERMS = {"static", "dynamic", "negative_depth", "sparsity", "static_l1", "reprojection_px"}


def _scenes(count: int, scene: SceneConfig = TINY_SCENE, device: str = "cpu") -> dict:
    return prepare([make_scene(seed, scene).to_trackset() for seed in range(1, count + 1)], device)


def _net_with_large_heads() -> TracksTo4DNet:
    """Heads at full scale (they start at 1 %): cameras, depths and γ far from the symmetric start."""
    torch.manual_seed(0)
    net = TracksTo4DNet(SMALL)
    with torch.no_grad():
        for head in (net.frame_head, net.point_head):
            head.weight.normal_(std=0.3)
            head.bias.normal_(std=0.3)
    return net


@pytest.mark.parametrize("step", [0, 2, 5], ids=["rotation-only", "rigid", "full"])
@pytest.mark.parametrize("pooled", [False, True], ids=["scenes", "pool"])
def test_the_training_step_moves_nothing_between_host_and_device(step, pooled):
    """The loss_fn of ``fit_encoder`` (pool gathering, forward, loss with the stage flags) and its backward."""
    net = _net_with_large_heads()
    stages = _StageFlags(rigid_steps=4, rotation_steps=2)
    stages(step, net, {})
    data = _scenes(3)
    index = torch.tensor([2, 0])
    with HostTraffic() as mode:
        batch = pool_batch(data, index, points=16, flip_x=True) if pooled else data
        rigid, rotation_only = stages.on(batch["tracks"].device)
        loss, terms = loss_terms(_forward(net, batch), batch, LossConfig(), rigid=rigid, rotation_only=rotation_only)
        loss.backward()
    assert mode.count == 0
    assert (bool(rigid), bool(rotation_only)) == (step < 4, step < 2)
    assert set(terms) == TERMS and all(v.ndim == 0 and not v.requires_grad for v in terms.values())
    assert math.isfinite(float(loss.detach())) and all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_the_host_traffic_check_sees_what_the_old_step_did():
    """(Boolean-mask indexing is not counted on a CPU: ``aten.index.Tensor`` runs its ``nonzero`` below the dispatch
    mode; the old loss had none, its means over visible observations already multiplied by the mask.)"""
    frame_raw = torch.zeros(2, 6)
    with HostTraffic() as mode:
        frame_raw.new_tensor((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))  # the old 6-D identity of decode_motion
        float(frame_raw.sum())  # the old loss terms as floats
    assert mode.count == 2


def _masked_index_terms(out: dict, batch: dict, config: LossConfig, rigid: bool, rotation_only: bool) -> tuple[torch.Tensor, dict]:
    """The reference: the loss with means over the visible observations taken by boolean indexing and the stages picked
    by host ``if``s (the formulation a graph cannot capture)."""
    obs, vis, f_px = batch["tracks"], batch["visible"], batch["f_px"]
    t = torch.zeros_like(out["t"]) if rotation_only else out["t"]
    basis0 = out["basis"][:, :, 0]
    uv_s, z_s = project(basis0[:, None], out["R"], t, out["focal"], config.min_depth)
    moving = out["points"] - basis0[:, None] + basis0[:, None].detach()  # the dynamic term leaves the static basis alone
    uv_d, z_d = project(moving, out["R"], t, out["focal"], config.min_depth)
    gamma = out["gamma"][:, None].expand_as(vis)
    r2_static = ((uv_s - obs) ** 2).sum(-1)
    r_static = (r2_static + 1e-12).sqrt()
    r_dynamic = (((uv_d - obs) ** 2).sum(-1) + 1e-12).sqrt()
    negative_static = F.relu(config.min_depth - z_s).mean()
    terms = {"static": torch.log(gamma[vis] + r2_static[vis] / gamma[vis]).mean(), "dynamic": r_dynamic[vis].mean(),
             "negative_depth": F.relu(config.min_depth - z_d).mean() + negative_static,
             "sparsity": (out["basis"][:, :, 1:].abs().mean(dim=(-1, -2)) / out["gamma"].detach()).mean(), "static_l1": r_static[vis].mean()}
    scored = r_static if rigid else r_dynamic
    terms["reprojection_px"] = torch.stack([scored[b][vis[b]].mean() * f_px[b] for b in range(len(obs))]).mean()
    if rigid:
        return terms["static_l1"] + config.negative_depth_weight * negative_static, terms
    return (config.static_weight * terms["static"] + config.dynamic_weight * terms["dynamic"]
            + config.negative_depth_weight * terms["negative_depth"] + config.sparsity_weight * terms["sparsity"]), terms


@pytest.mark.parametrize("rigid, rotation_only", [(False, False), (True, False), (True, True)])
def test_the_loss_and_its_gradients_equal_the_masked_index_formulation(rigid, rotation_only):
    """Random motion-model outputs in float64 (sums in another order agree to 1e-12); the device flags give the bool's
    values and gradients exactly."""
    batch = _scenes(3)
    batch["tracks"] = batch["tracks"].double()
    assert not batch["visible"].all() and batch["visible"].any(-1).all()  # occluded observations, no empty track
    B, T, N, _ = batch["tracks"].shape
    torch.manual_seed(0)
    frame_raw = (0.3 * torch.randn(B, T, 10 + SMALL.num_basis - 1, dtype=torch.float64)).requires_grad_()
    point_raw = (0.3 * torch.randn(B, N, 3 * SMALL.num_basis + 1, dtype=torch.float64)).requires_grad_()
    obs_mean = mean_observation(batch["tracks"], batch["visible"])
    config = LossConfig(sparsity_weight=0.1, min_depth=4.5)  # a min_depth among the depths: the negative-depth terms work

    def loss_and_grads(terms_of, **flags):
        out = decode_motion(frame_raw, point_raw, obs_mean, SMALL, batch["focal_known"])
        loss, terms = terms_of(out, batch, config, **flags)
        grads = torch.autograd.grad(loss, [frame_raw, point_raw])
        return loss.detach(), {k: v.detach() for k, v in terms.items()}, grads

    expected, expected_terms, expected_grads = loss_and_grads(_masked_index_terms, rigid=rigid, rotation_only=rotation_only)
    assert float(expected_terms["negative_depth"]) > 0
    by_bool = loss_and_grads(loss_terms, rigid=rigid, rotation_only=rotation_only)
    by_flag = loss_and_grads(loss_terms, rigid=torch.tensor(rigid), rotation_only=torch.tensor(rotation_only))
    for loss, terms, grads in (by_bool, by_flag):
        assert torch.allclose(loss, expected, rtol=1e-12, atol=0)
        assert terms.keys() == expected_terms.keys() and all(torch.allclose(terms[k], expected_terms[k], rtol=1e-12) for k in terms)
        assert all(torch.allclose(g, e, rtol=1e-9, atol=1e-15) for g, e in zip(grads, expected_grads))
    assert torch.equal(by_flag[0], by_bool[0]) and all(torch.equal(f, b) for f, b in zip(by_flag[2], by_bool[2]))


def test_the_default_train_config_requests_the_whole_step_graph():
    assert TrainRunConfig().train.cuda_graph


def _tiny_run(steps: int, rigid_steps: int, rotation_steps: int = 0, **train) -> TrainRunConfig:
    """The default TrainConfig (graph requested) at test size, logging every step."""
    return TrainRunConfig(model=SMALL, scene=TINY_SCENE, train_scenes=4, val_scenes=1, batch_size=2, rigid_warmup_steps=rigid_steps,
                          rotation_first_steps=rotation_steps,
                          train=replace(TrainRunConfig().train, max_steps=steps, warmup_steps=1, log_every=1, progress=False, **train))


def _stage_of_each_step(history: list[dict], loss: LossConfig) -> list[str]:
    """'rigid' where the logged loss is the static L1 (no point is behind a camera this early), 'full' where it is the
    weighted sum of the full loss's terms."""
    def full(h):
        return (loss.static_weight * h["static"] + loss.dynamic_weight * h["dynamic"] + loss.negative_depth_weight * h["negative_depth"]
                + loss.sparsity_weight * h["sparsity"])
    return ["rigid" if h["loss"] == pytest.approx(h["static_l1"], rel=1e-5, abs=1e-6)
            else "full" if h["loss"] == pytest.approx(full(h), rel=1e-5, abs=1e-6) else "neither" for h in history]


def test_a_cpu_fit_records_the_fallback_and_logs_the_terms_as_floats():
    result = fit_encoder(_tiny_run(steps=3, rigid_steps=1))
    graph = result.cuda_graph
    assert graph["requested"] and not graph["captured"] and graph["fallback_reason"].startswith("device is cpu"), graph
    assert len(result.history) == 3 and all(TERMS <= h.keys() and all(type(h[k]) is float for k in TERMS) for h in result.history)
    assert not result.model.training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pooled, precision", [(False, "no"), (True, "no"), (True, "bf16")])
def test_the_encoder_step_is_captured_on_cuda_and_follows_the_stages(pooled, precision):
    """Capture after 3 warm-up steps; the rigid stage ends at step 6, after the capture, and the replays follow it."""
    steps, rigid_steps = 12, 6
    cfg = _tiny_run(steps=steps, rigid_steps=rigid_steps, rotation_steps=2, mixed_precision=precision)
    pool = _scenes(6, SceneConfig(frames=8, points=32), "cuda") if pooled else None
    result = fit_encoder(cfg, device="cuda", pool=pool, pool_points=24 if pooled else None)
    graph = result.cuda_graph
    assert graph["captured"] and graph["fallback_reason"] is None, graph
    assert graph["eager_steps"] == 3 and graph["graph_steps"] == steps - 3, graph
    assert next(result.model.parameters()).is_cuda and all(math.isfinite(h["loss"]) for h in result.history)
    assert _stage_of_each_step(result.history, cfg.loss) == ["rigid"] * rigid_steps + ["full"] * (steps - rigid_steps)
