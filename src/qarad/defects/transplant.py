"""Real defects moved onto other normal images: the few-shot augmentation and the copy-paste baseline.

A real shot (data/real_defects.py) is cut by its mask. Its *change* is the image minus its own
local background, a smooth fill of the masked region from the pixels around it (normalised
convolution), so the change says how the defect differs from the material it sits on. `transform`
flips, turns by quarter turns, rescales and changes the intensity of the change (gain and offset);
`place` puts it on another normal image inside its own (transformed) mask shape:

* mode "difference": target + change inside the mask. Nothing outside the mask moves, and the
  defect takes on the target's local brightness. The few-shot fitting corpus uses it.
* mode "alpha": the cut pixels (background + change) blended onto the target with an alpha
  feathered `feather_px` outside the mask: the classic copy-paste augmentation (Ghiasi et al.,
  "Simple Copy-Paste", CVPR 2021; for defects e.g. Lin et al., "CutPaste" uses self-patches),
  `qarad copy-paste`'s baseline. Only pixels within the dilated mask change.

`mask_like` reuses the geometry alone: a real mask's shape, transformed and placed on another
image, for `qarad synth --auto-masks` with a real type's prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .masks import dilate, feather
from .renderer import CHANGE_THRESHOLD

FILL_SIGMA_MIN = 2.0  # px: the background fill's Gaussian, at least this wide ...
FILL_SIGMA_FRAC = 0.5  # ... or this share of the mask's equivalent radius
FILL_WEIGHT_MIN = 1e-3  # a fill from less support than this falls back to the mean around the mask
MODES = ("difference", "alpha")


@dataclass(frozen=True)
class PasteConfig:
    scale: tuple[float, float] = (0.8, 1.25)  # size change, uniform in log scale
    gain: tuple[float, float] = (0.8, 1.2)  # times the defect's change
    offset: tuple[float, float] = (-0.03, 0.03)  # added to the change inside the mask (intensity units)
    feather_px: float = 2.0  # mode "alpha": the alpha eases to 0 this far outside the mask
    flip: bool = True
    rotate: bool = True  # quarter turns

    def __post_init__(self):
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be an increasing pair of positive factors, got {self.scale}")


@dataclass
class Patch:
    """A defect cut by its mask: the crop of its bounding box, grown by a margin."""
    background: np.ndarray  # (h, w, 3) float32: the image, its masked pixels filled from around them
    change: np.ndarray  # (h, w, 3) float32: the image minus `background`; 0 outside the mask
    mask: np.ndarray  # (h, w) bool

    @property
    def pixels(self) -> np.ndarray:
        return np.clip(self.background + self.change, 0.0, 1.0)


@dataclass
class Placed:
    image: np.ndarray  # (H, W, 3) float32, the target with the defect in it
    mask: np.ndarray  # (H, W) bool: the defect's mask where it was placed
    changed: np.ndarray  # (H, W) bool: the pixels that changed by more than 1/255
    origin: tuple[int, int]  # (y, x) of the patch's top-left corner in the target


def background(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with the masked pixels replaced by a smooth fill from the pixels around them."""
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask, bool)
    if not mask.any():
        return image.copy()
    keep = (~mask).astype(np.float32)
    if not keep.any():  # the defect fills the frame: its mean is the best guess of the material
        return np.broadcast_to(image.reshape(-1, 3).mean(0), image.shape).astype(np.float32).copy()
    sigma = max(FILL_SIGMA_MIN, FILL_SIGMA_FRAC * np.sqrt(mask.sum() / np.pi))
    weight = ndimage.gaussian_filter(keep, sigma)
    filled = np.stack([ndimage.gaussian_filter(image[..., c] * keep, sigma) for c in range(3)], -1)
    ring = dilate(mask, 2 * sigma) & ~mask
    fallback = image[ring].mean(0) if ring.any() else image[~mask].mean(0)
    fill = np.where(weight[..., None] > FILL_WEIGHT_MIN, filled / np.maximum(weight, FILL_WEIGHT_MIN)[..., None],
                    fallback)
    return np.where(mask[..., None], fill, image).astype(np.float32)


def cut(image: np.ndarray, mask: np.ndarray, margin: int = 3) -> Patch:
    """The defect under `mask` as a Patch, its bounding box grown by `margin` px (clipped to the image)."""
    mask = np.asarray(mask, bool)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("the mask is empty: there is no defect to cut")
    h, w = mask.shape
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    # the fill sees a wider context than the crop, so a defect at the crop's edge still has material around it
    grow = int(np.ceil(max(FILL_SIGMA_MIN, FILL_SIGMA_FRAC * np.sqrt(mask.sum() / np.pi)) * 3))
    cy0, cy1, cx0, cx1 = max(0, y0 - grow), min(h, y1 + grow), max(0, x0 - grow), min(w, x1 + grow)
    context = np.asarray(image, np.float32)[cy0:cy1, cx0:cx1]
    bg = background(context, mask[cy0:cy1, cx0:cx1])
    sl = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
    m = mask[y0:y1, x0:x1].copy()
    return Patch(bg[sl].copy(), np.where(m[..., None], context[sl] - bg[sl], 0.0).astype(np.float32), m)


