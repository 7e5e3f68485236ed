"""Where defects may go: the object's foreground, random shape proposals inside it, and mask
dilation / feathering helpers for blending."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import distance_inside, radial_profile, random_walk, shape_field, smoothstep, stroke_alpha

MASK_KINDS = ("blob", "ellipse", "stroke", "line", "patch")
FAMILY_MASK_KIND = {
    "scratch": "stroke", "crack": "stroke", "hole": "ellipse", "stain": "blob", "dent": "ellipse",
    "break": "patch", "discoloration": "blob", "fray": "stroke", "print_line": "line",
}
# Diffuse defects need more room than the median proposal to read as what they are.
FAMILY_MASK_SCALE = {"discoloration": 2.0, "break": 1.5}
AREA_RANGE = (0.003, 0.06)  # proposal area as a fraction of the image, before `scale`
MIN_PIXELS = 9
MARGIN_FRAC = 0.02  # proposals keep this share of the shorter side away from the foreground's edge
PROPOSAL_TRIES = 8
GOOD_FIT = 0.85  # accept a proposal at once when this share of it lies inside the foreground

# foreground_mask: a separation is trusted only when Otsu's between-class variance explains at
# least this share of the total (a unimodal Gaussian gives 2/pi ~ 0.64, a uniform one 0.75).
BIMODALITY_MIN = 0.8
BORDER_MAJORITY = 0.8  # the background class must own this share of the frame's border
COVER_RANGE = (0.1, 0.9)
KEEP_COMPONENT_FRAC = 0.15  # keep components at least this share of the largest one


def _otsu(values: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """Otsu threshold and its effectiveness (between-class / total variance, in [0, 1])."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return lo, 0.0
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mean = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - m0) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between[:-1])
    k = int(between.argmax())
    total = float((p * (centres - mean) ** 2).sum())
    return float(edges[k + 1]), float(between[k] / total) if total > 0 else 0.0


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """bool (H, W): where the object is; all True when the object fills the frame (a texture) or
    when no clear object/background split exists."""
    image = np.asarray(image, np.float32)
    gray = image.mean(axis=2) if image.ndim == 3 else image
    full = np.ones(gray.shape, bool)
    if min(gray.shape) < 8:
        return full
    smooth = ndimage.gaussian_filter(gray, max(1.0, min(gray.shape) / 100))
    threshold, effectiveness = _otsu(smooth.ravel())
    if effectiveness < BIMODALITY_MIN:
        return full
    above = smooth > threshold
    border = np.concatenate([above[0], above[-1], above[1:-1, 0], above[1:-1, -1]])
    bright_border = float(border.mean())
    if 1 - BORDER_MAJORITY < bright_border < BORDER_MAJORITY:
        return full  # both classes touch the frame: a texture, or an object cut by the frame
    obj = ~above if bright_border >= BORDER_MAJORITY else above
    obj = ndimage.binary_opening(obj)
    labels, count = ndimage.label(obj)
    if count == 0:
        return full
    sizes = ndimage.sum(obj, labels, np.arange(1, count + 1))
    keep = np.nonzero(sizes >= KEEP_COMPONENT_FRAC * sizes.max())[0] + 1
    obj = ndimage.binary_fill_holes(np.isin(labels, keep))
    if not COVER_RANGE[0] <= obj.mean() <= COVER_RANGE[1]:
        return full
    return obj


