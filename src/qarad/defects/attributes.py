"""A defect's attributes measured from the pixels it changed, without a classifier.

The prompt grammar states polarity (dark / bright), size (small / large), elongation (round vs
elongated) and orientation (horizontal / vertical / diagonal). Each is read back geometrically
from the change between the image before and after, inside the region it was asked for:
polarity is the sign of the mean change, size the changed area relative to the region,
elongation the ratio of the changed pixels' principal second moments, orientation the angle of
their principal axis. A stroke's size is its length, so for strokes the size read is the changed
pixels' extent along their axis relative to the region's (`length`). Used by benchmarks/synthesis.py
on ARAS samples and, as their ceiling, on procedural renders of the same prompts in the same regions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .vocab import LUMA

# The change is read on a slightly blurred luminance, so that re-drawn grain is not a change.
CHANGE_BLUR_PX = 1.0
# A pixel is changed when its change is at least this share of the region's strong change (the
# 95th percentile of |change| inside it): the defect's body, not the soft tail of the blend.
CHANGED_SHARE = 0.35
MIN_CHANGE = 2.0 / 255  # below this the sample changed nothing visible
# Elongation (sqrt of the moment ratio) that splits round from elongated: the renderer draws round
# blobs at aspect 1-1.25 and elongated ones at 1.7-2.8 (renderer.ASPECT), halfway in log.
ELONGATED = 1.45
# Below this elongation an angle is not an orientation: the shape is too round to have one.
ORIENTED = 1.2
ORIENTATION_ANGLES = {"horizontal": (0.0,), "vertical": (90.0,), "diagonal": (45.0, 135.0)}


@dataclass(frozen=True)
class Measured:
    polarity: str | None  # "dark" / "bright"; None when nothing visible changed
    size: float  # changed area / region area
    length: float  # the changed pixels' extent along their principal axis / the region's along it
    elongation: float  # sqrt(major / minor second moment) of the changed pixels, >= 1
    angle: float  # degrees of the principal axis, 0 = horizontal, 90 = vertical (geometry.direction)

    @property
    def shape(self) -> str:
        return "elongated" if self.elongation >= ELONGATED else "round"

    @property
    def orientation(self) -> str | None:
        """The nearest stated orientation, None when the change is too round to have one."""
        if self.polarity is None or self.elongation < ORIENTED:
            return None
        gap = lambda a, b: min(abs(a - b) % 180.0, 180.0 - abs(a - b) % 180.0)  # noqa: E731
        return min(ORIENTATION_ANGLES, key=lambda k: min(gap(self.angle, a) for a in ORIENTATION_ANGLES[k]))


def _luma(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    return image @ LUMA if image.ndim == 3 else image


def measure(before: np.ndarray, after: np.ndarray, region: np.ndarray) -> Measured:
    """The attributes of the change from `before` to `after` ((H, W, 3) in [0, 1]) near `region` (bool (H, W))."""
    region = np.asarray(region, bool)
    change = ndimage.gaussian_filter(_luma(after) - _luma(before), CHANGE_BLUR_PX)
    near = ndimage.binary_dilation(region, iterations=2)  # the blend reaches a little past the mask
    strong = float(np.percentile(np.abs(change[near]), 95)) if near.any() else 0.0
    if strong < MIN_CHANGE:
        return Measured(None, 0.0, 0.0, 1.0, 0.0)
    changed = near & (np.abs(change) >= CHANGED_SHARE * strong)
    polarity = "dark" if float(change[changed].mean()) < 0 else "bright"
    ys, xs = np.nonzero(changed)
    elongation, angle, length = 1.0, 0.0, 0.0
    if len(ys) >= 3:
        cov = np.cov(np.stack([ys, xs]).astype(np.float64))
        evals, evecs = np.linalg.eigh(cov)
        elongation = float(np.sqrt(max(evals[1], 1e-9) / max(evals[0], 1e-9)))
        dy, dx = evecs[:, 1]
        angle = float(np.rad2deg(np.arctan2(-dy, dx)) % 180.0)
        ry, rx = np.nonzero(region)
        span = lambda y, x: float(np.ptp(y * dy + x * dx)) + 1.0  # noqa: E731
        length = span(ys, xs) / span(ry, rx) if len(ry) else 0.0
    return Measured(polarity, float(changed.sum() / max(region.sum(), 1)), length, elongation, angle)


def size_threshold(sizes: list[float], labels: list[str]) -> float:
    """The changed-area share that best splits "small" from "large" ones (fitted on procedural
    renders, then applied to any sampler's): the midpoint that maximises training accuracy."""
    values = np.asarray(sizes, float)
    large = np.asarray([lab == "large" for lab in labels])
    if not len(values) or large.all() or (~large).all():
        return float(np.median(values)) if len(values) else 0.0
    order = np.sort(np.unique(values))
    cuts = (order[:-1] + order[1:]) / 2 if len(order) > 1 else order
    accuracy = [((values >= c) == large).mean() for c in cuts]
    return float(cuts[int(np.argmax(accuracy))])
