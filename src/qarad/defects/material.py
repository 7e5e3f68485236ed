"""The material a defect is painted on: its statistics, its light, its grain, and re-toning it.

A defect painted as a flat colour reads as a sticker: real ones keep the material's own texture
(a stain is translucent, the floor of a hole is the same stuff, in shadow), follow its lighting
(brighter where the surface is lit), and have outlines with fine structure. The painters in
`families.py` set each defect's tone from `measure` and `tone`, then paint it with `retone`,
which keeps the local light and a chosen share of the grain, the material's own or, where the
surface is gone (holes, breaks, missing tracks), the grain of another part of the same image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .geometry import smooth_noise
from .vocab import LUMA

# Absolute contrast floor per label: without it a defect on flat, noise-free material (std ~0)
# would be invisible; the ceiling keeps "5 std" on busy textures from saturating everything.
AMPLITUDE_FLOOR = {"faint": 0.08, "strong": 0.22}
AMPLITUDE_CEIL = 0.7
# Flip polarity when the material leaves less room than min(amplitude, FLIP_ROOM) that way (a
# dark crack on near-black rubber cannot show); mid-tone material never flips.
FLIP_ROOM = 0.25
MEASURE_MARGIN = 6  # px of surrounding material included in the local statistics
MAD_TO_STD = 1.4826  # median absolute deviation -> std of a normal distribution
LIGHT_FROM = (100.0, 170.0)  # light direction range, degrees: upper left, as in most photos
LIGHT_SIGMA = 5.0  # px: the material's luminance blurred this much is the light falling on it
# Local light relative to the defect's mean, at most this far either way: further than that the
# blur has caught another object (the background, a hole through the part), not more light.
LIGHT_RATIO = (0.67, 1.5)
# The grain scales with the paint's luminance relative to the material's, within these bounds:
# part of it is sensor noise, which does not fade in a dark pit.
GRAIN_GAIN = (0.5, 2.0)


@dataclass(frozen=True)
class Material:
    mean: np.ndarray  # (3,) mean colour
    luma: float  # mean luminance
    std: float  # luminance spread (robust: a few pixels of another object do not count)


def measure(image: np.ndarray, region: np.ndarray, alpha: np.ndarray) -> Material:
    """Local statistics of the region's pixels in a box around the defect's footprint. The
    spread is the median absolute deviation in std units: equal to the std on a homogeneous
    texture, and not inflated by the background or an edge that falls in the box."""
    support = alpha > 0.02
    if not support.any():
        support = region
    ys, xs = np.nonzero(support)
    y0, y1 = max(0, ys.min() - MEASURE_MARGIN), ys.max() + MEASURE_MARGIN + 1
    x0, x1 = max(0, xs.min() - MEASURE_MARGIN), xs.max() + MEASURE_MARGIN + 1
    pixels = image[y0:y1, x0:x1][region[y0:y1, x0:x1]]
    luma = pixels @ LUMA
    spread = MAD_TO_STD * float(np.median(np.abs(luma - np.median(luma))))
    return Material(pixels.mean(axis=0), float(luma.mean()), min(spread, float(luma.std())))


def tone(material: Material, p, adapt: bool = True) -> tuple[float, str]:
    """Absolute amplitude and the polarity to draw with (flipped if the material has no room)."""
    amp = float(np.clip(p.amplitude * material.std, AMPLITUDE_FLOOR[p.contrast], AMPLITUDE_CEIL))
    room = {"dark": material.luma, "bright": 1.0 - material.luma}
    polarity, other = p.polarity, ("bright" if p.polarity == "dark" else "dark")
    if adapt and room[polarity] < min(amp, FLIP_ROOM) and room[other] > room[polarity]:
        polarity = other
    return amp, polarity


def toward(material: Material, amp: float, polarity: str) -> np.ndarray:
    """The material's colour with its luminance moved by `amp` (down for dark, up for bright)."""
    if polarity == "dark":
        return material.mean * max(material.luma - amp, 0.0) / max(material.luma, 1e-3)
    k = min(amp / max(1.0 - material.luma, 1e-3), 1.0)
    return material.mean + (1.0 - material.mean) * k


