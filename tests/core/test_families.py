"""The families of issue 20, each by its defining property in miniature.

The shared contract (identity at init, merge == unmerged, strategies agree, parameter formulas,
save/load, remove) runs for every family and layer type in ``test_adapters.py`` through the table in
``cases.py``; this file checks what makes each family what it is, with its default options.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lowrank_vision.core import adapter_layers, apply, load, merge, remove, save, unmerge
from lowrank_vision.core.adapters.hypelora import HyperNetwork
from lowrank_vision.core.adapters.mtlora import forward_all_tasks, set_task, task_outputs
from lowrank_vision.core.adapters.sltrain import memory_report
from lowrank_vision.core.functional import flylora as F_fly
from lowrank_vision.core.functional import hypelora as F_hyper
from lowrank_vision.core.functional.hypelora import hypernetwork_param_count
from lowrank_vision.core.functional.noble import cosnet
from lowrank_vision.core.functional.sltrain import sltrain_memory, sparse_to_dense
from lowrank_vision.core.functional.layout import geometry_of

from .cases import randomize_adapter


class MixedNet(nn.Module):
    """Linear, Conv2d and ConvTranspose2d layers of different shapes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.fc = nn.Linear(4, 40)
        self.head = nn.Linear(40, 5)

    def forward(self, x):
        x = self.up(torch.relu(self.conv(x))).mean((2, 3))
        return self.head(torch.relu(self.fc(x)))


# family -> (rank, options): every family with its default options (mtlora with two tasks)
DEFAULTS = {
    "noble": (4, {}),
    "sltrain": (4, {}),
    "flylora": (4, {}),
    "block_lora": (4, {}),
    "mtlora": (4, {"tasks": ("seg", "depth")}),
    "hypelora": (4, {}),
}
MERGEABLE = {"sltrain", "block_lora", "mtlora", "hypelora"}


def adapted(method: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MixedNet()
    rank, options = DEFAULTS[method]
    apply(model, method, rank=rank, **options)
    return model


@pytest.mark.parametrize("method", DEFAULTS)
def test_default_options_save_load_round_trip_is_exact(method, tmp_path):
    """With the from-scratch defaults (noble trains the wrapped layer, sltrain replaces its weight) a saved
    adapter is complete: a model with other base weights computes the same outputs after ``load``."""
    model = adapted(method)
    randomize_adapter(model)
    x = torch.randn(2, 3, 5, 5)
    expected = model(x).detach()
    save(model, tmp_path / "a")
    fresh = MixedNet()  # another seed: the base weights differ
    if method not in ("noble", "sltrain"):
        fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if k.replace(".base_layer", "") in fresh.state_dict()})
    load(fresh, tmp_path / "a")
    assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("method", DEFAULTS)
def test_merge_is_exact_or_refused(method):
    model = adapted(method)
    randomize_adapter(model)
    x = torch.randn(2, 3, 5, 5)
    expected = model(x).detach()
    if method not in MERGEABLE:
        with pytest.raises(TypeError, match="nonlinear"):
            merge(model)
        return
    assert merge(model) == 4
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    unmerge(model)
    assert torch.equal(model(x), expected)
    remove(model, keep_merged=True)  # a plain model with the adapted weights
    assert not adapter_layers(model) and isinstance(model.fc, nn.Linear)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


# -- NOBLE -------------------------------------------------------------------------------------
def test_cosnet_is_two_cosines_with_a_linear_between():
    torch.manual_seed(0)
    h = torch.randn(5, 3)
    f1, p1, f2, p2, m = torch.rand(3) + 0.5, torch.randn(3), torch.rand(3) + 0.5, torch.randn(3), torch.randn(3, 3)
    expected = torch.cos(f2 * (torch.cos(f1 * h + p1) @ m.T) + p2)
    torch.testing.assert_close(cosnet(h, f1, p1, m, f2, p2), expected)
    conv = cosnet(h.T.reshape(1, 3, 5, 1), f1, p1, m, f2, p2, channel_dim=1)  # channels on dim 1
    torch.testing.assert_close(conv.reshape(3, 5).T, expected)


