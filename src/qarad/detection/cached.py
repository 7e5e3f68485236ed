"""Test images cached once and scored by many heads (the ablation and few-shot benchmarks): the
maps and scores `inference.score_images` gives, without re-running the backbone per head."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.resolution import Layout
from ..data.stream import iter_loaded, map_views
from .segmenter import Segmenter


@dataclass
class CachedImage:
    layout: Layout
    features: torch.Tensor  # (n_views, C, h, w) float32: exactly what view_maps computes from the views
    dist: torch.Tensor | None = None  # (n_views, h, w) and (n_views, h, w) int64: the bank searched once
    rows: torch.Tensor | None = None  # (`search_cached`), for every head that shares that bank


def cache_images(model: Segmenter, paths: list[Path], batch_size: int = 8,
                 on_image: Callable[[], None] | None = None) -> list[CachedImage]:
    """Frozen features of every view of each image, for scoring with many heads (`score_cached`)."""
    out = []
    for item, emb in map_views(iter_loaded(paths, model.policy), model.embed, batch_size):
        out.append(CachedImage(item.layout, emb))
        if on_image:
            on_image()
    return out


def search_cached(model: Segmenter, cached: list[CachedImage], batch_size: int = 16) -> list[CachedImage]:
    """`cached` with its features searched against `model`'s bank, once: `score_cached` then skips the
    search for every head that shares that bank (`Segmenter.fit(..., bank=model)`)."""
    out = []
    with torch.inference_mode():
        for c in cached:
            found = [model.nearest(f.float()) for f in c.features.split(batch_size)]
            out.append(replace(c, dist=torch.cat([d for d, _ in found]), rows=torch.cat([r for _, r in found])))
    return out


def score_cached(model: Segmenter, cached: list[CachedImage], batch_size: int = 16
                 ) -> Iterator[tuple[np.ndarray, float]]:
    """(anomaly map over the working image, image score) per image, as `score_images` computes them
    from the views (stitch, smooth, maximum), with the head run on batches of cached features (and
    their bank search, when `search_cached` made it)."""

    def batches():
        batch: list[CachedImage] = []
        for c in cached:
            if batch and (c.features.shape[1:] != batch[0].features.shape[1:]
                          or sum(len(b.features) for b in batch) + len(c.features) > batch_size):
                yield batch
                batch = []
            batch.append(c)
        if batch:
            yield batch

    with torch.inference_mode():
        for batch in batches():
            features, hw = torch.cat([c.features for c in batch]), batch[0].layout.view_hw
            if batch[0].dist is None:
                maps = model.view_maps_from_features(features, hw)
            else:
                maps = model.view_maps_from_search(features, torch.cat([c.dist for c in batch]),
                                                   torch.cat([c.rows for c in batch]), hw)
            for c, m in zip(batch, maps.split([len(c.features) for c in batch])):
                work = model.smooth(c.layout.stitch(m.float().cpu()))
                yield work.numpy().astype(np.float32), model.image_score(work)
