"""Training the QARAD detector's head on cached, searched views, and its calibration: the steps
`Segmenter.fit` takes, each returning what the Segmenter then sets on itself (`model` below is the
Segmenter being fitted, read only).

The head trains on 90% of the normal views; the other 10% (also searched without their own rows,
Segmenter.search) set the fusion statistics and the threshold. It trains on random crops of TRAIN_CROP x
TRAIN_CROP cells (smaller views: the smallest view's size), a defect view's crop always holding
some of its defect. The head is convolutional with a 5x5-cell receptive field, so a crop is scored
as the whole view would be away from the crop's border. Feature-space negatives are made from the
normal views as the loop runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..quality.weighting import weighted_loss
from ..detector_config import SegmenterConfig
from ..training import optimizer_step
from .head import Reference, SegmentationHead, per_sample_loss
from .patchcore import THRESHOLD_SIGMAS
from .views import ViewSet

HOLDOUT_FRACTION = 0.1  # normal views kept aside for the fusion statistics and the threshold
MIN_HOLDOUT = 2  # a standard deviation needs at least two scores
TRAIN_CROP = 16  # cells a side of the crops the head trains on: 4x its 5x5-cell receptive field, and a
# quarter of the cost of whole 256-px views (32 x 32 cells)
BLOB_COVER = (0.02, 0.2)  # feature-space negatives: share of a crop's cells the noise blob covers
NOISE_SCALE = (0.5, 1.5)  # ... times config.feature_noise times each channel's std


def _valid_cells(xs: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x[ok] for x, ok in zip(xs, valid)])


@dataclass
class _Batch:
    features: list[torch.Tensor]
    dist: list[torch.Tensor | None]
    rows: list[torch.Tensor | None]
    targets: list[torch.Tensor]
    weights: list[float]
    sources: list[int]


def _crop_origin(generator: torch.Generator, hw: tuple[int, int], crop: tuple[int, int],
                 target: torch.Tensor | None) -> tuple[int, int]:
    """Random crop origin; for a defect view, one whose crop holds a random defect cell."""
    (h, w), (ch, cw) = hw, crop
    if target is not None:
        cells = torch.nonzero(target > 0)
        y, x = cells[int(torch.randint(len(cells), (1,), generator=generator))].tolist()
        lo_y, lo_x = max(0, y - ch + 1), max(0, x - cw + 1)
        hi_y, hi_x = min(h - ch, y), min(w - cw, x)
    else:
        lo_y, lo_x, hi_y, hi_x = 0, 0, h - ch, w - cw
    oy = lo_y + int(torch.randint(hi_y - lo_y + 1, (1,), generator=generator))
    ox = lo_x + int(torch.randint(hi_x - lo_x + 1, (1,), generator=generator))
    return oy, ox


def _cut(x: torch.Tensor | None, o: tuple[int, int], crop: tuple[int, int]) -> torch.Tensor | None:
    return None if x is None else x[..., o[0]:o[0] + crop[0], o[1]:o[1] + crop[1]]


def blob_mask(generator: torch.Generator, crop: tuple[int, int]) -> torch.Tensor:
    """A random smooth blob covering 2-20% of the cells (at least one): smooth noise above a quantile."""
    h, w = crop
    coarse = torch.rand(1, 1, max(2, h // 4), max(2, w // 4), generator=generator)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
    lo, hi = BLOB_COVER
    cover = lo + (hi - lo) * float(torch.rand((), generator=generator))
    k = max(1, round(cover * h * w))
    threshold = field.flatten().topk(k).values[-1]
    return field >= threshold


class _Trainer:
    """The head's training loop over cached views (see the module docstring for the data)."""

    def __init__(self, model, normal: ViewSet, pools: dict[str, ViewSet], generator: torch.Generator):
        cfg = model.config
        self.model, self.normal, self.pools, self.generator = model, normal, pools, generator
        shapes = [f.shape[-2:] for f in normal.features] + [f.shape[-2:] for p in pools.values() for f in p.features]
        self.crop = (min(TRAIN_CROP, *(s[0] for s in shapes)), min(TRAIN_CROP, *(s[1] for s in shapes)))
        self.sources = [s for s in cfg.negatives if s == "feature" or s in pools]
        cells = torch.stack([f.float().flatten(1).std(1) for f in normal.features[:256]])
        self.channel_std = cells.mean(0)[:, None, None]  # (C, 1, 1)

    def _pick(self, views: ViewSet, n: int, batch: _Batch, defect: bool) -> None:
        for i in torch.randint(len(views), (n,), generator=self.generator).tolist():
            target = views.targets[i] if defect else None
            o = _crop_origin(self.generator, tuple(views.features[i].shape[-2:]), self.crop, target)
            batch.features.append(_cut(views.features[i], o, self.crop).float())
            batch.dist.append(_cut(views.dist[i], o, self.crop) if views.dist else None)
            batch.rows.append(_cut(views.rows[i], o, self.crop) if views.rows else None)
            batch.targets.append(_cut(target, o, self.crop) if defect else torch.zeros(self.crop))
            batch.weights.append(float(views.weights[i]) if defect else 1.0)
            batch.sources.append(int(views.source[i]))

    def _feature_negatives(self, n: int, batch: _Batch) -> None:
        """Normal views with Gaussian noise inside a blob (SimpleNet / GLASS style), searched again."""
        cfg, start = self.model.config, len(batch.features)
        self._pick(self.normal, n, batch, defect=False)
        for j in range(start, len(batch.features)):
            blob = blob_mask(self.generator, self.crop)
            scale = cfg.feature_noise * (NOISE_SCALE[0] + (NOISE_SCALE[1] - NOISE_SCALE[0])
                                         * float(torch.rand((), generator=self.generator)))
            noise = torch.randn(batch.features[j].shape, generator=self.generator) * self.channel_std * scale
            batch.features[j] = batch.features[j] + noise * blob
            batch.targets[j] = blob.float()
            if cfg.uses_bank:  # the noisy cells have other neighbours: search them again
                d, r = batch.dist[j].clone(), batch.rows[j].clone()
                query = batch.features[j].permute(1, 2, 0)[blob]
                own = torch.full((len(query),), batch.sources[j], dtype=torch.int64)
                d[blob], r[blob] = self.model.index_.search(query, own)
                batch.dist[j], batch.rows[j] = d, r

    def batch(self, step: int) -> _Batch:
        cfg = self.model.config
        n_normal = max(1, round(cfg.normal_fraction * cfg.batch_size))
        counts = _split(cfg.batch_size - n_normal, len(self.sources), step)
        batch = _Batch([], [], [], [], [], [])
        self._pick(self.normal, n_normal, batch, defect=False)
        for source, n in zip(self.sources, counts):
            if source == "feature":
                self._feature_negatives(n, batch)
            else:
                self._pick(self.pools[source], n, batch, defect=True)
        return batch

    def inputs(self, batch: _Batch) -> torch.Tensor:
        if not self.model.config.residual:
            return self.model.inputs(torch.stack(batch.features), None, None)
        return self.model.inputs(torch.stack(batch.features), torch.stack(batch.dist), torch.stack(batch.rows))


