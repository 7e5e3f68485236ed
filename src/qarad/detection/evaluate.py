"""Evaluate a fitted detector on a labelled test split: per-image scores, metrics overall and per type.

The test images stream through once. Each graded (map, mask) pair goes into the pixel-metric
accumulators (the overall one and its defect type's; a normal image into every type's) and is
dropped, so in streaming mode memory does not grow with the test set; besides the per-image
scores, only the few worst cases' maps are kept, for the report.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import metrics as M
from ..data.io import image_size, read_mask
from ..data.mvtec import NORMAL, Sample
from .inference import Detector, score_images

WORST_CASES = 4  # highest-scored normal and lowest-scored defect images kept for the report, each
GRADE_AHEAD = 4  # scored images whose grading may still be pending (each holds one map at source size)


@dataclass
class WorstCase:
    """A test image the report shows: one of the highest-scored normal images (false alarms when
    above the threshold) or of the lowest-scored defect images (misses when below it)."""

    path: Path
    defect_type: str
    score: float
    anomalous: bool
    anomaly_map: np.ndarray  # (H, W) float32 at the image's source resolution
    mask: Path | None  # ground truth; None for a normal image or a defect image without a mask


@dataclass
class Evaluation:
    records: list[dict] = field(default_factory=list)  # path, defect_type, score, anomalous
    overall: dict[str, float] = field(default_factory=dict)
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    images_per_s: float = 0.0
    curves: dict = field(default_factory=dict)  # overall image ROC, pixel ROC, PRO; {} with one class only
    pixel_metrics: dict = field(default_factory=dict)  # how they were computed (PixelMetrics.describe, overall)
    false_alarms: list[WorstCase] = field(default_factory=list)  # highest-scored normal images, highest first
    misses: list[WorstCase] = field(default_factory=list)  # lowest-scored defect images, lowest first


def summary_metrics(scores, labels, pixels: M.PixelMetrics | None) -> dict[str, float]:
    out: dict[str, float] = {"n_images": int(len(scores))}
    try:
        out.update(M.image_metrics(scores, labels))
    except ValueError:  # one class only
        out.update(dict.fromkeys(M.IMAGE_METRICS, float("nan")))
    try:
        if pixels is None:
            raise ValueError("no graded pixels")
        out.update(pixels.metrics())
    except ValueError:  # no defect pixel at all
        out.update(dict.fromkeys(M.PIXEL_METRICS, float("nan")))
    return out


def graded_pair(layout, anomaly_map: np.ndarray, sample: Sample, at_source: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The (map, ground-truth mask) pair that pixel metrics grade; mask None = image metrics only."""
    graded = layout.to_source(torch.from_numpy(anomaly_map)).numpy() if at_source else anomaly_map
    if sample.mask is not None:
        mask = read_mask(sample.mask, layout.source_hw, sample.mask_encoding)
        return graded, mask.astype(bool) if at_source else layout.mask_to_work(mask)
    if sample.defect_type == NORMAL:
        return graded, np.zeros(graded.shape, dtype=bool)
    return graded, None  # defect image without mask


def graded_pixels(samples: list[Sample], policy, at_source: bool = True) -> int:
    """How many pixels the pixel metrics will grade, from the image headers (no decoding)."""
    total = 0
    for s in samples:
        if s.mask is None and s.defect_type != NORMAL:
            continue
        h, w = image_size(s.image)
        if not at_source:
            h, w = policy.layout(h, w).work_hw
        total += h * w
    return total


class _Highest:
    """The k items with the highest key seen so far (a min-heap of k)."""

    def __init__(self, k: int):
        self.k, self.heap, self.seen = k, [], 0

    def wants(self, key: float) -> bool:
        return self.k > 0 and (len(self.heap) < self.k or key > self.heap[0][0])

    def push(self, key: float, item) -> None:
        self.seen += 1  # ties keep the earlier image; arrays are never compared
        entry = (key, -self.seen, item)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        else:
            heapq.heappushpop(self.heap, entry)

    def items(self) -> list:
        return [item for _, _, item in sorted(self.heap, key=lambda e: (e[0], e[1]), reverse=True)]