def test_noble_branch_on_a_conv_and_its_from_scratch_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1))
    report = apply(model, "noble", rank=4)
    layer = model[0]
    branch = 4 * (3 * 9 + 5) + 16 + 16
    assert report.adapter_params == report.trainable_params == branch + 5 * 3 * 9 + 5  # the conv's own weight and bias train
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    h = F.conv2d(x, layer.noble_down.view(4, 3, 3, 3), stride=2, padding=1).movedim(1, -1)
    h = torch.cos(layer.cosnet_freq2 * (torch.cos(layer.cosnet_freq1 * h + layer.cosnet_phase1) @ layer.cosnet_mix.T) + layer.cosnet_phase2)
    expected = layer.root(x) + layer.scale * (h @ layer.noble_up.T).movedim(-1, 1)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    model(x).square().mean().backward()
    for name in ("base_layer.weight", "base_layer.bias", "cosnet_freq1", "cosnet_phase2", "cosnet_mix", "noble_down"):
        assert dict(layer.adapter_parameters())[name].grad.abs().sum() > 0, name


def test_noble_train_base_false_freezes_the_layer_and_stacking_needs_it():
    model = nn.Sequential(nn.Linear(6, 5))
    apply(model, "noble", rank=2, train_base=False)
    assert not model[0].root.weight.requires_grad
    stacked = nn.Sequential(nn.Linear(6, 5))
    apply(stacked, "lora", rank=2)
    with pytest.raises(ValueError, match="train_base=True must wrap the plain layer"):
        apply(stacked, "noble", rank=2, adapter_name="noble")


# -- SLTrain -----------------------------------------------------------------------------------
def test_sltrain_weight_is_low_rank_plus_fixed_random_sparse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 12), nn.Linear(20, 12))
    report = apply(model, "sltrain", rank=3, density=0.1)
    nnz = round(0.1 * 240)
    assert report.adapter_params == 2 * (3 * 32 + nnz + 12)  # factors, sparse values and the trained bias
    layer = model[0]
    support = layer.delta.support.clone()
    assert support.numel() == nnz == layer.delta.sparse_values.numel() and support.unique().numel() == nnz
    assert not torch.equal(support, model[1].delta.support)  # each layer draws its own support
    x = torch.randn(7, 20)
    d = layer.delta
    weight = layer.scale * d.lora_B @ d.lora_A + sparse_to_dense(d.sparse_values, support, 12, 20)
    assert (sparse_to_dense(d.sparse_values, support, 12, 20) != 0).sum() == nnz
    torch.testing.assert_close(layer(x), x @ weight.T + layer.root.bias)
    with torch.no_grad():
        layer.root.weight.fill_(7.0)  # the dense weight is not used in mode="replace"
    torch.testing.assert_close(layer(x), x @ weight.T + layer.root.bias)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model[0](x).square().mean().backward()
        optimizer.step()
    assert torch.equal(layer.delta.support, support)  # the support never moves


