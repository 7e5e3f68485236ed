"""Procedural defect renderer (DESIGN 4.1): the fitting corpus for the prior and the dual
encoder, and, used directly on images, the procedural baseline that ARAS must beat
(Qian et al., arXiv 2508.03539).

A render takes a normal image, a region where the defect may go and `DefectParams`. It measures
the material around the defect (mean colour, luminance spread), sets the defect's contrast
relative to it, paints it with the material's own light and grain (`material.py`), and returns
the image with the mask of the pixels that actually changed (by more than 1/255). Pixels
outside that mask are bit-identical to the input.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import families
from .params import DefectParams
from .prompts import prompt_for
from .vocab import COLOURED_FAMILIES, COLOURS, FAMILIES, FAMILY_SHAPES, SIZES, STROKE_FAMILIES

__all__ = ["FAMILIES", "DefectParams", "Rendered", "sample_params", "resolve_params", "render", "finish",
           "is_monochrome"]

CHANGE_THRESHOLD = 1.0 / 255.0  # a pixel counts as changed (and enters the mask) above this
# Defect contrast in units of the local luminance std (the brief: faint ~1-2, strong ~3-5 std).
AMPLITUDE_STD = {"faint": (1.2, 2.0), "strong": (3.0, 5.0)}
# Fraction of the room the region offers that the defect uses, per size label.
EXTENT = {"small": (0.35, 0.55), "medium": (0.55, 0.8), "large": (0.8, 1.0)}
ORIENTATION_ANGLE = {"horizontal": 0.0, "vertical": 90.0, "diagonal": 45.0}
ANGLE_JITTER = 12.0  # degrees around the nominal orientation; print lines get none (tracks are straight)
# Stroke width (px) by (family, shape); rim width for holes.
WIDTH = {
    ("scratch", "thin"): (0.8, 1.6), ("scratch", "wide"): (2.0, 3.5),
    ("crack", "thin"): (1.0, 1.6), ("crack", "branching"): (1.4, 2.6),
    ("fray", "thin"): (0.6, 0.9), ("fray", "wide"): (0.9, 1.4),
    ("print_line", "gap"): (2.0, 4.5), ("print_line", "bridge"): (2.0, 4.0),
    ("hole", "round"): (1.0, 2.0), ("hole", "elongated"): (1.0, 2.0),
}
ASPECT = {"round": (1.0, 1.25), "elongated": (1.7, 2.8)}
COUNT = {"scratch": (1, 3), "crack": (2, 5), "fray": (14, 40)}  # strands / branches / fibres
OPACITY = {"stain": (0.65, 0.95)}


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool: exactly the pixels that changed by more than 1/255
    params: DefectParams  # as actually rendered (numeric fields filled, polarity possibly adapted)
    prompt: str


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _orientation(rng: np.random.Generator, family: str, shape: str) -> str:
    if family in STROKE_FAMILIES:
        if family == "print_line":  # tracks are mostly axis-aligned
            return str(rng.choice(["horizontal", "vertical", "diagonal"], p=[0.4, 0.4, 0.2]))
        return str(rng.choice(["horizontal", "vertical", "diagonal"]))
    if shape == "elongated":
        return str(rng.choice(["horizontal", "vertical", "diagonal"]))
    return "none"


def _polarity(rng: np.random.Generator, family: str) -> str:
    dark_share = {"crack": 1.0, "hole": 0.8, "stain": 0.75, "break": 0.7}.get(family, 0.5)
    return "dark" if rng.random() < dark_share else "bright"


def _angle(rng: np.random.Generator, family: str, orientation: str) -> float:
    if orientation == "none":
        return _uniform(rng, (0.0, 180.0))
    base = ORIENTATION_ANGLE[orientation]
    if orientation == "diagonal" and rng.random() < 0.5:
        base = -base
    jitter = 0.0 if family == "print_line" else rng.uniform(-ANGLE_JITTER, ANGLE_JITTER)
    return float(base + jitter)


def resolve_params(params: DefectParams, rng: np.random.Generator) -> DefectParams:
    """Fill every numeric field left None from the categorical labels."""
    p, fam = params, params.family
    values = {}
    if p.amplitude is None:
        values["amplitude"] = _uniform(rng, AMPLITUDE_STD[p.contrast])
    if p.extent is None:
        values["extent"] = _uniform(rng, EXTENT[p.size])
    if p.width is None:
        values["width"] = _uniform(rng, WIDTH.get((fam, p.shape), (1.0, 2.0)))
    if p.angle is None:
        values["angle"] = _angle(rng, fam, p.orientation)
    if p.aspect is None:
        values["aspect"] = _uniform(rng, ASPECT.get(p.shape, (1.0, 1.5)))
    if p.count is None:
        lo, hi = COUNT.get(fam, (1, 1))
        values["count"] = int(rng.integers(lo, hi + 1))
    if p.opacity is None:
        values["opacity"] = _uniform(rng, OPACITY.get(fam, (1.0, 1.0)))
    return replace(p, **values)


def is_monochrome(image: np.ndarray) -> bool:
    """True when every pixel is grey (channels within 1/255): a monochrome camera's image."""
    image = np.asarray(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        return True
    return float(np.ptp(image, axis=-1).max(initial=0.0)) <= CHANGE_THRESHOLD


def sample_params(rng: np.random.Generator, family: str | None = None, coloured: bool = True) -> DefectParams:
    """Random labels (and numbers) for one defect of `family` (any family when None). With
    `coloured` False no colour is drawn: on a monochrome camera's images a green stain is a grey
    one, and a prompt naming its hue would describe something no image of that material shows."""
    family = str(rng.choice(FAMILIES)) if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown defect family {family!r}; choose from {', '.join(FAMILIES)}")
    shape = str(rng.choice(FAMILY_SHAPES[family]))
    colour = None
    if family in COLOURED_FAMILIES and coloured:
        # a colourless stain is a grey/dark one; colourless discoloration is a brightness shift
        names = list(COLOURS) + [None] * (1 if family == "stain" else 3)
        colour = names[int(rng.integers(len(names)))]
    params = DefectParams(
        family=family,
        size=str(rng.choice(SIZES)),
        shape=shape,
        orientation=_orientation(rng, family, shape),
        polarity=_polarity(rng, family),
        contrast="strong" if rng.random() < (0.7 if family in ("crack", "break", "hole") else 0.5) else "faint",
        colour=colour,
    )
    return resolve_params(params, rng)


def _check_inputs(image: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    region = np.asarray(region, dtype=bool)
    if region.shape != image.shape[:2]:
        raise ValueError(f"region is {region.shape} but the image is {image.shape[:2]}")
    if not region.any():
        raise ValueError("region is empty: there is nowhere to put the defect")
    return image, region


def finish(image: np.ndarray, painted: np.ndarray, region: np.ndarray, params: DefectParams,
           prompt: str | None = None) -> Rendered:
    """Clip, keep only the changes inside `region` that exceed 1/255, and build the Rendered."""
    painted = np.clip(painted, 0.0, 1.0).astype(np.float32)
    changed = (np.abs(painted - image).max(axis=2) > CHANGE_THRESHOLD) & region
    out = np.where(changed[..., None], painted, image)
    return Rendered(out, changed, params, prompt_for(params) if prompt is None else prompt)


def render(image: np.ndarray, region: np.ndarray, params: DefectParams, rng: np.random.Generator) -> Rendered:
    """Paint one defect of `params` into `image`, inside `region` (bool (H, W)).

    The returned params have every numeric field filled; their polarity may differ from the
    request when the material has no room for it (a dark defect on near-black material is drawn
    bright), and the prompt always describes what was drawn.
    """
    image, region = _check_inputs(image, region)
    if params.family not in FAMILIES:
        raise ValueError(f"cannot render family {params.family!r}; choose from {', '.join(FAMILIES)}")
    params = resolve_params(params, rng)
    painted, polarity = families.PAINTERS[params.family](image, region, params, rng)
    return finish(image, painted, region, replace(params, polarity=polarity))
