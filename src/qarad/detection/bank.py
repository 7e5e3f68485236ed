"""The QARAD detector's memory bank from cached normal views, and the honest search of cached views.

Honest residuals: the bank holds coreset rows of *all* normal training images, each row tagged
with its source image. A training view (normal, or a defect drawn into a normal image) is searched
against the bank without the rows of its own source image, so its residual looks like that of a
test image, which never has its own rows in the bank.
"""
from __future__ import annotations

import torch

from .coreset import CoresetSampler
from .segmenter import Segmenter
from .views import ViewSet

CORESET_PROJECTION, CORESET_PARTITION = 128, 16384  # as PatchCoreConfig


def build_bank(model: Segmenter, normal: ViewSet) -> None:
    cfg = model.config
    sampler = CoresetSampler(cfg.coreset_ratio, CORESET_PROJECTION, CORESET_PARTITION, cfg.seed, cfg.memory_limit)
    for f, ok, s in zip(normal.features, normal.valid, normal.source.tolist()):
        cells = f.float().permute(1, 2, 0)[ok]
        sampler.add(cells, torch.full((len(cells),), s, dtype=torch.int32))
    model.set_bank(*sampler.result())


def search(model: Segmenter, views: ViewSet) -> None:
    """Nearest bank row of every cell of every view, skipping the rows of the view's own image."""
    views.dist, views.rows = [], []
    for f, s in zip(views.features, views.source):  # one view at a time: keep-aspect views differ in shape
        d, r = model.nearest(f[None].float(), s[None])
        views.dist.append(d[0])
        views.rows.append(r[0])


def fit_bank(model: Segmenter, normal: ViewSet, others=()) -> None:
    """The memory bank from the normal views, then every cell of `normal` and `others` searched in it."""
    build_bank(model, normal)
    for views in (normal, *others):
        search(model, views)