def test_sltrain_strategies_agree_in_replace_mode():
    outputs, grads = {}, {}
    for strategy in ("weight", "activation"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
        apply(model, "sltrain", rank=2, density=0.2, strategy=strategy)
        x = torch.randn(2, 4, 6, 6)
        outputs[strategy] = model(x)
        outputs[strategy].square().mean().backward()
        grads[strategy] = {n: p.grad for n, p in model[0].adapter_parameters()}
    torch.testing.assert_close(outputs["weight"], outputs["activation"], rtol=1e-5, atol=1e-5)
    for name, grad in grads["weight"].items():
        torch.testing.assert_close(grads["activation"][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_sltrain_memory_report_for_a_reference_layer():
    """Linear(768, 768), rank 64, density 0.03, float32 with Adam: 21% of a dense layer's training memory."""
    model = nn.Sequential(nn.Linear(768, 768))
    apply(model, "sltrain", rank=64, density=0.03)
    report = memory_report(model)
    nnz = round(0.03 * 768 * 768)
    assert nnz == 17695
    row = report["layers"]["0[default]"]
    assert row == {**sltrain_memory(geometry_of(nn.Linear(768, 768)), 64, nnz), "wrapped_dense_weight_bytes": 768 * 768 * 4}
    assert row["sltrain_params"] == 64 * 1536 + nnz == 115_999
    assert row["dense_training_bytes"] == 768 * 768 * 4 * 4
    assert row["sltrain_training_bytes"] == 115_999 * 16 + nnz * 8
    assert report["ratio"] == pytest.approx(0.2117, abs=1e-4)
    with pytest.raises(ValueError, match="no sltrain adapter"):
        memory_report(nn.Sequential(nn.Linear(3, 3)))


def test_sltrain_replace_mode_refuses_dropout_and_stacking():
    with pytest.raises(ValueError, match="dropout must be 0 for sltrain"):
        apply(nn.Sequential(nn.Linear(4, 4)), "sltrain", rank=2, dropout=0.1)
    stacked = nn.Sequential(nn.Linear(4, 4))
    apply(stacked, "lora", rank=2)
    with pytest.raises(ValueError, match="mode='add' to stack"):
        apply(stacked, "sltrain", rank=2, adapter_name="s")


# -- FlyLoRA -----------------------------------------------------------------------------------
def test_flylora_router_is_frozen_sparse_and_regenerated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    report = apply(model, "flylora", rank=8, top_k=2, density=0.125)
    assert report.adapter_params == 16 * 8 + 8 * 8  # B only
    layer = model[0]
    router = layer.router.clone()
    assert "router" not in dict(model.named_parameters()) and not router.requires_grad
    assert not any(k.endswith("router") for k in model.state_dict())  # never saved: regenerated from the seed
    assert ((router != 0).sum(dim=1) == 8).all()  # round(0.125 * 64) nonzeros in every row
    randomize_adapter(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(32, 64)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    assert torch.equal(layer.router, router)  # frozen through training
    again = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    apply(again, "flylora", rank=8, top_k=2, density=0.125)
    assert torch.equal(again[0].router, router)  # same seed and layer name: same router
    other = nn.Sequential(nn.Linear(64, 16))
    apply(other, "flylora", rank=8, top_k=2, density=0.125, seed=1)
    assert not torch.equal(other[0].router, router)


def test_flylora_keeps_top_k_experts_per_token_and_position():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8))
    apply(model, "flylora", rank=6, top_k=2, density=0.5)
    randomize_adapter(model)
    layer, x = model[0], torch.randn(9, 12)
    routed = layer.routed(x)
    assert ((routed != 0).sum(dim=-1) == 2).all()
    scores = x @ layer.router.T
    keep = scores.abs().topk(2, dim=-1).indices
    torch.testing.assert_close(routed.gather(-1, keep), scores.gather(-1, keep))
    torch.testing.assert_close(model(x), layer.root(x) + layer.scale * routed @ layer.fly_B.T)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    apply(conv, "flylora", rank=4, top_k=1)
    assert ((conv[0].routed(torch.randn(2, 3, 5, 5)) != 0).sum(dim=1) == 1).all()  # one expert per position


def test_flylora_routers_of_two_tasks_are_nearly_orthogonal():
    """What makes FlyLoRA adapters mergeable across tasks: random sparse routers barely overlap."""
    first = F_fly.sparse_router(1, 16, 512, 64)
    second = F_fly.sparse_router(2, 16, 512, 64)
    cosine = F.normalize(first, dim=1) @ F.normalize(second, dim=1).T
    assert cosine.abs().mean() < 0.1
    with pytest.raises(ValueError, match="top_k must be at most the rank 4"):
        apply(nn.Sequential(nn.Linear(8, 8)), "flylora", rank=4, top_k=5)


# -- Block-LoRA --------------------------------------------------------------------------------
def test_block_lora_shares_one_down_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20))
    report = apply(model, "block_lora", rank=8, num_blocks=4)
    assert report.adapter_params == 20 * 8 + 2 * 30
    d = model[0].delta
    assert d.shared_A.shape == (2, 30) and d.blocks_B.shape == (4, 20, 2)
    randomize_adapter(model)
    expected = model[0].scale * sum(d.blocks_B[i] @ d.shared_A for i in range(4))
    torch.testing.assert_close(model[0].delta_weight(), expected)
    assert torch.linalg.matrix_rank(expected.detach()) == 2  # rank r / n
    model(torch.randn(5, 30)).sum().backward()
    for i in range(1, 4):  # every arm gets the same gradient
        torch.testing.assert_close(d.blocks_B.grad[i], d.blocks_B.grad[0])
    with pytest.raises(ValueError, match="rank 6 must be a multiple of BlockLoRAOptions.num_blocks=4"):
        apply(nn.Sequential(nn.Linear(8, 8)), "block_lora", rank=6)


