"""Where a prompted defect goes when the user gives no mask (`qarad synth --auto-masks`): a region
on the image's object, shaped like a real type's shots when the model knows the type, otherwise of
the kind the prompt's family takes (masks.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.io import read_image, read_mask
from .masks import FAMILY_MASK_KIND, foreground_mask, propose_mask
from .prompts import family_of
from .transplant import mask_like

if TYPE_CHECKING:
    from ..data.real_defects import RealDefects


class RealMasks:
    """The masks of a RealDefects' shots, read once per type when first asked for."""

    def __init__(self, real: "RealDefects | None"):
        self.real, self.masks = real, {}

    def of_prompt(self, prompt: str) -> list[np.ndarray]:
        t = self.real.type_of(prompt) if self.real is not None else None
        if t is None:
            return []
        if t not in self.masks:
            self.masks[t] = [read_mask(d.mask) for d in self.real.of_type(t)]
        return self.masks[t]


def learned_foreground(paths: list[Path]):
    """The part's foreground learned from the images synthesis writes into (they are normal images),
    evenly spaced over them up to the estimate's max_images (data/foreground.py)."""
    from ..data.foreground import Foreground

    chosen = paths[:: max(1, len(paths) // Foreground().config.max_images)]
    return Foreground().fit(read_image(p) for p in chosen)


def propose_defect_mask(rng: np.random.Generator, image: np.ndarray, prompt: str,
                        real_masks: RealMasks | None = None, foreground: np.ndarray | None = None) -> np.ndarray:
    """A region for `prompt` on `image`'s object (`foreground`, bool (H, W); when None, the image's
    own bright/dark split, defects/masks.foreground_mask): for a real type, the shape of one of its
    shots' masks (flipped, turned, rescaled); otherwise a proposal of the kind the prompt's family takes."""
    foreground = foreground_mask(image) if foreground is None else foreground
    templates = real_masks.of_prompt(prompt) if real_masks is not None else []
    if templates:
        return mask_like(rng, templates[int(rng.integers(len(templates)))], image.shape[:2], foreground)
    kind = FAMILY_MASK_KIND.get(family_of(prompt) or "", None)
    return propose_mask(rng, image.shape[:2], foreground, kind=kind)