def _resize(a: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    zoom = (shape[0] / a.shape[0], shape[1] / a.shape[1]) + ((1,) if a.ndim == 3 else ())
    out = ndimage.zoom(a.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def transform(patch: Patch, rng: np.random.Generator, config: PasteConfig = PasteConfig(),
              scale_yx: tuple[float, float] = (1.0, 1.0), geometry_only: bool = False) -> Patch:
    """A flipped, turned, rescaled (`scale_yx` times a random factor) and intensity-changed copy.
    Every draw comes from `rng`; `geometry_only` leaves the intensity as it is."""
    bg, change, mask = patch.background, patch.change, patch.mask
    if config.flip and rng.random() < 0.5:
        bg, change, mask = bg[:, ::-1], change[:, ::-1], mask[:, ::-1]
    if config.rotate:
        k = int(rng.integers(4))
        bg, change, mask = (np.rot90(a, k) for a in (bg, change, mask))
    lo, hi = np.log(config.scale)
    s = float(np.exp(rng.uniform(lo, hi))) if hi > lo else float(config.scale[0])
    shape = (max(1, round(mask.shape[0] * s * scale_yx[0])), max(1, round(mask.shape[1] * s * scale_yx[1])))
    if shape != mask.shape:
        bg, change = _resize(bg, shape, 1), _resize(change, shape, 1)
        mask = _resize(mask, shape, 1) > 0.5
        if not mask.any():  # shrunk away: keep the centre pixel
            mask[shape[0] // 2, shape[1] // 2] = True
    change = np.where(mask[..., None], change, 0.0)
    if not geometry_only:
        gain = rng.uniform(*config.gain)
        offset = rng.uniform(*config.offset)
        change = np.where(mask[..., None], change * gain + offset, 0.0)
    return Patch(np.ascontiguousarray(bg, np.float32), np.ascontiguousarray(change, np.float32),
                 np.ascontiguousarray(mask))


def _fit_inside(patch: Patch, shape: tuple[int, int]) -> Patch:
    """Shrink a patch larger than the target so that it fits."""
    h, w = patch.mask.shape
    k = min(1.0, shape[0] / h, shape[1] / w)
    if k >= 1.0:
        return patch
    size = (max(1, int(h * k)), max(1, int(w * k)))
    mask = _resize(patch.mask, size, 1) > 0.5
    return Patch(_resize(patch.background, size, 1), np.where(mask[..., None], _resize(patch.change, size, 1), 0.0),
                 mask)


def _origin(rng: np.random.Generator, mask: np.ndarray, shape: tuple[int, int],
            foreground: np.ndarray | None) -> tuple[int, int]:
    """Top-left corner for a patch of `mask`'s size: its mask's centre on a random foreground pixel
    where the whole patch lies inside the image."""
    h, w = mask.shape
    H, W = shape
    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    allowed = np.zeros(shape, bool)
    allowed[cy:H - h + cy + 1, cx:W - w + cx + 1] = True
    if foreground is not None and (allowed & foreground).any():
        allowed &= foreground
    py, px = np.nonzero(allowed)
    i = int(rng.integers(len(py)))
    return int(py[i] - cy), int(px[i] - cx)


def place(target: np.ndarray, patch: Patch, rng: np.random.Generator, mode: str = "difference",
          foreground: np.ndarray | None = None, config: PasteConfig = PasteConfig()) -> Placed:
    """Put `patch` on `target` ((H, W, 3) float) at a random place on its `foreground`."""
    if mode not in MODES:
        raise ValueError(f"paste mode must be one of {MODES}, got {mode!r}")
    target = np.asarray(target, np.float32)
    H, W = target.shape[:2]
    patch = _fit_inside(patch, (H, W))
    y, x = _origin(rng, patch.mask, (H, W), foreground)
    h, w = patch.mask.shape
    out = target.copy()
    region = out[y:y + h, x:x + w]
    if mode == "difference":
        region += patch.change  # zero outside the mask
    else:
        # the alpha reaches feather_px outside the mask; the pasted pixels there are the shot's own
        # material around its defect, which the crop holds up to its margin
        alpha = feather(patch.mask, config.feather_px)[..., None]
        region[:] = region * (1 - alpha) + patch.pixels * alpha
    np.clip(out, 0.0, 1.0, out=out)
    mask = np.zeros((H, W), bool)
    mask[y:y + h, x:x + w] = patch.mask
    changed = np.abs(out - target).max(axis=2) > CHANGE_THRESHOLD
    out = np.where(changed[..., None], out, target)  # as renderer.finish: a change too small to count is none
    return Placed(out, mask, changed, (y, x))


def mask_like(rng: np.random.Generator, template: np.ndarray, shape: tuple[int, int],
              foreground: np.ndarray | None = None, config: PasteConfig = PasteConfig()) -> np.ndarray:
    """(H, W) bool: the shape of the `template` mask (another image's, rescaled by the two images'
    size ratio), flipped, turned and rescaled as `transform` does, placed on the foreground."""
    template = np.asarray(template, bool)
    ys, xs = np.nonzero(template)
    if len(ys) == 0:
        raise ValueError("the template mask is empty")
    crop = template[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ratio = (shape[0] / template.shape[0], shape[1] / template.shape[1])
    zero = np.zeros((*crop.shape, 3), np.float32)
    patch = _fit_inside(transform(Patch(zero, zero, crop), rng, config, ratio, geometry_only=True), shape)
    y, x = _origin(rng, patch.mask, shape, foreground)
    out = np.zeros(shape, bool)
    out[y:y + patch.mask.shape[0], x:x + patch.mask.shape[1]] = patch.mask
    return out
