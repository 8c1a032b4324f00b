"""EGGROLL optimizer: backprop-free evolution strategies with per-layer low-rank perturbations.

Math in ``core.functional.eggroll``. The optimizer perturbs the weights (and biases) of the model's
``nn.Linear`` and non-grouped ``nn.Conv1d/2d/3d`` layers (or those named by ``targets``). A step
evaluates the whole population in ONE batched forward: the input is repeated ``P`` times along the
batch axis, every layer computes its shared output once on that batch, and forward hooks add each
member's low-rank term. The objective needs no gradient (e.g. accuracy)::

    es = EGGROLL(model, population=64, rank=1, sigma=0.05, lr=0.05)
    for x, y in batches:
        es.step(lambda forward: (forward(x).argmax(-1) == y).float().mean(dim=1))  # fitness per member, [P]

``forward(*inputs)`` returns the model output with a leading population axis ``[P, batch, ...]``.
Layers that mix samples across the batch (BatchNorm in train mode) would mix members: put the model in
``eval()`` mode or use per-sample normalisation. Perturbed layers must see batch-first inputs (the population
is split off axis 0 of each layer's input). The noise of step ``t`` is drawn from a generator seeded
by ``(seed, t)``, so a run resumed from ``state_dict()`` draws exactly the noise the uninterrupted run draws.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ..functional import eggroll as F_egg
from ..validate import is_int

__all__ = ["EGGROLL"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _targets(model: nn.Module, targets: Optional[Sequence[str]]) -> list[tuple[str, nn.Module]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, *_CONVS))]
    if targets is not None:
        wanted = set(targets)
        missing = wanted - {n for n, _ in layers}
        if missing:
            raise ValueError(f"targets {sorted(missing)} are not Linear/Conv layers of the model; candidates: {[n for n, _ in layers][:10]}")
        layers = [(n, m) for n, m in layers if n in wanted]
    for name, layer in layers:
        if isinstance(layer, _CONVS) and layer.groups != 1:
            if targets is not None:
                raise ValueError(f"EGGROLL cannot perturb grouped convolution {name!r} (groups={layer.groups})")
    layers = [(n, m) for n, m in layers if not (isinstance(m, _CONVS) and m.groups != 1)]
    if not layers:
        raise ValueError("EGGROLL found no Linear or non-grouped Conv layer to perturb")
    return layers


class EGGROLL(torch.optim.Optimizer):
    """Evolution strategies with rank-``rank`` perturbations ``A B^T`` per layer (no backward pass)."""

    def __init__(self, model: nn.Module, *, population: int = 32, rank: int = 1, sigma: float = 0.02, lr: float = 0.01,
                 weight_decay: float = 0.0, targets: Optional[Sequence[str]] = None, seed: int = 0):
        if not is_int(population, 2) or population % 2:
            raise ValueError(f"population must be an even int >= 2 (antithetic pairs), got {population!r}")
        if not is_int(rank, 1):
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        self.model = model
        self.layers = _targets(model, targets)
        params = [p for _, layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        super().__init__(params, dict(lr=lr, sigma=sigma, weight_decay=weight_decay))
        self.population, self.rank, self.seed = population, rank, seed
        self.state["step"] = 0
        self._noise: Optional[list[dict[str, Tensor]]] = None

    def _draw_noise(self, step: int) -> list[dict[str, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        pairs, noise = self.population // 2, []
        for _, layer in self.layers:
            weight = layer.weight
            m, n = weight.shape[0], weight[0].numel()
            entry = {
                "a": torch.randn(pairs, m, self.rank, generator=generator).to(weight.device, weight.dtype),
                "b": torch.randn(pairs, n, self.rank, generator=generator).to(weight.device, weight.dtype),
            }
            if layer.bias is not None:
                entry["bias"] = torch.randn(pairs, m, generator=generator).to(weight.device, weight.dtype)
            noise.append(entry)
        return noise

    def _hook(self, index: int, layer: nn.Module, sigma: float):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            noise = self._noise[index]
            population = self.population
            signs = F_egg.member_signs(population, dtype=output.dtype, device=output.device)
            a = noise["a"].repeat_interleave(2, dim=0)
            b = noise["b"].repeat_interleave(2, dim=0)
            coefficient = signs * sigma / math.sqrt(self.rank)
            x = inputs[0]
            x = x.reshape(population, x.shape[0] // population, *x.shape[1:])
            if isinstance(module, nn.Linear):
                extra = F_egg.linear_perturbation(x, a, b, coefficient)
            else:
                extra = F_egg.conv_perturbation(module, x, a, b, coefficient)
            if "bias" in noise:
                bias = noise["bias"].repeat_interleave(2, dim=0) * (signs * sigma).view(-1, 1)
                view = [population] + [1] * (extra.dim() - 1)
                channel = extra.dim() - 1 if isinstance(module, nn.Linear) else 2
                view[channel] = bias.shape[1]
                extra = extra + bias.reshape(view)
            return output + extra.reshape(output.shape)

        return hook

    @contextmanager
    def _perturbed(self, sigma: float) -> Iterator[None]:
        handles = [layer.register_forward_hook(self._hook(i, layer, sigma)) for i, (_, layer) in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def population_forward(self, *inputs: Tensor, **kwargs) -> Tensor:
        """The model on every member at once: inputs repeated ``P`` times, output ``[P, batch, ...]`` (inside :meth:`step`)."""
        if self._noise is None:
            raise RuntimeError("population_forward runs only inside EGGROLL.step(closure)")
        batch = inputs[0].shape[0]
        repeated = [x.repeat(self.population, *([1] * (x.dim() - 1))) for x in inputs]
        with self._perturbed(self.param_groups[0]["sigma"]):
            out = self.model(*repeated, **kwargs)
        return out.reshape(self.population, batch, *out.shape[1:])

    @torch.no_grad()
    def step(self, closure: Callable[[Callable[..., Tensor]], Tensor]) -> Tensor:  # type: ignore[override]
        """``closure(forward) -> fitness [P]`` (higher is better); returns the fitness of this step's population."""
        group = self.param_groups[0]
        step = self.state["step"] + 1
        self._noise = self._draw_noise(step)
        try:
            fitness = closure(self.population_forward)
        finally:
            noise, self._noise = self._noise, None
        fitness = torch.as_tensor(fitness).flatten()
        if fitness.numel() != self.population:
            raise ValueError(f"the closure must return one fitness per member ({self.population}), got shape {tuple(fitness.shape)}")
        shaped = F_egg.centered_ranks(fitness)
        pair_weights = shaped[0::2] - shaped[1::2]
        lr, sigma, wd = group["lr"], group["sigma"], group["weight_decay"]
        for (_, layer), entry in zip(self.layers, noise):
            weight = layer.weight
            grad = F_egg.es_matrix_gradient(entry["a"].float(), entry["b"].float(), pair_weights, sigma, self.population)
            if wd:
                weight.mul_(1 - lr * wd)
            weight.add_(grad.view_as(weight).to(weight.dtype), alpha=lr)
            if layer.bias is not None:
                layer.bias.add_(F_egg.es_vector_gradient(entry["bias"].float(), pair_weights, sigma, self.population).to(layer.bias.dtype), alpha=lr)
        self.state["step"] = step
        return fitness
