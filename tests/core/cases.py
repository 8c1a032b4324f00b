"""Shared test tables: layer types and adapter families with their closed-form parameter counts; the small models and
the transaction helpers (snapshot, assert_unchanged, FailAt) of the inject/IO, transaction and family-contract tests."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
from torch import nn

from lowrank_vision.core.adapters import base as adapter_base

# name -> (layer factory, input factory, (C_out, C_in_per_group, kernel tuple))
LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), lambda: torch.randn(3, 6), (5, 6, ())),
    "embedding": (lambda: nn.Embedding(10, 6), lambda: torch.randint(0, 10, (3, 4)), (6, 10, ())),
    "conv1d": (lambda: nn.Conv1d(4, 5, 3, padding=1), lambda: torch.randn(2, 4, 9), (5, 4, (3,))),
    "conv2d": (lambda: nn.Conv2d(4, 5, 3, stride=2), lambda: torch.randn(2, 4, 9, 9), (5, 4, (3, 3))),
    "conv2d_rect": (lambda: nn.Conv2d(4, 5, (1, 3), padding=(0, 1)), lambda: torch.randn(2, 4, 6, 6), (5, 4, (1, 3))),
    "conv3d": (lambda: nn.Conv3d(4, 5, 3, padding=1), lambda: torch.randn(2, 4, 5, 5, 5), (5, 4, (3, 3, 3))),
    "conv2d_grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2), lambda: torch.randn(2, 4, 7, 7), (6, 2, (3, 3))),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(4, 5, 3, stride=2), lambda: torch.randn(2, 4, 6), (5, 4, (3,))),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 5, 3, stride=2, padding=1), lambda: torch.randn(2, 4, 5, 5), (5, 4, (3, 3))),
    "conv_transpose3d": (lambda: nn.ConvTranspose3d(4, 5, 2, stride=2), lambda: torch.randn(2, 4, 3, 3, 3), (5, 4, (2, 2, 2))),
}

RANK = 3
NOLA_OPTIONS = {"num_basis_a": 7, "num_basis_b": 5}
SPLINE_GRID = 8
NERA_BASIS = 5 + 3 + 1  # grid_size + spline_order + the SiLU base term (NeRAOptions defaults)


def _nera(out, c_in, k, r):
    """Down KAN (c_in * prod(k) edges per hidden feature) + up KAN (r -> out), each with 2 normalisation vectors per input."""
    return NERA_BASIS * r * (c_in * math.prod(k) + out) + 2 * (c_in + r)


def _lora(out, fan_in, k, r):
    return r * (out + fan_in)


def _conv_lora(out, c_in, k, r):
    edge, d = (k[0] if k else 1), len(k)
    return (r * edge) * (c_in * edge) + (out * edge ** max(d - 1, 0)) * (r * edge)


def _cp(out, c_in, k, r):
    return r * (out + c_in + sum(k))


# method -> (options, closed-form trainable count(out, c_in, kernel, rank), unsupported layer names)
METHODS = {
    "lora": ({}, lambda o, i, k, r: _lora(o, i * math.prod(k), k, r), set()),
    "lora_c": ({}, lambda o, i, k, r: _lora(o, i * math.prod(k), k, r), set()),
    "conv_lora": ({}, _conv_lora, {"conv2d_rect"}),
    "cp_lora": ({}, _cp, set()),
    "dora": ({}, lambda o, i, k, r: _lora(o, i * math.prod(k), k, r) + o, set()),
    "conv_dora": ({}, lambda o, i, k, r: _conv_lora(o, i, k, r) + o, {"conv2d_rect"}),
    "cp_dora": ({}, lambda o, i, k, r: _cp(o, i, k, r) + o, set()),
    "nola": (NOLA_OPTIONS, lambda o, i, k, r: NOLA_OPTIONS["num_basis_a"] + NOLA_OPTIONS["num_basis_b"], set()),
    "spline_lora": ({}, lambda o, i, k, r: r * (i * math.prod(k) + o + SPLINE_GRID + 1), {"conv2d_grouped"}),
    "nera": ({}, _nera, {"embedding", "conv2d_grouped", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}),
}

# The families of issue 20 (tests/core/test_families*.py test their defining properties). Options chosen so the
# shared table's contract applies: noble's branch alone (train_base=False: the from-scratch default also trains the
# wrapped layer), sltrain as an update on the frozen weight (mode="add": the pre-training default replaces it, so it
# is no identity at init), one mtlora task (a second task's factors would get no gradient in one forward).
SLTRAIN_OPTIONS = {"mode": "add", "density": 0.25}
HYPER = {"embed_dim": 8, "code_dim": 8, "hidden_dim": 32, "chunk_size": 16}  # HypeLoRAOptions defaults


def _hypelora(out, c_in, k, r):
    """The shared hyper-network (counted once) plus one layer embedding."""
    e, p, h, c = HYPER["embed_dim"], HYPER["code_dim"], HYPER["hidden_dim"], HYPER["chunk_size"]
    return h * (e + p + 1) + 2 * r * c * (h + 1) + e


METHODS.update({
    "noble": ({"train_base": False}, lambda o, i, k, r: r * (i * math.prod(k) + o) + r * r + 4 * r, {"conv2d_grouped"}),
    "sltrain": (SLTRAIN_OPTIONS, lambda o, i, k, r: r * (i * math.prod(k) + o) + max(1, round(SLTRAIN_OPTIONS["density"] * o * i * math.prod(k))), set()),
    "flylora": ({}, lambda o, i, k, r: o * r, {"embedding", "conv2d_grouped"}),
    "block_lora": ({"num_blocks": 3}, lambda o, i, k, r: o * r + (r // 3) * i * math.prod(k), set()),
    "mtlora": ({"tasks": ("seg",)}, lambda o, i, k, r: 2 * r * (i * math.prod(k) + o), set()),
    "hypelora": ({}, _hypelora, set()),
})

NONLINEAR = {"spline_lora", "nera", "noble", "flylora"}

CASES = [(m, layer) for m, (_, _, unsupported) in METHODS.items() for layer in LAYERS if layer not in unsupported]
UNSUPPORTED_CASES = [(m, layer) for m, (_, _, unsupported) in METHODS.items() for layer in unsupported]


def randomize_adapter(model: nn.Module, std: float = 0.3, seed: int = 1) -> None:
    from lowrank_vision.core import adapter_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapter_layers(model).values():
            for _, p in adapter.adapter_parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


def one_layer_model(method: str, layer_name: str, strategy: str, **apply_kwargs) -> tuple[nn.Module, torch.Tensor]:
    """``nn.Sequential(<layer of LAYERS[layer_name]>)`` with ``method`` applied (rank ``RANK``, alpha ``2 * RANK``,
    ``strategy``) and its adapter randomised, and an input that requires grad; seeded, so equal calls build equal models."""
    import warnings

    from lowrank_vision.core import apply

    torch.manual_seed(0)
    make_layer, make_input, _ = LAYERS[layer_name]
    model = nn.Sequential(make_layer())
    x = make_input().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply(model, method, rank=RANK, alpha=2 * RANK, strategy=strategy, **apply_kwargs)
    randomize_adapter(model)
    return model, x


class SmallConvNet(nn.Module):
    """Five adaptable layers: stem, two convs, a ConvTranspose2d and a Linear head."""

    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
        )
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.up(self.blocks(torch.relu(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


class PeftNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv3d = nn.Conv3d(2, 4, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.flatten(1))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "types": [(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)],
        "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "attrs": sorted(model.__dict__),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["types"] == before["types"]
    assert after["grad"] == before["grad"]
    assert after["attrs"] == before["attrs"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


class FailAt:
    """Make the ``k``-th adapter construction raise (``AdapterLayer.__init__`` runs once per wrapped layer)."""

    def __init__(self, monkeypatch, k: int):
        self.k, self.calls = k, 0
        original = adapter_base.AdapterLayer.__init__

        def init(layer, *args, **kwargs):
            if self.calls == self.k:
                raise RuntimeError(f"injected failure at layer {self.k}")
            self.calls += 1
            original(layer, *args, **kwargs)

        monkeypatch.setattr(adapter_base.AdapterLayer, "__init__", init)


def train_losses(model: nn.Module, opt, x, y, steps: int) -> list[float]:
    """``steps`` full-batch cross-entropy steps of ``opt``; the loss before each step (the optimizer tests)."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def load_bench_script(filename: str):
    """Import ``bench/<filename>`` as a module (bench/ is not a package; the tests that check its scripts use this).

    The module is registered in ``sys.modules`` under its file's stem, as an import would (a ``@dataclass`` in it
    looks its module up there)."""
    path = Path(__file__).resolve().parents[2] / "bench" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
