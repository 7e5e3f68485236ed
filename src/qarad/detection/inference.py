"""Image-level inference shared by every detector: views -> stitched, smoothed map -> score."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from ..data.resolution import Layout, ResolutionPolicy
from ..data.stream import iter_loaded, map_views


class Detector(Protocol):
    policy: ResolutionPolicy
    threshold_: float

    def view_maps(self, views: torch.Tensor) -> torch.Tensor: ...  # (n, 3, vh, vw) -> (n, vh, vw)

    def smooth(self, work_map: torch.Tensor) -> torch.Tensor: ...  # (h, w) -> (h, w)


def image_score(detector: Detector, work_map: torch.Tensor) -> float:
    """The detector's image score of its smoothed map: its fitted rule (Segmenter.image_score,
    detection/fusion.py) or, for a detector without one, the maximum."""
    rule = getattr(detector, "image_score", None)
    return rule(work_map) if rule is not None else float(work_map.max())


@dataclass
class ImageResult:
    path: Path
    layout: Layout
    anomaly_map: np.ndarray  # (h, w) float32 over the working image
    score: float  # image score: maximum of the smoothed map (a qarad run: its fitted image rule)
    image: np.ndarray | None = None  # original image, kept only when asked (overlays)


def score_images(
    detector: Detector,
    paths: Iterable[Path],
    batch_size: int = 8,
    keep_images: bool = False,
    on_image: Callable[[], None] | None = None,
) -> Iterator[ImageResult]:
    with torch.inference_mode():
        # a run that scores its part only finds the part on the full image (not a reduced decode)
        keep = keep_images or getattr(detector, "foreground_", None) is not None
        loaded = iter_loaded(paths, detector.policy, keep_image=keep)
        for item, maps in map_views(loaded, detector.view_maps, batch_size):
            work = detector.smooth(item.layout.stitch(maps.float().cpu()))
            region = getattr(detector, "restrict", None)  # a qarad run that scores its part only
            work = region(work, item.image, item.layout) if region is not None else work
            if on_image:
                on_image()
            yield ImageResult(item.path, item.layout, work.numpy().astype(np.float32), image_score(detector, work),
                              item.image if keep_images else None)

