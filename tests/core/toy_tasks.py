"""Shared toy tasks of the factorize/watermark tests: a synthetic 10-class image task, a smooth vector task, a small CNN,
a seeded Adam loop and accuracy (bench/compress.py keeps its own copy of the same recipes: bench does not import tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_task(n_train: int = 2048, n_test: int = 1024, classes: int = 10, size: int = 12, noise: float = 1.2, seed: int = 0):
    """Smooth random class templates, shifted by up to 2 px, rescaled and drowned in Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.randn(classes, 1, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    templates = templates / templates.flatten(1).std(1).view(-1, 1, 1, 1)

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        shifts = torch.randint(-2, 3, (n, 2), generator=g).tolist()
        x = torch.stack([torch.roll(templates[c], tuple(s), (1, 2)) for c, s in zip(y.tolist(), shifts)])
        x = x * (0.5 + torch.rand(n, 1, 1, 1, generator=g)) + noise * torch.randn(x.shape, generator=g)
        return x, y

    return draw(n_train), draw(n_test)


def vector_task(seed: int = 0, d: int = 24, classes: int = 8):
    """Labels from a fixed random tanh network: a smooth ``classes``-class problem on ``d``-dim Gaussian inputs."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 32, generator=g) / d ** 0.5, torch.randn(32, classes, generator=g) / 32 ** 0.5

    def draw(n):
        x = torch.randn(n, d, generator=g)
        return x, (torch.tanh(x @ w1) @ w2).argmax(1)

    return draw(4096), draw(2048)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10, width: int = 24):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


def train(model, x, y, steps, *, lr=3e-3, batch=64, seed=0, before_step=None, penalty=0.0):
    """``steps`` Adam steps on seeded random batches; ``before_step()`` runs before each (e.g. a rank-dropout sample);
    ``penalty`` > 0 adds that weight times Maestro's group lasso (``core.factorize.group_lasso_penalty``)."""
    from lowrank_vision.core import factorize

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        if before_step is not None:
            before_step()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if penalty:
            loss = loss + penalty * factorize.group_lasso_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean())
