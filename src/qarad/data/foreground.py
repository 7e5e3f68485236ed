"""Where the part is: a foreground estimate learned from a set of normal images.

A plain backdrop is flat: its only fine detail is sensor noise. The part is material: it has
grain, edges, print, and where the images are aligned it is where they differ from one another.
So the estimate looks at local texture energy (the local median amplitude of the image minus its blur), pools
it over the normal images and splits it in two (Otsu on log energy). The split is trusted only
when the low class is a *flat* backdrop: its median energy at least FLAT_RATIO times below the
textured class's, covering at least MIN_BACKDROP of the pixels, and what lies outside each
image's part of one tone (a smooth part is found by its outline: closed and filled); otherwise the material fills
the frame (a texture such as magnetic tile, a board such as DeepPCB) and the foreground is the
whole image. Per image, the foreground is its own textured pixels (closed, holes filled, small
islands dropped, pulled in by the energy window's reach so it does not spill past the outline).
Where that finds almost nothing (a smooth part) and every normal image has one size (an aligned
set), the learned layout stands in: the pixels most normal images call textured, or where their
intensity varies across the images as material does and a fixed backdrop does not.

`Foreground().fit(images).mask(image)` -> bool (H, W). Used to keep proposed defect masks on the
part (`qarad synth --auto-masks`) and available for restricting a scoring region to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

ENERGY_FLOOR = 1.0 / 1020  # a quarter grey level: 8-bit quantisation noise of a flat backdrop
FLAT_RATIO = 4.0  # textured / backdrop median energy, at least, for the split to be a backdrop
MIN_BACKDROP = 0.05  # share of pixels the backdrop class must hold
# ... and a plain backdrop has one tone: line art (DeepPCB's copper and substrate) is flat in two
BACKDROP_TONE_STD = 0.08
MIN_PART = 0.02  # an image whose own textured part covers less falls back to the learned layout
ISLAND_FRAC = 0.01  # textured islands smaller than this share of the image are specks on the backdrop
PIXELS_PER_IMAGE = 4096  # pooled per image for the split


@dataclass(frozen=True)
class ForegroundConfig:
    side: int = 256  # longest side the energy is computed at
    grain_sigma: float = 1.5  # px at `side`: what the blur removes is the grain
    # px a side at `side`: the neighbourhood whose median grain amplitude is the energy; a median
    # (not a mean of squares) keeps a strong outline from lighting up the backdrop beside it
    window: int = 7
    max_images: int = 48  # normal images the estimate is fitted on, at most
    agree: float = 0.5  # share of aligned images that must call a pixel textured for the shared layout


def _gray_small(image: np.ndarray, side: int) -> np.ndarray:
    image = np.asarray(image, np.float32)
    gray = image.mean(axis=2) if image.ndim == 3 else image
    zoom = min(1.0, side / max(gray.shape))
    return ndimage.zoom(gray, zoom, order=1, prefilter=False) if zoom < 1.0 else gray


def texture_energy(image: np.ndarray, config: ForegroundConfig = ForegroundConfig()) -> np.ndarray:
    """(h, w) local median amplitude of the fine detail (image minus its blur) at `config.side`,
    floored at ENERGY_FLOOR; h, w are the image's size scaled so its longest side is at most `side`."""
    gray = _gray_small(image, config.side)
    fine = np.abs(gray - ndimage.gaussian_filter(gray, config.grain_sigma, mode="reflect"))
    return np.maximum(ndimage.median_filter(fine, size=config.window, mode="reflect"), ENERGY_FLOOR)


def _split(values: np.ndarray) -> tuple[float, bool]:
    """Otsu threshold of log energies, and whether its low class is a flat backdrop."""
    if float(values.max() - values.min()) < 1e-6:
        return float(values.max()), False
    t = float(threshold_otsu(values))
    low, high = values[values <= t], values[values > t]
    if len(low) < MIN_BACKDROP * len(values) or not len(high):
        return t, False
    return t, bool(np.median(high) - np.median(low) >= np.log(FLAT_RATIO))


def _resize_bool(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to exactly `shape`."""
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1).astype(int)
    return mask[np.ix_(rows, cols)]


class Foreground:
    """Learned from normal images (`fit`), then `mask(image)` per image. Follows scikit-learn:
    __init__ stores the config; fit sets `separable_`, `threshold_` and (aligned sets) `layout_`."""

    def __init__(self, config: ForegroundConfig = ForegroundConfig()):
        self.config = config

    def fit(self, images: Iterable[np.ndarray]) -> "Foreground":
        rng = np.random.default_rng(0)
        energies, grays = [], []
        for i, image in enumerate(images):
            if i >= self.config.max_images:
                break
            energies.append(np.log(texture_energy(image, self.config)))
            grays.append(ndimage.uniform_filter(_gray_small(image, self.config.side), self.config.window))
        if not energies:
            raise ValueError("no normal images to learn the foreground from")
        pooled = np.concatenate([rng.choice(e.ravel(), min(e.size, PIXELS_PER_IMAGE), replace=False)
                                 for e in energies])
        self.threshold_, self.separable_ = _split(pooled)
        if self.separable_:  # what lies outside each image's part must be one plain tone
            outside = [~self._clean(e > self.threshold_) for e in energies]
            tone = np.median([g[o].std() if o.mean() >= MIN_BACKDROP else np.inf for o, g in zip(outside, grays)])
            self.separable_ = bool(tone <= BACKDROP_TONE_STD)
        self.layout_ = None
        if self.separable_ and len({e.shape for e in energies}) == 1 and len(energies) > 1:
            textured = np.mean([e > self.threshold_ for e in energies], axis=0) >= self.config.agree
            spread = np.std(grays, axis=0)  # aligned images differ where the material is
            varies = np.zeros_like(textured)
            if float(spread.max() - spread.min()) > 1e-6:
                t = float(threshold_otsu(spread))
                low, high = spread[spread <= t], spread[spread > t]
                if len(low) >= MIN_BACKDROP * spread.size and np.median(high) >= FLAT_RATIO * max(np.median(low), 1e-6):
                    varies = spread > t
            self.layout_ = self._clean(textured | varies)
        return self

    def _clean(self, textured: np.ndarray) -> np.ndarray:
        """Close gaps in the part, fill its holes, drop specks, pull the outline in by the energy window's reach."""
        reach = max(1, self.config.window // 2)
        part = ndimage.binary_closing(textured, iterations=reach, border_value=0)
        part = ndimage.binary_fill_holes(part)
        labels, count = ndimage.label(part)
        if count:
            sizes = ndimage.sum(part, labels, np.arange(1, count + 1))
            part = np.isin(labels, np.nonzero(sizes >= ISLAND_FRAC * part.size)[0] + 1)
        return ndimage.binary_erosion(part, iterations=reach, border_value=1)

    def mask(self, image: np.ndarray) -> np.ndarray:
        """bool (H, W): the part in `image`; all True when the normal images show no flat backdrop."""
        if not hasattr(self, "separable_"):
            raise RuntimeError("Foreground is not fitted: call fit(normal_images) first")
        h, w = np.asarray(image).shape[:2]
        if not self.separable_:
            return np.ones((h, w), bool)
        energy = np.log(texture_energy(image, self.config))
        part = self._clean(energy > self.threshold_)
        if part.mean() < MIN_PART:  # a smooth part: where aligned normal images put theirs
            if self.layout_ is None or self.layout_.shape != part.shape or not self.layout_.any():
                return np.ones((h, w), bool)
            part = self.layout_
        return _resize_bool(part, (h, w))
