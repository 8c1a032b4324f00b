"""Evaluation: a small classifier of the procedural scenes, concept score, prompt fidelity, plots.

The classifier (three heads: colour, shape, texture) is trained on rendered scenes of every
texture (split ``classifier_train``) and checked on ``classifier_test``; on generated samples it
gives the **concept score** (share of samples for new-texture prompts that it calls "checkered")
and the **prompt fidelity** on base prompts (share whose colour and shape match the prompt; a
drop after fine-tuning is forgetting).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_vision.core.files import save_figure
from lowrank_vision.datasets.diffusion.procedural import COLOURS, NEW_TEXTURE, SHAPES, TEXTURES, Scene, make_split

__all__ = ["SceneClassifier", "train_classifier", "classifier_accuracy", "generate", "concept_score", "prompt_fidelity",
           "plot_grid", "plot_losses"]

HEADS = {"colour": list(COLOURS), "shape": list(SHAPES), "texture": list(TEXTURES)}


class SceneClassifier(nn.Module):
    """Two conv stages and three linear heads; input ``[B, 3, H, W]`` in ``[-1, 1]``."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(2 * width * 16, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}


def _labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([v.index(getattr(s, k)) for s in scenes]) for k, v in HEADS.items()}


def train_classifier(size: int, n: int = 1200, steps: int = 300, seed: int = 0, device: str = "cpu", batch_size: int = 64) -> SceneClassifier:
    """Classifier of colour, shape and texture on ``classifier_train`` renders (all four textures).

    Augmentation, because it judges generated samples, not renders: per-image Gaussian noise of a random
    std in [0, 0.1], a random brightness shift of up to 0.05 and, for half the images, a slight blur.
    """
    torch.manual_seed(seed)
    images, _, scenes = make_split("classifier_train", n, size)
    x, y = torch.from_numpy(images).to(device), {k: v.to(device) for k, v in _labels(scenes).items()}
    model = SceneClassifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=device).div(16).expand(3, 1, 3, 3)
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g).to(device)
        xb = x[idx]
        soft = (torch.rand(len(idx), 1, 1, 1, generator=g) < 0.5).to(device, xb.dtype)
        xb = soft * (0.5 * xb + 0.5 * F.conv2d(F.pad(xb, (1, 1, 1, 1), mode="replicate"), blur, groups=3)) + (1 - soft) * xb
        noise = torch.randn(xb.shape, generator=g).to(device) * torch.rand(len(idx), 1, 1, 1, generator=g).to(device) * 0.1
        xb = xb + noise + (torch.rand(len(idx), 1, 1, 1, generator=g).to(device) - 0.5) * 0.1
        out = model(xb)
        loss = sum(F.cross_entropy(out[k], y[k][idx]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.to("cpu").eval()


@torch.no_grad()
def predict(classifier: SceneClassifier, images: np.ndarray) -> dict[str, list[str]]:
    """Names predicted per head for images ``[N, H, W, 3]`` in ``[0, 1]`` (what the pipeline returns)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
    out = classifier(x)
    return {k: [HEADS[k][i] for i in out[k].argmax(1).tolist()] for k in HEADS}


def classifier_accuracy(classifier: SceneClassifier, size: int, n: int = 400) -> dict[str, float]:
    images, _, scenes = make_split("classifier_test", n, size)
    pred = predict(classifier, (images.transpose(0, 2, 3, 1) + 1) / 2)
    return {k: float(np.mean([p == getattr(s, k) for p, s in zip(pred[k], scenes)])) for k in HEADS}


def generate(pipe, prompts: list[str], steps: int = 20, guidance: float = 3.0, seed: int = 0, batch_size: int = 32) -> np.ndarray:
    """Samples ``[N, H, W, 3]`` in ``[0, 1]`` from the stock pipeline call; one seeded generator per batch."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = []
    for i in range(0, len(prompts), batch_size):
        g = torch.Generator().manual_seed(seed + i)
        out.append(pipe(prompts[i:i + batch_size], num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                        generator=g, output_type="np").images)
    return np.concatenate(out)


def concept_score(classifier: SceneClassifier, images: np.ndarray) -> float:
    """Share of ``images`` the classifier calls the new texture."""
    return float(np.mean([t == NEW_TEXTURE for t in predict(classifier, images)["texture"]]))


def prompt_fidelity(classifier: SceneClassifier, images: np.ndarray, scenes: list[Scene]) -> float:
    """Share of ``images`` whose predicted colour and shape both match their prompt's scene."""
    pred = predict(classifier, images)
    return float(np.mean([c == s.colour and h == s.shape for c, h, s in zip(pred["colour"], pred["shape"], scenes)]))


def plot_grid(rows: dict[str, np.ndarray], prompts: list[str], path: Path, title: str = "") -> Path:
    """One row of samples per label in ``rows`` (same prompts and seeds in every row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(prompts)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n + 0.8, 1.5 * len(rows) + 0.6), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(prompts[c].replace(" on the", "\non the").replace(" at the", "\nat the").replace(" in the", "\nin the"), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_losses(curves: dict[str, list[dict]], path: Path, key: str = "loss", title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, history in curves.items():
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts), label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
