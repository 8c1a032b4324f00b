"""core.factorize: compression of a trained CNN, WeLore budgets, Tucker/CP kernels, PELA distillation, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowrank_vision.core import factorize
from lowrank_vision.core.functional import factorize as F_fact
from lowrank_vision.core.functional.layout import layer_forward

from .toy_tasks import SmallCNN, accuracy, make_task, train


# -- a small trained CNN on a synthetic 10-class image task (deterministic): tests/core/toy_tasks.py ---------
@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)  # 2 threads on a shared, loaded CPU run 10x slower
    (x_train, y_train), (x_test, y_test) = make_task()
    torch.manual_seed(0)
    model = train(SmallCNN(), x_train, y_train, steps=250).eval()
    return model, (x_train, y_train), (x_test, y_test), accuracy(model, x_test, y_test)


# -- the acceptance numbers ---------------------------------------------------------------------------
def test_half_the_parameters_loses_under_two_points(trained):
    model, _, (x, y), base = trained
    assert base > 0.78  # the task is learnt (measured 0.827)
    small = copy.deepcopy(model)
    report = factorize.compress(small, budget=0.5)
    assert report.params_after <= 0.5 * report.params_before
    assert report.params_after == sum(p.numel() for p in small.parameters())
    assert base - accuracy(small, x, y) < 0.02  # measured 0.827 -> 0.818


def test_pela_distillation_recovers_accuracy(trained):
    model, (x_train, _), (x, y), base = trained
    small = copy.deepcopy(model)
    factorize.compress(small, budget=0.3)
    compressed = accuracy(small, x, y)
    assert base - compressed > 0.03  # 30 % of the parameters costs accuracy (measured 0.827 -> 0.772)
    unlabelled = [x_train[i:i + 64] for i in range(0, 1024, 64)]
    result = factorize.distill(small, model, unlabelled, steps=100, lr=1e-3)
    assert result.loss_after < 0.3 * result.loss_before
    assert accuracy(small, x, y) - compressed > 0.02  # measured 0.772 -> 0.808
    assert sum(p.numel() for p in small.parameters()) <= 0.3 * sum(p.numel() for p in model.parameters())
    # PELA's weight regularisation holds the factorised weights nearer the originals than plain distillation
    held = copy.deepcopy(model)
    factorize.compress(held, budget=0.3)
    regularised = factorize.distill(held, model, unlabelled, steps=100, lr=1e-3, weight_regularization=1.0)
    assert regularised.weight_error[0] == pytest.approx(result.weight_error[0])
    assert regularised.weight_error[1] < result.weight_error[1]  # measured 0.401 vs 0.406 (SVD start 0.399)
    assert accuracy(held, x, y) - compressed > 0.02


# -- WeLore rank choice -------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.6, 0.4, 0.25])
def test_parameter_budget_is_respected_and_tight(trained, fraction):
    model, *_ = trained
    small = copy.deepcopy(model)
    report = factorize.compress(small, budget=fraction)
    assert report.params_after <= fraction * report.params_before
    assert report.params_after > (fraction - 0.06) * report.params_before  # the threshold is the smallest that fits
    spectra = {name: F_fact.singular_values(m.weight) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for row in report.layers:  # one global threshold on s_i / s_1 gives every rank
        s = spectra[row.name]
        if row.format == "matrix":
            assert row.rank == max(1, int((s / s[0] >= report.threshold).sum()))
            assert row.relative_error == pytest.approx(F_fact.relative_error(s, row.rank), abs=1e-5)
            w = model.get_submodule(row.name).weight
            assert row.params_after == row.rank * (w.shape[0] + w[0].numel()) + w.shape[0]


def test_error_budget_bounds_every_layer(trained):
    model, *_ = trained
    small = copy.deepcopy(model)
    report = factorize.compress(small, budget=factorize.ErrorBudget(0.3))
    factorised = [row for row in report.layers if row.format == "matrix"]
    assert factorised
    for row in factorised:
        assert row.relative_error <= 0.3 + 1e-6
        s = F_fact.singular_values(model.get_submodule(row.name).weight)
        assert F_fact.relative_error(s, row.rank - 1) > 0.3  # the smallest rank that meets it


def test_heavy_tail_layers_are_cut_harder():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        u, _, v = torch.linalg.svd(torch.randn(64, 64))
        model[0].weight.copy_(u @ torch.diag(0.7 ** torch.arange(64.0)) @ v)  # fast decay: heavy tail of tiny values
        model[1].weight.copy_(u @ torch.diag(1.0 / (1 + torch.arange(64.0)) ** 0.3) @ v)  # slow decay
    report = factorize.compress(model, budget=0.5)
    ranks = {row.name: row.rank for row in report.layers}
    assert ranks["0"] < ranks["1"]


def test_unreachable_budget_and_bad_arguments(trained):
    model, *_ = trained
    small = copy.deepcopy(model)
    with pytest.raises(ValueError, match="out of reach"):
        factorize.compress(small, budget=0.01)
    with pytest.raises(ValueError, match=r"ParamBudget.fraction must be a number in \(0, 1\], got 1.5"):
        factorize.compress(small, budget=1.5)
    with pytest.raises(ValueError, match="conv_format must be one of"):
        factorize.compress(small, budget=0.5, conv_format="svd")
    with pytest.raises(ValueError, match="exactly one of"):
        factorize.compress(small, budget=0.5, ranks=4)
    with pytest.raises(ValueError, match="matched no"):
        factorize.compress(small, ranks=2, targets="nothing*")
    with pytest.raises(ValueError, match=r"ranks names \['conv9'\]"):
        factorize.compress(small, ranks={"conv2": 4, "conv9": 4})
    assert all(type(m) in (SmallCNN, nn.Conv2d, nn.Linear) for m in small.modules())  # untouched


def test_compressing_twice_leaves_the_factors_alone(trained):
    model, *_ = trained
    small = copy.deepcopy(model)
    factorize.compress(small, ranks={"conv2": 8, "conv3": 8})
    second = factorize.compress(small, ranks=4)
    assert [row.name for row in second.layers] == ["conv1", "fc1", "fc2"]
    assert small.conv2.rank == 8 and isinstance(small.conv2.down, nn.Conv2d)


# -- layer types and formats --------------------------------------------------------------------------
LAYERS = {
    "linear": (lambda: nn.Linear(12, 10), (4, 12)),
    "conv1d": (lambda: nn.Conv1d(6, 8, 3, stride=2, padding=1, dilation=1), (2, 6, 11)),
    "conv2d": (lambda: nn.Conv2d(6, 8, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)), (2, 6, 9, 8)),
    "conv2d_reflect": (lambda: nn.Conv2d(6, 8, 3, padding=1, padding_mode="reflect"), (2, 6, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(4, 6, 3, padding=1, stride=(1, 2, 1)), (2, 4, 5, 6, 5)),
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_every_layer_type_full_rank_is_exact_and_a_cut_is_the_svd(layer):
    make, shape = LAYERS[layer]
    torch.manual_seed(0)
    dense = nn.Sequential(make())
    x = torch.randn(shape)
    weight = dense[0].weight
    full = min(weight.shape[0], weight[0].numel())
    torch.testing.assert_close(_force(copy.deepcopy(dense), full)(x), dense(x), atol=1e-5, rtol=1e-4)
    small = copy.deepcopy(dense)
    report = factorize.compress(small, ranks=2)
    assert isinstance(small[0], factorize.LowRankLayer) and small[0].rank == 2
    assert report.layers[0].params_after == 2 * (weight.shape[0] + weight[0].numel()) + weight.shape[0]
    down, up = F_fact.svd_factors(weight, 2)
    cut = (up @ down).reshape(weight.shape)
    torch.testing.assert_close(small(x), layer_forward(dense[0], x, cut, dense[0].bias), atol=1e-5, rtol=1e-4)


def _force(model, rank):
    layer = model[0]
    down, up = F_fact.svd_factors(layer.weight, rank)
    model[0] = factorize.LowRankLayer.from_dense(layer, rank).load_factors(down, up, layer.bias)
    return model


@pytest.mark.parametrize("layer", ["conv1d", "conv2d", "conv2d_reflect", "conv3d"])
def test_tucker_full_ranks_are_exact_and_cp_recovers_a_cp_kernel(layer):
    make, shape = LAYERS[layer]
    torch.manual_seed(0)
    dense = nn.Sequential(make())
    x = torch.randn(shape)
    conv = dense[0]
    o, i = conv.weight.shape[:2]
    tucker = factorize.TuckerConv.from_dense(conv, o, i).load_factors(*F_fact.tucker2_factors(conv.weight, o, i), conv.bias)
    torch.testing.assert_close(tucker(x), dense(x), atol=1e-5, rtol=1e-4)
    # a kernel that IS rank 3 in CP form: ALS recovers it and the separable convs reproduce the dense conv
    g = torch.Generator().manual_seed(1)
    factors = [torch.randn(n, 3, generator=g) for n in conv.weight.shape]
    with torch.no_grad():
        conv.weight.copy_(F_fact.cp_weight(factors))
    cp = factorize.CPConv.from_dense(conv, 3).load_factors(F_fact.cp_als(conv.weight, 3), conv.bias)
    torch.testing.assert_close(cp(x), dense(x), atol=1e-4, rtol=1e-3)
    assert sum(p.numel() for p in cp.parameters()) == 3 * (o + i + sum(conv.kernel_size)) + o


@pytest.mark.parametrize("fmt", ["matrix", "tucker", "cp"])
def test_formats_under_one_budget(trained, fmt):
    model, _, (x, y), base = trained
    small = copy.deepcopy(model)
    report = factorize.compress(small, budget=0.5, conv_format=fmt, cp_iterations=30)
    assert report.params_after <= 0.5 * report.params_before
    formats = {row.format for row in report.layers if row.type == "Conv2d" and row.format != "dense"}
    assert formats == {fmt}
    for row in report.layers:
        module = small.get_submodule(row.name)
        assert row.params_after == sum(p.numel() for p in module.parameters())
        if row.format != "dense":
            with torch.no_grad():
                err = (module.dense_weight() - model.get_submodule(row.name).weight).norm() / model.get_submodule(row.name).weight.norm()
            assert row.relative_error == pytest.approx(float(err), abs=1e-5)
    assert base - accuracy(small, x, y) < 0.03


def test_grouped_convolutions_are_skipped_with_a_reason():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3))
    report = factorize.compress(model, ranks=2)
    assert "grouped convolution" in report.skipped["0"]
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[1], factorize.LowRankLayer)


def test_shared_module_is_replaced_under_every_name():
    layer = nn.Linear(16, 16)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    x = torch.randn(3, 16)
    factorize.compress(model, ranks=4)
    assert model[0] is model[2] and isinstance(model[0], factorize.LowRankLayer)
    cut = nn.Linear(16, 16)
    with torch.no_grad():
        cut.weight.copy_(model[0].dense_weight())
        cut.bias.copy_(layer.bias)
    torch.testing.assert_close(model(x), nn.Sequential(cut, nn.ReLU(), cut)(x), atol=1e-5, rtol=1e-4)


# -- save / load ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["matrix", "tucker", "cp"])
def test_save_load_round_trip(trained, tmp_path, fmt):
    model, _, (x, _), _ = trained
    small = copy.deepcopy(model)
    factorize.compress(small, budget=0.4, conv_format=fmt, cp_iterations=10)
    factorize.save(small, tmp_path / "c")
    torch.manual_seed(5)
    fresh = SmallCNN()
    structure = factorize.load(fresh, tmp_path / "c")
    assert set(structure["layers"]) <= {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert torch.equal(fresh(x[:32]), small(x[:32]))
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in small.parameters())


def test_load_into_another_architecture_fails_and_leaves_the_model_as_it_was(trained, tmp_path):
    model, *_ = trained
    small = copy.deepcopy(model)
    factorize.compress(small, budget=0.5)
    factorize.save(small, tmp_path / "c")
    other = SmallCNN(width=16)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(factorize.CompressedFileError, match="weight shape"):
        factorize.load(other, tmp_path / "c")
    assert all(type(m) in (SmallCNN, nn.Conv2d, nn.Linear) for m in other.modules())
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())
    with pytest.raises(factorize.CompressedFileError, match="does not exist"):
        factorize.load(SmallCNN(), tmp_path / "missing")


def test_rank_mapping_names_exact_layers():
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8)))
    report = factorize.compress(model, ranks={"0": 2})  # "0" must not reach "1.0" as a glob would
    assert [row.name for row in report.layers] == ["0"]
    assert isinstance(model[0], factorize.LowRankLayer) and isinstance(model[1][0], nn.Linear)


@pytest.mark.parametrize("fmt", ["matrix", "tucker", "cp"])
def test_factorised_layers_trace_with_fullgraph(fmt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    factorize.compress(model, ranks=3, conv_format=fmt, cp_iterations=5)
    x = torch.randn(2, 4, 6, 6)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # dynamo tracing without graph breaks; no codegen
    torch.testing.assert_close(compiled(x), model(x))
    model[3].active_rank = 2  # ordered ranks: a plain int attribute, no randomness in the forward
    torch.testing.assert_close(compiled(x), model(x))
