"""The fitting corpus (DESIGN 4.1): procedural defects rendered on windows cut from the user's
own normal images, so the prior and the dual encoder learn defects in the context of that material.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .masks import FAMILY_MASK_KIND, FAMILY_MASK_SCALE, foreground_mask, propose_mask
from .renderer import DefectParams, is_monochrome, render, sample_params
from .vocab import FAMILIES


@dataclass(frozen=True)
class CorpusConfig:
    window: int = 128  # side of the square crop, px at working resolution
    families: tuple[str, ...] = FAMILIES
    seed: int = 0

    def __post_init__(self):
        if self.window < 8:
            raise ValueError(f"window must be at least 8 px, got {self.window}")
        if not self.families:
            raise ValueError("families must not be empty")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown defect families {unknown}; choose from {', '.join(FAMILIES)}")


@dataclass
class CorpusSample:
    clean: np.ndarray  # (window, window, 3) float32 crop of the normal image
    defect: np.ndarray  # the same crop with the defect rendered in
    mask: np.ndarray  # (window, window) bool: pixels that changed
    params: DefectParams
    prompt: str
    origin: tuple[int, int]  # (y, x) of the crop's top-left corner in the source image


def _crop(image: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = image.shape[:2]
    if h < window or w < window:  # small images: replicate the edge (bottom/right) up to the window
        image = np.pad(image, ((0, max(0, window - h)), (0, max(0, window - w)), (0, 0)), mode="edge")
    y = int(rng.integers(0, max(h, window) - window + 1))
    x = int(rng.integers(0, max(w, window) - window + 1))
    return np.ascontiguousarray(image[y:y + window, x:x + window], dtype=np.float32), (y, x)


def make_sample(image: np.ndarray, rng: np.random.Generator, config: CorpusConfig = CorpusConfig(),
                family: str | None = None) -> CorpusSample:
    """Cut a random window from `image` (float (H, W, 3) at working resolution) and render one
    defect of `family` (random among config.families when None) inside a foreground-aware mask."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    clean, origin = _crop(image, config.window, rng)
    family = str(rng.choice(config.families)) if family is None else family
    params = sample_params(rng, family, coloured=not is_monochrome(image))
    region = propose_mask(rng, clean.shape[:2], foreground_mask(clean), kind=FAMILY_MASK_KIND[family],
                          scale=FAMILY_MASK_SCALE.get(family, 1.0), angle=params.angle)
    out = render(clean, region, params, rng)
    return CorpusSample(clean, out.image, out.mask, out.params, out.prompt, origin)


def iter_corpus(images: Iterable[np.ndarray], n: int, config: CorpusConfig = CorpusConfig()) -> Iterator[CorpusSample]:
    """n samples, image i % len(images) for sample i.

    Sample i depends only on (config.seed, i), so any slice of the corpus can be regenerated
    (or sharded) on its own. Families are dealt in shuffled rounds: every round of
    len(families) samples holds each family once, and the shuffle keeps families from lining up
    with images when the two counts share a factor.
    """
    images = list(images)
    if not images:
        raise ValueError("iter_corpus needs at least one image")
    fams = config.families
    for i in range(n):
        round_order = np.random.default_rng([config.seed, i // len(fams), 1]).permutation(len(fams))
        rng = np.random.default_rng([config.seed, i, 0])
        yield make_sample(images[i % len(images)], rng, config, family=fams[round_order[i % len(fams)]])
