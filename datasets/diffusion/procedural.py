"""Procedural captioned images for text-to-image fine-tuning (the embedded default of ``diffusion_nera``).

Each scene is one shape (circle, square, triangle) of one colour at one position (left, right,
top, bottom, centre) with one texture, on a light background; its caption is generated from the
scene description, e.g. ``"a striped red circle on the left"``. The base model is trained on the
``BASE_TEXTURES`` only; ``NEW_TEXTURE`` ("checkered") is the new concept a fine-tuned adapter must
learn -- the base model never sees it, its word is in the vocabulary but never in a base caption.
Scenes are drawn from a seed; splits use disjoint seeds (:func:`make_split`), so no scene is in two
splits. Images are float32 ``[3, H, W]`` in ``[-1, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Scene", "SHAPES", "COLOURS", "POSITIONS", "BASE_TEXTURES", "NEW_TEXTURE", "TEXTURES",
           "caption", "render", "sample_scenes", "make_split", "vocabulary", "SPLIT_SEEDS"]

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1)}
POSITIONS = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "centre": (0.5, 0.5)}
BASE_TEXTURES = ("plain", "striped", "dotted")
NEW_TEXTURE = "checkered"
TEXTURES = (*BASE_TEXTURES, NEW_TEXTURE)
BACKGROUND = (0.92, 0.92, 0.88)
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2, "concept_train": 10, "concept_val": 11, "concept_test": 12,
               "classifier_train": 20, "classifier_test": 21}
"""Seed of each split's scene generator (disjoint generators, so splits never share a draw)."""


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    texture: str


def caption(scene: Scene) -> str:
    where = "in the centre" if scene.position == "centre" else f"on the {scene.position}" if scene.position in ("left", "right") else f"at the {scene.position}"
    return f"a {scene.texture} {scene.colour} {scene.shape} {where}"


def vocabulary() -> list[str]:
    """Every word a caption can hold (the tokenizer's word list)."""
    words = {"a", "on", "the", "at", "in"} | set(SHAPES) | set(COLOURS) | set(POSITIONS) | set(TEXTURES)
    return sorted(words)


def _texture_mask(texture: str, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """Where the texture shows the shape's colour (elsewhere a light tint of it)."""
    period = max(4, size // 8)
    if texture == "plain":
        return np.ones_like(yy, dtype=bool)
    if texture == "striped":
        return (yy // (period // 2)) % 2 == 0
    if texture == "dotted":
        cy, cx = (yy % period) - period / 2 + 0.5, (xx % period) - period / 2 + 0.5
        return cy**2 + cx**2 > (period / 3.2) ** 2
    if texture == "checkered":
        return ((yy // (period // 2)) + (xx // (period // 2))) % 2 == 0
    raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")


def render(scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Image ``[3, size, size]`` float32 in ``[-1, 1]``; ``rng`` jitters position and size slightly."""
    rng = rng or np.random.default_rng(0)
    cx, cy = POSITIONS[scene.position]
    cx, cy = (cx + rng.uniform(-0.04, 0.04)) * size, (cy + rng.uniform(-0.04, 0.04)) * size
    radius = size * rng.uniform(0.2, 0.25)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if scene.shape == "circle":
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    elif scene.shape == "square":
        half = radius * 0.85
        inside = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    elif scene.shape == "triangle":
        top, bottom = cy - radius, cy + radius * 0.8
        t = np.clip((yy - top) / (bottom - top), 0, None)
        inside = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= t * radius)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {scene.shape!r}")
    colour = np.array(COLOURS[scene.colour], dtype=np.float32)
    tint = 1.0 - 0.35 * (1.0 - colour)
    on = _texture_mask(scene.texture, yy.astype(int), xx.astype(int), size)
    fill = np.where(on[..., None], colour, tint)
    image = np.broadcast_to(np.array(BACKGROUND, dtype=np.float32), (size, size, 3)).copy()
    image[inside] = fill[inside]
    return (image.transpose(2, 0, 1) * 2.0 - 1.0).astype(np.float32)


def sample_scenes(n: int, seed: int, textures: tuple[str, ...] = BASE_TEXTURES) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [Scene(SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))],
                  list(POSITIONS)[rng.integers(len(POSITIONS))], textures[rng.integers(len(textures))]) for _ in range(n)]


def make_split(split: str, n: int, size: int = 32) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``(images [n, 3, size, size], captions, scenes)`` of a named split (see ``SPLIT_SEEDS``).

    ``train``/``val``/``test`` hold the base textures; ``concept_*`` hold only the new texture;
    ``classifier_*`` hold all four textures (for the style/content classifier of the evaluation).
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    seed = SPLIT_SEEDS[split]
    textures = (NEW_TEXTURE,) if split.startswith("concept") else TEXTURES if split.startswith("classifier") else BASE_TEXTURES
    scenes = sample_scenes(n, seed, textures)
    rng = np.random.default_rng(seed + 1000)
    images = np.stack([render(s, size, rng) for s in scenes])
    return images, [caption(s) for s in scenes], scenes