def _split(total: int, parts: int, step: int) -> list[int]:
    """`total` batch places over `parts` sources, the remainder rotating with the step."""
    base, extra = divmod(total, parts)
    return [base + (1 if (i - step) % parts < extra else 0) for i in range(parts)]


def check_inputs(config: SegmenterConfig, normal: ViewSet, pools: dict[str, ViewSet]) -> None:
    """Refuse views a Segmenter with `config` cannot fit on."""
    if not len(normal):
        raise ValueError("the detector needs at least one normal view")
    if config.uses_bank and len(set(normal.source.tolist())) < 2:
        raise ValueError("the memory bank needs at least two normal images (rows of a view's own image are skipped)")
    missing = [s for s in config.negatives if s != "feature" and (s not in pools or not len(pools[s]))]
    if missing:
        raise ValueError(f"negatives {missing} asked for but no such defect views were given")
    for name, views in (("normal", normal), *pools.items()):
        if any(f.dim() != 3 or f.shape[0] != config.feature_channels for f in views.features):
            raise ValueError(f"{name} views must be ({config.feature_channels}, h, w) PatchEmbedder features of "
                             f"{config.backbone}")
    for name, views in pools.items():
        w = views.weights
        if w is None or w.shape != (len(views),) or not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{name}: sample weights must be finite, non-negative, one per view")