def evaluate(detector: Detector, samples: list[Sample], batch_size: int = 8,
             on_image: Callable[[], None] | None = None, at_source: bool = True, pixel_mode: str = "auto",
             worst_cases: int = WORST_CASES) -> Evaluation:
    """Pixel metrics are computed at each image's source resolution by default (the map is
    upsampled, the mask read as it is), so every policy is graded on the same pixels with the same
    weight per image; `at_source=False` grades the working-resolution maps instead. `pixel_mode`
    (metrics.PIXEL_MODES): auto streams above metrics.EXACT_PIXEL_LIMIT graded pixels."""
    streaming = M.streams(graded_pixels(samples, detector.policy, at_source) if pixel_mode == "auto" else 0,
                          pixel_mode)
    types = sorted({s.defect_type for s in samples} - {NORMAL})
    pixels = {t: M.PixelMetrics(streaming) for t in [None, *types]}  # None: over every image
    has_pixels = {t: False for t in pixels}
    false_alarms, misses = _Highest(worst_cases), _Highest(worst_cases)
    ev = Evaluation()

    def grade(sample: Sample, res) -> None:
        """Pixel accumulators and worst cases of one image, on the grading thread (in image order)."""
        graded, mask = graded_pair(res.layout, res.anomaly_map, sample, at_source)
        if mask is not None:
            image_pixels = M.ImagePixels(graded, mask)
            for t in [None, *(types if sample.defect_type == NORMAL else [sample.defect_type])]:
                pixels[t].add(image_pixels)
                has_pixels[t] = True
        keeper, key = (false_alarms, res.score) if sample.label == 0 else (misses, -res.score)
        if keeper.wants(key):
            shown = graded if at_source else res.layout.to_source(torch.from_numpy(res.anomaly_map)).numpy()
            keeper.push(key, WorstCase(Path(sample.image), sample.defect_type, res.score,
                                       bool(res.score > detector.threshold_), shown, sample.mask))

    start = time.perf_counter()
    # Grading (mask decoding, upsampling to the source, pixel accumulation) runs on its own thread,
    # overlapped with the scoring of the next images; at most GRADE_AHEAD images wait for it.
    with ThreadPoolExecutor(max_workers=1) as grader:
        waiting: deque = deque()
        for sample, res in zip(samples, score_images(detector, [s.image for s in samples], batch_size,
                                                     on_image=on_image)):
            ev.records.append({"path": str(sample.image), "defect_type": sample.defect_type, "score": res.score,
                               "anomalous": bool(res.score > detector.threshold_)})
            waiting.append(grader.submit(grade, sample, res))
            while len(waiting) > GRADE_AHEAD:
                waiting.popleft().result()
        while waiting:
            waiting.popleft().result()
    ev.images_per_s = len(samples) / max(time.perf_counter() - start, 1e-9)
    ev.false_alarms, ev.misses = false_alarms.items(), misses.items()

    def subset(t):
        idx = [i for i, s in enumerate(samples) if t is None or s.defect_type in (NORMAL, t)]
        return summary_metrics([ev.records[i]["score"] for i in idx], [samples[i].label for i in idx],
                               pixels[t] if has_pixels[t] else None)

    ev.overall = subset(None)
    ev.per_type = {t: subset(t) for t in types}
    ev.pixel_metrics = pixels[None].describe() | {"exact_pixel_limit": M.EXACT_PIXEL_LIMIT, "requested": pixel_mode}
    try:
        ev.curves = M.curves([r["score"] for r in ev.records], [s.label for s in samples], pixels[None])
    except ValueError:  # one class only: nothing to plot
        ev.curves = {}
    return ev
