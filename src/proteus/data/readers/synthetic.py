"""Seeded synthetic images or sentences for tests and smoke runs; nothing is read from disk."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from proteus.data.base import LabeledData
from proteus.data.readers._common import DATASETS
from proteus.registry import Options


class SyntheticOptions(Options):
    modality: Literal["image", "text"] = "image"
    num_classes: int = Field(10, ge=1)
    samples_per_class: int = Field(40, ge=1)
    image_size: int = Field(16, ge=2)
    channels: Literal[1, 3] = 3
    noise: float = Field(0.3, ge=0.0)
    seed: int = 0
    with_official_split: bool = False


FILLER_WORDS = ("the a of and with some this that very often is was has in on for by it one "
           "more than just its all").split()


@DATASETS.register("synthetic", SyntheticOptions,
                   "Seeded synthetic images or sentences, learnable but noisy; no files")
def read_synthetic(options: SyntheticOptions) -> LabeledData:
    """Seeded synthetic data, class-major order; nothing is read from disk.

    Images: each class is a fixed smooth pattern (a random coarse grid upsampled); each sample
    shifts it by a few pixels and adds its own smooth clutter and Gaussian pixel noise of std
    ``noise``. Texts: each class owns four
    keywords; a sentence mixes two or three keyword slots with filler words, and each slot takes
    another class's keyword with probability ``min(noise, 1)``. With ``with_official_split`` the
    last quarter (rounded down) of each class is marked test.
    """
    rng = np.random.default_rng(options.seed)
    c, n = options.num_classes, options.samples_per_class
    labels = np.repeat(np.arange(c, dtype=np.int64), n)
    if options.modality == "image":
        items: np.ndarray | list = _synthetic_images(options, rng)
    else:
        items = _synthetic_texts(options, rng)
    split = None
    if options.with_official_split:
        per_class = np.zeros(n, dtype=np.int8)
        per_class[n - n // 4:] = 1
        split = np.tile(per_class, c)
    return LabeledData(
        items=items,
        labels=labels,
        class_names=[f"class {i}" for i in range(c)],
        modality=options.modality,
        official_split=split,
        source="synthetic",
    )


def _synthetic_images(options: SyntheticOptions, rng: np.random.Generator) -> np.ndarray:
    c, n = options.num_classes, options.samples_per_class
    size, ch = options.image_size, options.channels
    patterns = _upsample(rng.random((c, 4, 4, ch)), size)  # (C, size, size, ch) in [0, 1]
    base = np.repeat(patterns, n, axis=0)
    # per-sample smooth clutter and small shifts keep the task from being a template match
    clutter = _upsample(rng.random((c * n, 4, 4, ch)), size) - 0.5
    max_shift = max(1, size // 8)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(c * n, 2))
    for i, (dy, dx) in enumerate(shifts):
        base[i] = np.roll(base[i], (int(dy), int(dx)), axis=(0, 1))
    pixels = base + 0.6 * clutter + rng.normal(0.0, options.noise, size=base.shape)
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return images[..., 0] if ch == 1 else images


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``(..., g, g, ch)`` grids to ``size x size`` (separable)."""
    g = grid.shape[-2]
    pos = np.linspace(0.0, g - 1, size)
    lo = np.floor(pos).astype(int).clip(0, g - 2)
    frac = (pos - lo)[:, None]
    rows = grid[:, lo] * (1 - frac)[None, :, None] + grid[:, lo + 1] * frac[None, :, None]
    return (rows[:, :, lo] * (1 - frac)[None, None, :]
            + rows[:, :, lo + 1] * frac[None, None, :])


def _synthetic_texts(options: SyntheticOptions, rng: np.random.Generator) -> list[str]:
    c, n = options.num_classes, options.samples_per_class
    # pronounceable pseudo-words: 70 syllables -> 4,900 words, ample for 4 per class
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    vocab = [a + b for a in syllables for b in syllables]
    chosen = rng.choice(len(vocab), size=4 * c, replace=False)
    keywords = np.array([vocab[i] for i in chosen]).reshape(c, 4)
    swap = min(options.noise, 1.0)
    texts = []
    for label in range(c):
        for _ in range(n):
            words = list(rng.choice(FILLER_WORDS, size=int(rng.integers(3, 7))))
            for _ in range(int(rng.integers(2, 4))):
                owner = int(rng.integers(c)) if rng.random() < swap else label
                words.append(str(keywords[owner, rng.integers(4)]))
            rng.shuffle(words)
            texts.append(" ".join(str(w) for w in words))
    return texts