def neutral(material: Material, amp: float, polarity: str) -> np.ndarray:
    """A mostly grey tone `amp` away from the material: what shows where material is missing."""
    lum = material.luma - amp if polarity == "dark" else material.luma + amp
    lum = float(np.clip(lum, 0.02, 0.97))
    tint = material.mean / max(material.luma, 1e-3)
    return np.clip(lum * (0.85 + 0.15 * tint), 0.0, 1.0)


def composite(image: np.ndarray, alpha: np.ndarray, target) -> np.ndarray:
    a = alpha[..., None]
    return image * (1.0 - a) + np.asarray(target, np.float32) * a


def _box(region: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(region)
    h, w = region.shape
    return (slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)),
            slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1)))


@dataclass(frozen=True)
class Surface:
    """The material around a region, split into the light falling on it and its grain."""

    light: np.ndarray  # (H, W) luminance blurred by LIGHT_SIGMA
    grain: np.ndarray  # (H, W, 3) image minus its blur: texture finer than the light
    box: tuple[slice, slice]  # where the two were computed (elsewhere: light = luminance, grain = 0)


def _split(image: np.ndarray, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    crop = image[box]
    blur = ndimage.gaussian_filter(crop, (LIGHT_SIGMA, LIGHT_SIGMA, 0), mode="reflect")
    return blur @ LUMA, crop - blur


def surface(image: np.ndarray, region: np.ndarray) -> Surface:
    box = _box(region, int(3 * LIGHT_SIGMA))
    light, grain = image @ LUMA, np.zeros_like(image)
    light[box], grain[box] = _split(image, box)
    return Surface(light, grain, box)


def borrowed_grain(image: np.ndarray, surf: Surface, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) grain of another part of the same image, moved onto the surface's box: the
    texture of what shows where the surface itself is gone."""
    (ys, xs), (h, w) = surf.box, image.shape[:2]
    bh, bw = ys.stop - ys.start, xs.stop - xs.start
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    patch = _split(image, (slice(y0, y0 + bh), slice(x0, x0 + bw)))[1]
    out = np.zeros_like(image)
    out[surf.box] = patch[:, ::-1] if rng.random() < 0.5 else patch  # mirrored half the time
    return out


def light_ratio(material: Material, surf: Surface) -> np.ndarray:
    """(H, W) the light falling on each pixel relative to the defect's mean, within LIGHT_RATIO."""
    return np.clip(surf.light / max(material.luma, 1e-3), *LIGHT_RATIO)


def retone(target, material: Material, surf: Surface, texture: float, grain: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3): the material at colour `target` (its tone where the light equals the defect's
    mean), lit by the surface's own light and carrying `texture` of `grain` (default: the
    surface's), the grain scaled by the ratio of the target's luminance to the material's."""
    target = np.asarray(target, np.float32)
    light = light_ratio(material, surf)[..., None]
    gain = float(np.clip(float(target.reshape(-1, 3).mean(axis=0) @ LUMA) / max(material.luma, 1e-3), *GRAIN_GAIN))
    grain = surf.grain if grain is None else grain
    return target * light + (texture * gain) * grain


def relief(height: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Lambert shading of a height field lit from `light` (dy, dx), minus the flat-surface term."""
    gy, gx = np.gradient(height)
    return -(gy * light[0] + gx * light[1])


def rough_edge(edge: np.ndarray, rng: np.random.Generator, amount: float, scale: float = 1.0) -> np.ndarray:
    """The signed distance to an outline (px, > 0 inside) with the outline moved by fine noise:
    about `amount` px, at a `scale` of a pixel or two, so it is neither ruler-smooth nor aliased."""
    return edge + amount * smooth_noise(rng, edge.shape, scale)
