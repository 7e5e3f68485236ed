"""The scoring region: a qarad run may score only the part, not the backdrop around it.

The region is the foreground learned from the run's normal training images (data/foreground.py:
where the images show material, not a flat backdrop). Outside it the smoothed map is lowered to
its minimum inside, so a spot on the plain background can neither raise the image score nor light
up pixels. It is one more candidate of the validation split's gate (detection/validation.py),
kept only where validation says it helps; on images without a flat backdrop (a texture filling the
frame) the foreground is the whole image and the candidate is not tried.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data.foreground import Foreground, ForegroundConfig
from ..data.io import read_image
from ..data.resolution import Layout

LAYOUT_TENSOR = "foreground_layout"  # the aligned sets' learned layout, in the model's safetensors


def fit_foreground(paths: list[Path]) -> Foreground:
    """The foreground of normal images `paths`, evenly spaced up to the estimate's max_images."""
    chosen = list(paths)[:: max(1, len(paths) // ForegroundConfig().max_images)]
    return Foreground().fit(read_image(p) for p in chosen)


def work_region(foreground: Foreground, image: np.ndarray, layout: Layout) -> torch.Tensor:
    """bool (h, w) over the working image: the part in `image`."""
    return torch.from_numpy(layout.mask_to_work(foreground.mask(image)))


def restrict(work_map: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The smoothed map with every pixel outside `region` lowered to the minimum inside it."""
    if bool(region.all()) or not bool(region.any()):
        return work_map
    out = work_map.clone()
    out[~region] = work_map[region].min()
    return out


def to_config(foreground: Foreground | None) -> dict | None:
    if foreground is None:
        return None
    return {"config": asdict(foreground.config), "threshold": float(foreground.threshold_),
            "separable": bool(foreground.separable_), "has_layout": foreground.layout_ is not None}


def tensors(foreground: Foreground | None) -> dict[str, torch.Tensor]:
    if foreground is None or foreground.layout_ is None:
        return {}
    return {LAYOUT_TENSOR: torch.from_numpy(foreground.layout_.astype(np.uint8))}


def from_config(stored: dict | None, stored_tensors: dict[str, torch.Tensor], source) -> Foreground | None:
    """The fitted Foreground that to_config/tensors wrote (None: the whole image is scored)."""
    if stored is None:
        return None
    if set(stored) != {"config", "threshold", "separable", "has_layout"}:
        raise ValueError(f"{source}: foreground must have config, threshold, separable, has_layout")
    out = Foreground(ForegroundConfig(**stored["config"]))
    out.threshold_, out.separable_ = float(stored["threshold"]), bool(stored["separable"])
    out.layout_ = stored_tensors[LAYOUT_TENSOR].numpy().astype(bool) if stored["has_layout"] else None
    return out
