"""Evaluate a fitted detector on a labelled test split: per-image scores, metrics overall and per type."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .. import metrics as M
from ..data.io import read_mask
from ..data.mvtec import NORMAL, Sample
from .inference import Detector, score_images


@dataclass
class Evaluation:
    records: list[dict] = field(default_factory=list)  # path, defect_type, score, anomalous
    overall: dict[str, float] = field(default_factory=dict)
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    images_per_s: float = 0.0
    curves: dict = field(default_factory=dict)  # overall image ROC, pixel ROC, PRO; only when asked for


def summary_metrics(scores, labels, maps, masks) -> dict[str, float]:
    out: dict[str, float] = {"n_images": int(len(scores))}
    try:
        out.update(M.image_metrics(scores, labels))
    except ValueError:  # one class only
        out.update(dict.fromkeys(M.IMAGE_METRICS, float("nan")))
    try:
        out.update(M.pixel_metrics(maps, masks))
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


def evaluate(detector: Detector, samples: list[Sample], batch_size: int = 8,
             on_image: Callable[[], None] | None = None, curves: bool = False, at_source: bool = True) -> Evaluation:
    """Pixel metrics are computed at each image's source resolution by default (the map is
    upsampled, the mask read as it is), so every policy is graded on the same pixels with the same
    weight per image; `at_source=False` grades the working-resolution maps instead."""
    import time

    ev = Evaluation()
    maps, masks = [], []
    start = time.perf_counter()
    for sample, res in zip(samples, score_images(detector, [s.image for s in samples], batch_size, on_image=on_image)):
        graded, mask = graded_pair(res.layout, res.anomaly_map, sample, at_source)
        maps.append(graded)
        masks.append(mask)
        ev.records.append({"path": str(sample.image), "defect_type": sample.defect_type, "score": res.score,
                           "anomalous": bool(res.score > detector.threshold_)})
    ev.images_per_s = len(samples) / max(time.perf_counter() - start, 1e-9)

    def subset(keep):
        idx = [i for i, s in enumerate(samples) if keep(s)]
        pix = [i for i in idx if masks[i] is not None]
        return summary_metrics([ev.records[i]["score"] for i in idx], [samples[i].label for i in idx],
                        [maps[i] for i in pix], [masks[i] for i in pix])

    ev.overall = subset(lambda s: True)
    if curves:
        pix = [i for i, m in enumerate(masks) if m is not None]
        try:
            ev.curves = M.curves([r["score"] for r in ev.records], [s.label for s in samples],
                                 [maps[i] for i in pix], [masks[i] for i in pix])
        except ValueError:  # one class only: nothing to plot
            ev.curves = {}
    for t in sorted({s.defect_type for s in samples} - {NORMAL}):
        ev.per_type[t] = subset(lambda s, t=t: s.defect_type in (NORMAL, t))
    return ev
