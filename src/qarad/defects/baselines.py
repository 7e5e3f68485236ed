"""Synthesis baselines that ARAS is compared against, in the same `Rendered` format.

* `procedural`: the procedural renderer used directly on the full image.
* `perlin_texture`: DRAEM-style (Zavrtanik et al., ICCV 2021): a thresholded Perlin-noise mask
  filled with a foreign texture at opacity beta. It has no language control.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .masks import AREA_RANGE, FAMILY_MASK_KIND, FAMILY_MASK_SCALE, MIN_PIXELS, foreground_mask, propose_mask
from .renderer import DefectParams, Rendered, finish, is_monochrome, render, sample_params
from .vocab import BASELINE_FAMILY, LUMA

BETA_RANGE = (0.3, 1.0)  # opacity of the foreign texture
PERLIN_RES_EXP = (1, 5)  # noise cells per side: 2**k for k in [1, 5)
TEXTURE_SOURCES = ("coffee", "rocket", "astronaut", "chelsea", "coins")  # photos bundled with scikit-image


def _as_rgb_float(texture: np.ndarray) -> np.ndarray:
    texture = np.asarray(texture)
    if texture.dtype == np.uint8:
        texture = texture.astype(np.float32) / 255.0
    texture = texture.astype(np.float32)
    if texture.ndim == 2:
        texture = np.repeat(texture[..., None], 3, axis=2)
    if texture.ndim != 3 or texture.shape[2] not in (3, 4):
        raise ValueError(f"texture must be (H, W[, 3]), got shape {texture.shape}")
    return np.clip(texture[..., :3], 0.0, 1.0)


@lru_cache(maxsize=1)
def default_textures() -> tuple[np.ndarray, ...]:
    """The scikit-image sample photos as float RGB (loaded once, on first use)."""
    from skimage import data  # imported here: loading it costs ~0.5 s and only this baseline needs it

    return tuple(_as_rgb_float(getattr(data, name)()) for name in TEXTURE_SOURCES)


def perlin(rng: np.random.Generator, shape: tuple[int, int], res: tuple[int, int]) -> np.ndarray:
    """2-D gradient (Perlin) noise with res[0] x res[1] cells, float32 roughly in [-0.7, 0.7]."""
    h, w = shape
    angles = rng.uniform(0.0, 2 * np.pi, (res[0] + 1, res[1] + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = (np.arange(h) + 0.5) * res[0] / h
    x = (np.arange(w) + 0.5) * res[1] / w
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    Y0, X0 = y0[:, None], x0[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:  # dot(gradient at corner, offset from corner)
        return gy[Y0 + dy, X0 + dx] * (fy - dy) + gx[Y0 + dy, X0 + dx] * (fx - dx)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    sy, sx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - sx) + corner(0, 1) * sx
    bottom = corner(1, 0) * (1 - sx) + corner(1, 1) * sx
    return (top * (1 - sy) + bottom * sy).astype(np.float32)


def _texture_crop(rng: np.random.Generator, texture: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A random, colour-jittered crop of `texture` covering `shape`, rescaled so the crop holds structure."""
    h, w = shape
    zoom = rng.uniform(1.0, 2.5) * max(h, w) / min(texture.shape[:2])
    zoom = max(zoom, h / texture.shape[0], w / texture.shape[1])
    if abs(zoom - 1.0) > 1e-3:
        texture = ndimage.zoom(texture, (zoom, zoom, 1), order=1, prefilter=False)
    y = int(rng.integers(0, texture.shape[0] - h + 1))
    x = int(rng.integers(0, texture.shape[1] - w + 1))
    crop = texture[y:y + h, x:x + w][..., rng.permutation(3)]  # channel shuffle: a cheap hue jitter
    grey = (crop @ LUMA)[..., None]
    crop = grey + (crop - grey) * rng.uniform(0.5, 1.5)  # saturation
    crop = (crop - crop.mean()) * rng.uniform(0.7, 1.3) + crop.mean() * rng.uniform(0.7, 1.3)  # contrast, brightness
    return np.clip(crop, 0.0, 1.0).astype(np.float32)


def procedural(image: np.ndarray, rng: np.random.Generator, family: str | None = None,
               foreground: np.ndarray | None = None) -> Rendered:
    """The procedural baseline: propose a mask on the full image and render a defect in it."""
    image = np.asarray(image, np.float32)
    foreground = foreground_mask(image) if foreground is None else foreground
    params = sample_params(rng, family, coloured=not is_monochrome(image))
    region = propose_mask(rng, image.shape[:2], foreground, kind=FAMILY_MASK_KIND[params.family],
                          scale=FAMILY_MASK_SCALE.get(params.family, 1.0), angle=params.angle)
    return render(image, region, params, rng)


def perlin_texture(image: np.ndarray, rng: np.random.Generator, textures: list[np.ndarray] | None = None,
                   foreground: np.ndarray | None = None) -> Rendered:
    """DRAEM-style anomaly: a Perlin-noise mask inside the foreground filled with a foreign texture."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    foreground = foreground_mask(image) if foreground is None else np.asarray(foreground, bool)
    if not foreground.any():
        raise ValueError("foreground is empty: there is nowhere to put the texture")
    pool = default_textures() if textures is None else [_as_rgb_float(t) for t in textures]
    if not pool:
        raise ValueError("textures must not be empty")
    res = tuple(int(2 ** rng.integers(*PERLIN_RES_EXP)) for _ in range(2))
    noise = perlin(rng, (h, w), res)
    # threshold at the quantile that gives the target area: DRAEM's fixed threshold gives
    # anything from nothing to half the image, which makes baselines incomparable
    fg_area = int(foreground.sum())
    area = float(np.exp(rng.uniform(*np.log(np.array(AREA_RANGE) * h * w))))
    area = int(np.clip(area, min(MIN_PIXELS, fg_area), 0.9 * fg_area if fg_area > MIN_PIXELS else fg_area))
    values = noise[foreground]
    threshold = np.partition(values, len(values) - area)[len(values) - area]
    region = (noise >= threshold) & foreground
    texture = _texture_crop(rng, pool[int(rng.integers(len(pool)))], (h, w))
    beta = float(rng.uniform(*BETA_RANGE))
    painted = image * (1.0 - beta * region[..., None]) + texture * (beta * region[..., None])
    inside_tex, inside_img = float((texture[region] @ LUMA).mean()), float((image[region] @ LUMA).mean())
    frac = region.mean()
    params = DefectParams(
        family=BASELINE_FAMILY,
        size="small" if frac < 0.01 else "medium" if frac < 0.03 else "large",
        shape="irregular", orientation="none",
        polarity="bright" if inside_tex > inside_img else "dark",
        contrast="strong" if beta > 0.65 else "faint",
        opacity=beta,
    )
    return finish(image, painted, region, params)