def dilate(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Pixels within `radius_px` (Euclidean) of the mask."""
    mask = np.asarray(mask, bool)
    if radius_px <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius_px


def feather(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """float32 alpha: 1 on the mask, easing to 0 at `radius_px` outside it (support = dilate(mask, radius_px))."""
    mask = np.asarray(mask, bool)
    if radius_px <= 0 or not mask.any():
        return mask.astype(np.float32)
    dist = ndimage.distance_transform_edt(~mask)
    return smoothstep(1.0 - dist / radius_px).astype(np.float32)


def _ellipse(rng, shape, centre, area, angle):
    aspect = rng.uniform(1.0, 2.5)
    return shape_field(shape, centre, np.sqrt(area / (np.pi * aspect)), aspect, angle)[0] < 1.0


def _blob(rng, shape, centre, area, angle):
    grid, prof = radial_profile(rng, 0.3)
    aspect = rng.uniform(1.0, 1.6)
    radius = np.sqrt(area / (np.pi * aspect * float(np.mean(prof ** 2))))
    return shape_field(shape, centre, radius, aspect, angle, (grid, prof))[0] < 1.0


def _stroke(rng, shape, centre, area, angle):
    width = max(3.0, np.sqrt(area / rng.uniform(6.0, 14.0)))
    length = area / width
    path = random_walk(rng, np.zeros(2), angle, length, step=length / 3, turn=25.0)
    path = path - path.mean(axis=0) + centre  # exact segment distances: no need to resample
    return stroke_alpha(shape, [(path, width, 1.0)]) >= 0.5


def _line(rng, shape, centre, area, angle):
    width = max(3.0, rng.uniform(0.02, 0.045) * min(shape))
    length = min(area / width, 0.8 * min(shape))
    _, u, v = shape_field(shape, centre, 1.0, 1.0, angle)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


def _patch(rng, shape, centre, area, angle):
    aspect, power = rng.uniform(1.0, 2.5), rng.uniform(4.0, 8.0)  # superellipse: a rectangle with soft corners
    half_b = np.sqrt(area / (3.8 * aspect))
    _, u, v = shape_field(shape, centre, 1.0, 1.0, angle)
    return np.abs(u / (half_b * aspect)) ** power + np.abs(v / half_b) ** power < 1.0


_SHAPES = {"blob": _blob, "ellipse": _ellipse, "stroke": _stroke, "line": _line, "patch": _patch}


def propose_mask(rng: np.random.Generator, shape: tuple[int, int], foreground: np.ndarray, kind: str | None = None,
                 scale: float = 1.0, angle: float | None = None) -> np.ndarray:
    """A random region of `kind` (blob, ellipse, stroke, line, patch) inside the foreground.

    Area is log-uniform over 0.3%-6% of the image times `scale` (at least MIN_PIXELS), kept a
    small margin inside the foreground. `angle` (degrees) orients strokes, lines, ellipses and
    patches; random when None. When the foreground is too small for any proposal, its largest
    inscribed disc (or the foreground itself) is returned.
    """
    h, w = shape
    foreground = np.asarray(foreground, bool)
    if foreground.shape != (h, w):
        raise ValueError(f"foreground is {foreground.shape} but shape is {(h, w)}")
    if not foreground.any():
        raise ValueError("foreground is empty: there is nowhere to propose a mask")
    kind = str(rng.choice(MASK_KINDS)) if kind is None else kind
    if kind not in _SHAPES:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(MASK_KINDS)}")
    margin = max(1, round(MARGIN_FRAC * min(h, w)))
    allowed = ndimage.binary_erosion(foreground, iterations=margin, border_value=0)
    if allowed.sum() < MIN_PIXELS:
        allowed = foreground
    lo, hi = (f * h * w * scale for f in AREA_RANGE)
    area = max(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), MIN_PIXELS)
    area = min(area, max(MIN_PIXELS, 0.5 * allowed.sum()))
    dist = distance_inside(allowed)
    need = min(float(dist.max()), 0.5 * np.sqrt(area / np.pi))  # centre far enough in for the shape to fit
    ys, xs = np.nonzero(dist >= need)
    best, best_score = None, -1.0
    for _ in range(PROPOSAL_TRIES):
        i = int(rng.integers(len(ys)))
        the_angle = rng.uniform(0.0, 180.0) if angle is None else angle
        raw = _SHAPES[kind](rng, (h, w), np.array([ys[i], xs[i]], float), area, the_angle)
        clipped = raw & allowed
        fit = clipped.sum() / max(1, raw.sum())
        score = fit * min(1.0, clipped.sum() / area)
        if score > best_score:
            best, best_score = clipped, score
        if fit >= GOOD_FIT and clipped.sum() >= MIN_PIXELS:
            break
    if best.sum() >= MIN_PIXELS:
        return best
    # the foreground is tiny or thin: fall back to its largest inscribed disc
    fg_dist = distance_inside(foreground)
    cy, cx = np.unravel_index(int(fg_dist.argmax()), fg_dist.shape)
    yy, xx = np.ogrid[0:h, 0:w]
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= max(float(fg_dist.max()), 1.5) ** 2) & foreground
    return disc if disc.sum() >= MIN_PIXELS else foreground.copy()
