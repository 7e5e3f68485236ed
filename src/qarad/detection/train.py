"""Training the synthesis-trained detector from files: cache frozen features, then fit the head.

Backbone features of the normal images and of the synthetic samples are computed once (and
can be reused across weightings and seeds, as the ablation does); only the head is trained.
Everything follows the run's resolution policy: normal images and synthetic samples are cut
into the same views as at test time, and synthetic views without any defect pixel are dropped.
Test images can be cached too (`cache_images`, float32) and scored by many heads with
`score_cached`, which gives what `inference.score_images` gives without re-running the backbone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.io import read_image, read_mask
from ..data.resolution import Layout, ResolutionPolicy
from ..data.stream import iter_loaded, map_views
from ..quality.weighting import WeightingConfig, weights
from ..synthesis.jobs import MANIFEST, read_manifest
from .segmenter import Segmenter, SegmenterConfig, cell_targets

FEATURE_DTYPE = torch.float16  # halves the cache; the head trains in float32


@dataclass
class SynthFeatures:
    features: torch.Tensor  # (M, 152, h, w)
    targets: torch.Tensor  # (M, h, w) defect coverage of each stride-8 cell
    scores: np.ndarray  # (M,) QAW score of the sample each view came from (nan if unscored)


def normal_features(model: Segmenter, paths: list[Path], batch_size: int = 8, max_views: int | None = None,
                    seed: int = 0, on_image: Callable[[], None] | None = None) -> torch.Tensor:
    """Features of every (valid) view of the normal images; a reproducible subset past max_views."""
    feats = []
    for item, emb in map_views(iter_loaded(paths, model.policy), model.embed, batch_size):
        feats.append(emb.to(FEATURE_DTYPE))
        if on_image:
            on_image()
    out = torch.cat(feats)
    if max_views is not None and len(out) > max_views:
        keep = torch.randperm(len(out), generator=torch.Generator().manual_seed(seed))[:max_views]
        out = out[keep.sort().values]
    return out


def _mask_views(mask: np.ndarray, policy: ResolutionPolicy) -> torch.Tensor:
    """(H, W) bool -> (n_views, vh, vw) float coverage, cut exactly like the image's views."""
    layout = policy.layout(*mask.shape)
    as_image = np.repeat(mask.astype(np.float32)[..., None], 3, axis=2)
    return layout.views(as_image)[:, 0]


def synthetic_features(model: Segmenter, synth_dir: Path, batch_size: int = 8,
                       on_image: Callable[[], None] | None = None) -> SynthFeatures:
    synth_dir = Path(synth_dir)
    entries = read_manifest(synth_dir / MANIFEST)
    if not entries:
        raise ValueError(f"{synth_dir / MANIFEST}: no synthetic samples (run `qarad synth` first)")
    feats, targets, scores = [], [], []
    paths = [synth_dir / e["image"] for e in entries]
    for item, emb in map_views(iter_loaded(paths, model.policy), model.embed, batch_size):
        entry = entries[item.index]
        mask = read_mask(synth_dir / entry["mask"], item.image.shape[:2])
        cover = cell_targets(_mask_views(mask, model.policy) > 0.5)
        keep = cover.flatten(1).amax(1) > 0  # tiles that show some of the defect
        feats.append(emb[keep].to(FEATURE_DTYPE))
        targets.append(cover[keep])
        score = entry.get("score")
        scores += [np.nan if score is None else float(score)] * int(keep.sum())
        if on_image:
            on_image()
    if not sum(len(f) for f in feats):
        raise ValueError(f"{synth_dir}: no synthetic sample has a non-empty mask")
    return SynthFeatures(torch.cat(feats), torch.cat(targets), np.asarray(scores))


def sample_weights(scores: np.ndarray, config: WeightingConfig) -> torch.Tensor:
    if config.calibration != "none" and np.isnan(scores).any():
        raise ValueError("QAW weighting needs scores: run `qarad score SYNTH_DIR` first, or use --weighting none")
    return torch.as_tensor(weights(np.nan_to_num(scores), config), dtype=torch.float32)


def fit_detector(config: SegmenterConfig, policy: ResolutionPolicy, normal: torch.Tensor, synth: SynthFeatures,
                 weighting: WeightingConfig, on_step: Callable[[float], None] | None = None) -> Segmenter:
    model = Segmenter(config, policy)
    return model.fit(normal, synth.features, synth.targets, sample_weights(synth.scores, weighting), on_step)


def describe(synth: SynthFeatures, weighting: WeightingConfig) -> str:
    w = sample_weights(synth.scores, weighting)
    return json.dumps({"synthetic_views": len(w), "weight_min": float(w.min()), "weight_mean": float(w.mean()),
                       "weight_max": float(w.max())})


@dataclass
class CachedImage:
    layout: Layout
    features: torch.Tensor  # (n_views, 152, h, w) float32: exactly what view_maps computes from the views


def cache_images(model: Segmenter, paths: list[Path], batch_size: int = 8,
                 on_image: Callable[[], None] | None = None) -> list[CachedImage]:
    """Frozen features of every view of each image, for scoring with many heads (`score_cached`)."""
    out = []
    for item, emb in map_views(iter_loaded(paths, model.policy), model.embed, batch_size):
        out.append(CachedImage(item.layout, emb))
        if on_image:
            on_image()
    return out


def score_cached(model: Segmenter, cached: list[CachedImage], batch_size: int = 16
                 ) -> Iterator[tuple[np.ndarray, float]]:
    """(anomaly map over the working image, image score) per image, as `score_images` computes them
    from the views (stitch, smooth, maximum), with the head run on batches of cached features."""

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
            maps = model.view_maps_from_features(torch.cat([c.features for c in batch]), batch[0].layout.view_hw)
            for c, m in zip(batch, maps.split([len(c.features) for c in batch])):
                work = model.smooth(c.layout.stitch(m.float().cpu()))
                yield work.numpy().astype(np.float32), float(work.max())