def hold_out(normal: ViewSet, generator: torch.Generator) -> tuple[ViewSet, ViewSet]:
    """-> (views the head trains on, views that calibrate it): HOLDOUT_FRACTION of the normal views
    drawn aside; too few views to hold some out: all of them for both."""
    order = torch.randperm(len(normal), generator=generator)
    n_hold = max(MIN_HOLDOUT, round(HOLDOUT_FRACTION * len(normal))) if len(normal) >= 2 * MIN_HOLDOUT else 0
    held, train = normal.subset(order[:n_hold].sort().values), normal.subset(order[n_hold:].sort().values)
    return train, (held if n_hold else train)


def dist_scale(train: ViewSet) -> float:
    """Median nearest-neighbour distance of the searched normal training cells (Reference.dist_scale)."""
    return max(float(_valid_cells(train.dist, train.valid).median()), 1e-6)


def train_head(model, train: ViewSet, pools: dict[str, ViewSet], generator: torch.Generator,
               on_step: Callable[[float], None] | None = None) -> SegmentationHead:
    """The head trained on `train` and the defect pools (in eval mode); it reads `model`'s bank and
    reference_ (dist_scale) through `model.inputs`."""
    cfg, trainer = model.config, _Trainer(model, train, pools, generator)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(cfg.seed)
        head = SegmentationHead(cfg).to(model.device)
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr)
    for step in range(cfg.steps):
        batch = trainer.batch(step)
        inputs = trainer.inputs(batch).to(model.device)
        target = torch.stack(batch.targets).to(model.device)
        weight = torch.tensor(batch.weights, device=model.device)
        loss = weighted_loss(per_sample_loss(head(inputs), target, cfg.focal_gamma), weight)
        value = optimizer_step(optimizer, loss, head.parameters())
        if on_step:
            on_step(value)
    return head.eval()


def fusion_reference(model, held: ViewSet) -> Reference:
    """`model`'s reference_ with the fusion statistics of normal views the head did not train on (own
    rows skipped): head logit and distance, mean and std over their valid cells."""
    with torch.no_grad():
        logits = [model.logits(f[None].float(), d[None], r[None])[0, 0]
                  for f, d, r in zip(held.features, held.dist, held.rows)]
    lc, dc = _valid_cells(logits, held.valid), _valid_cells(held.dist, held.valid)
    return Reference(model.reference_.dist_scale, float(lc.mean()), _std(lc), float(dc.mean()), _std(dc))


def calibration_scores(model, held: ViewSet) -> np.ndarray:
    """View scores (max of the smoothed map) of normal views the head did not train on, by `model` fitted."""
    scores = []
    with torch.no_grad():
        for f, s in zip(held.features, held.source):
            maps = model.maps_from_features(f[None].float(), s[None] if model.config.uses_bank else None)
            scores.append(float(model.smooth(maps[0]).max()))
    return np.asarray(scores, dtype=np.float64)


def threshold(scores: np.ndarray) -> float:
    """Mean + 3 std of the calibration scores, as PatchCore's. Under the tile policy an image's score
    is a max over several views, so a threshold chosen on validation images is preferable there when
    labels exist (validation.py)."""
    return float(scores.mean() + THRESHOLD_SIGMAS * scores.std()) if len(scores) > 1 else float("inf")


def _std(x: torch.Tensor) -> float:
    return max(float(x.std()) if len(x) > 1 else 1.0, 1e-6)