# -- MTLoRA ------------------------------------------------------------------------------------
def test_mtlora_task_selection():
    model = adapted("mtlora")
    randomize_adapter(model)
    x = torch.randn(2, 3, 5, 5)
    outputs = {}
    for task in ("seg", "depth", None):
        assert set_task(model, task) == 4
        outputs[task] = model(x).detach()
    assert (outputs["seg"] - outputs["depth"]).abs().max() > 1e-3 and (outputs["seg"] - outputs[None]).abs().max() > 1e-3
    fc = model.fc
    set_task(model, "depth")
    d = fc.delta
    expected = fc.scale * (d.shared_B @ d.shared_A + d.task_B["depth"] @ d.task_A["depth"])
    torch.testing.assert_close(fc.delta_weight(), expected)
    model(x).square().mean().backward()
    assert d.shared_A.grad is not None and d.task_A["depth"].grad is not None and d.task_A["seg"].grad is None
    with pytest.raises(ValueError, match=r"task must be None, 'all' or one of \('seg', 'depth'\)"):
        set_task(model, "normals")
    merge(model)
    torch.testing.assert_close(model(x), outputs["depth"], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge it before switching"):
        set_task(model, "seg")
    unmerge(model)
    set_task(model, "seg")
    assert torch.equal(model(x), outputs["seg"])


class MultiTaskNet(nn.Module):
    """A conv backbone and one linear feature layer per model, whose output feeds every task's head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, groups=2)
        self.neck = nn.Linear(8, 12)

    def forward(self, x):
        return self.neck(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def multitask_net(seed: int = 0) -> nn.Module:
    """Plain LoRA (the task-agnostic path) on the backbone, MTLoRA on the layer feeding the heads."""
    torch.manual_seed(seed)
    model = MultiTaskNet()
    apply(model, "lora", rank=2, targets=["conv1", "conv2"], adapter_name="shared")
    apply(model, "mtlora", rank=2, targets=["neck"], tasks=("seg", "depth", "normals"), task_rank=3)
    for layer in adapter_layers(model, "shared").values():  # apply froze the first adapter; both train here
        for _, param in layer.adapter_parameters():
            param.requires_grad_(True)
    randomize_adapter(model)
    return model.eval()


def test_mtlora_all_tasks_in_one_pass_equal_one_task_at_a_time():
    model = multitask_net()
    x = torch.randn(2, 3, 6, 6)
    per_task = {}
    for task in ("seg", "depth", "normals", None):
        set_task(model, task)
        per_task[task] = model(x).detach()
    shared_out, features = forward_all_tasks(model, x)
    assert model.neck.active_task is None  # the previous mode is restored
    torch.testing.assert_close(shared_out, per_task[None], rtol=0, atol=0)  # the network runs the shared path
    assert set(features) == {"seg", "depth", "normals"} and all(set(f) == {"neck"} for f in features.values())
    for task in ("seg", "depth", "normals"):
        torch.testing.assert_close(features[task]["neck"], per_task[task], rtol=1e-6, atol=1e-6)
        assert (features[task]["neck"] - shared_out).abs().max() > 1e-2
    # every layer of an all-MTLoRA model: the first layer's features equal one-task mode exactly (its input is the
    # model input); a later layer's task branch reads the shared input, so its features differ from one-task mode
    model = adapted("mtlora")
    randomize_adapter(model)
    single = {}
    for task in ("seg", "depth"):
        set_task(model, task)
        single[task] = model.conv(x[:, :, :5, :5]).detach()
    _, features = forward_all_tasks(model, x[:, :, :5, :5])
    assert set(features["seg"]) == {"conv", "up", "fc", "head"}
    for task in ("seg", "depth"):
        torch.testing.assert_close(features[task]["conv"], single[task], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer, x", [
    (nn.Embedding(10, 6), torch.tensor([[1, 4, 9]])),
    (nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.randn(2, 4, 5, 5)),  # dense branch through the layer's op
    (nn.ConvTranspose2d(4, 3, 2, stride=2), torch.randn(2, 4, 3, 3)),
])
def test_mtlora_all_tasks_on_every_layer_type(layer, x):
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    apply(model, "mtlora", rank=2, tasks=("a", "b"))
    randomize_adapter(model)
    single = {}
    for task in ("a", "b"):
        set_task(model, task)
        single[task] = model(x).detach()
    _, features = forward_all_tasks(model, x)
    for task in ("a", "b"):
        torch.testing.assert_close(features[task]["0"], single[task], rtol=1e-5, atol=1e-5)
    assert (single["a"] - single["b"]).abs().max() > 1e-3


def test_mtlora_all_tasks_gradients_reach_only_the_tasks_used():
    model = multitask_net()
    set_task(model, "all")
    model(torch.randn(2, 3, 6, 6))
    features = task_outputs(model)
    with pytest.raises(RuntimeError, match="has no task features"):
        task_outputs(model)  # released after reading
    features["depth"]["neck"].square().mean().backward()
    d = model.neck.delta
    assert d.task_A["depth"].grad.abs().sum() > 0 and d.task_B["depth"].grad.abs().sum() > 0
    assert d.task_A["seg"].grad is None and d.task_B["normals"].grad is None
    assert d.shared_A.grad.abs().sum() > 0 and model.conv1.delta.lora_A.grad.abs().sum() > 0  # the shared path learns
    model.zero_grad(set_to_none=True)
    out, features = forward_all_tasks(model, torch.randn(2, 3, 6, 6))
    (out.sum() * 0 + features["seg"]["neck"].sum() + features["normals"]["neck"].sum()).backward()
    assert d.task_A["depth"].grad is None and d.task_A["seg"].grad.abs().sum() > 0 and d.task_A["normals"].grad.abs().sum() > 0


def test_mtlora_all_tasks_after_save_load_and_merge(tmp_path):
    model = multitask_net()
    x = torch.randn(2, 3, 6, 6)
    out, features = forward_all_tasks(model, x)
    save(model, tmp_path / "shared", adapter_name="shared")
    save(model, tmp_path / "mt")
    fresh = MultiTaskNet().eval()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "neck" not in k and "conv" not in k}, strict=False)
    for name in ("conv1", "conv2", "neck"):  # the frozen base weights
        getattr(fresh, name).load_state_dict(adapter_layers(model, "shared" if name != "neck" else "default")[name].root.state_dict())
    load(fresh, tmp_path / "shared")
    load(fresh, tmp_path / "mt")
    fresh_out, fresh_features = forward_all_tasks(fresh.eval(), x)
    assert torch.equal(fresh_out, out)
    for task in features:
        assert torch.equal(fresh_features[task]["neck"], features[task]["neck"])
    set_task(fresh, "all")
    merge(fresh)  # folds the shared update; the task branches still run on the input
    merged_out = fresh(x)
    torch.testing.assert_close(merged_out, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(task_outputs(fresh)["seg"]["neck"], features["seg"]["neck"], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge it before switching"):
        set_task(fresh, "seg")


def test_mtlora_options_are_checked():
    with pytest.raises(ValueError, match="MTLoRAOptions.tasks must be a non-empty tuple of distinct identifier strings"):
        apply(nn.Sequential(nn.Linear(4, 4)), "mtlora", rank=2, tasks=("a", "a"))
    with pytest.raises(ValueError, match="other than 'all'"):
        apply(nn.Sequential(nn.Linear(4, 4)), "mtlora", rank=2, tasks=("seg", "all"))
    with pytest.raises(ValueError, match="MTLoRAOptions.tasks"):
        apply(nn.Sequential(nn.Linear(4, 4)), "mtlora", rank=2, tasks=("has.dot",))
    with pytest.raises(ValueError, match="no mtlora adapter"):
        set_task(nn.Sequential(nn.Linear(4, 4)), "a")


# -- HypeLoRA ----------------------------------------------------------------------------------
def test_hypelora_one_network_generates_every_layer():
    model = adapted("hypelora")
    layers = list(adapter_layers(model).values())
    network = layers[0].delta.hypernetwork
    assert isinstance(network, HyperNetwork) and all(a.delta.hypernetwork is network for a in layers)
    e = 8
    expected = hypernetwork_param_count(e, 8, 32, 16, 4) + 4 * e
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for a in layers for _, p in a.adapter_parameters()) == expected == n_trainable
    randomize_adapter(model)
    # each layer's factors are the network's chunks for its own embedding, cut to its shape
    fc = model.fc  # Linear(4, 40): 3 B chunks of 16 rows, cut to 40
    chunks_b = F_hyper.generate_chunks(fc.delta.layer_embedding, F_hyper.chunk_codes(3, 8), network.w1, network.b1, network.wb, network.bb)
    assert fc.delta.factors()[1].shape == (40, 4)
    torch.testing.assert_close(fc.delta.factors()[1], chunks_b.view(48, 4)[:40])
    # the one network gets gradient from a layer other than its owner
    x = torch.randn(2, 3, 5, 5)
    model.head.low_rank_weight().square().sum().backward()
    assert network.w1.grad.abs().sum() > 0 and model.head.delta.layer_embedding.grad.abs().sum() > 0
    assert model.conv.delta.layer_embedding.grad is None
    before = model(x).detach()
    deltas = {name: a.delta_weight().detach() for name, a in adapter_layers(model).items()}
    with torch.no_grad():
        network.wb.mul_(2.0)  # B = W_B h + b_B doubles on every layer: the one network makes every update
        network.bb.mul_(2.0)
    assert all(torch.allclose(a.delta_weight(), 2 * deltas[name], rtol=1e-5, atol=1e-6) for name, a in adapter_layers(model).items())
    assert (model(x) - before).abs().max() > 1e-4


def test_hypelora_saves_the_shared_network_once(tmp_path):
    model = adapted("hypelora")
    randomize_adapter(model)
    save(model, tmp_path / "h")
    keys = sorted(load_file(str(tmp_path / "h" / "adapter_model.safetensors")))
    assert [k for k in keys if ".hypernetwork." in k] == [f"conv.delta.hypernetwork.{n}" for n in ("b1", "ba", "bb", "w1", "wa", "wb")]
    assert sum(k.endswith("layer_embedding") for k in keys) == 4


def test_hypelora_rank_is_one_per_network():
    options_cls = adapter_layers(adapted("hypelora"))["conv[default]"].options_cls
    options = options_cls()
    from lowrank_vision.core.adapters.hypelora import shared_hypernetwork

    shared_hypernetwork(options, 4)
    with pytest.raises(ValueError, match="need one rank, got 2 after 4"):
        shared_hypernetwork(options, 2)
    assert math.isclose(F_hyper.chunk_codes(3, 4)[0, 1].item(), 1.0)  # cos(0) of the first chunk


def test_hypelora_adapter_spread_over_two_apply_calls_loads_back_as_two_networks(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 4))
    apply(model, "hypelora", rank=2, targets=["0", "1"])
    apply(model, "hypelora", rank=2, targets=["2"])  # same adapter name, a second network
    assert model[0].delta.hypernetwork is model[1].delta.hypernetwork is not model[2].delta.hypernetwork
    assert model[0].options.network_id != model[2].options.network_id
    randomize_adapter(model)
    x = torch.randn(3, 4)
    expected = model(x).detach()
    save(model, tmp_path / "a")
    fresh = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 4), nn.Linear(4, 4))
    fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".delta." not in k})
    load(fresh, tmp_path / "a")
    assert fresh[0].delta.hypernetwork is fresh[1].delta.hypernetwork is not fresh[2].delta.hypernetwork
    assert torch.equal(fresh(x), expected)
