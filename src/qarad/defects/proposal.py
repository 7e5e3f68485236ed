"""Where a prompted defect goes when the user gives no mask (`qarad synth --auto-masks`): a region
on the image's object, shaped like a real type's shots when the model knows the type, otherwise of
the kind the prompt's family takes (masks.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..data.io import read_mask
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


def propose_defect_mask(rng: np.random.Generator, image: np.ndarray, prompt: str,
                        real_masks: RealMasks | None = None) -> np.ndarray:
    """A region for `prompt` on `image`'s object: for a real type, the shape of one of its shots'
    masks (flipped, turned, rescaled); otherwise a proposal of the kind the prompt's family takes."""
    templates = real_masks.of_prompt(prompt) if real_masks is not None else []
    if templates:
        return mask_like(rng, templates[int(rng.integers(len(templates)))], image.shape[:2], foreground_mask(image))
    kind = FAMILY_MASK_KIND.get(family_of(prompt) or "", None)
    return propose_mask(rng, image.shape[:2], foreground_mask(image), kind=kind)
