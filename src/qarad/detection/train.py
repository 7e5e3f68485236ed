"""Training the synthesis-trained detector: cache frozen features of views, build the bank, fit the head.

Backbone features of the normal images and of every kind of defect are computed once (and can
be reused across settings and seeds, as the ablation does); then the memory bank is built from
the normal views, every cached cell is searched against it, and only the head is trained.

Honest residuals: the bank holds coreset rows of *all* normal training images, each row tagged
with its source image. A training view (normal, or a defect drawn into a normal image) is searched
against the bank without the rows of its own source image, so its residual looks like that of a
test image, which never has its own rows in the bank. The head trains on 90% of the normal views;
the other 10% (also searched without their own rows) set the fusion statistics and the threshold.

Everything follows the run's resolution policy: views are cut as at test time. Views are cached
one by one (under keep-aspect they differ in shape) and the head trains on random crops of
TRAIN_CROP x TRAIN_CROP cells (smaller views: the smallest view's size), a defect view's crop
always holding some of its defect. The head is convolutional with a 5x5-cell receptive field, so a
crop is scored as the whole view would be away from the crop's border.
Test images can be cached too (`cache_images`) and scored by many heads with `score_cached`.

Real defect shots (`real_features`, data/real_defects.py) are a pool of their own: each shot's
whole views with its ground-truth mask, in the 8 flips and quarter turns of the image; they were
drawn on no normal training image (source -1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.io import read_image, read_mask
from ..data.real_defects import RealDefects
from ..data.resolution import Layout, ResolutionPolicy
from ..data.stream import Loaded, iter_loaded, map_views
from ..defects.baselines import perlin_texture
from ..defects.masks import foreground_mask
from ..quality.weighting import WeightingConfig, weighted_loss, weights
from ..synthesis.jobs import MANIFEST, check_finished, sample_path
from ..training import optimizer_step
from .coreset import CoresetSampler
from .patchcore import THRESHOLD_SIGMAS, patch_valid
from .segmenter import Reference, Segmenter, SegmenterConfig, SegmentationHead, cell_targets, per_sample_loss

FEATURE_DTYPE = torch.float16  # halves the cache; the head trains in float32
HOLDOUT_FRACTION = 0.1  # normal views kept aside for the fusion statistics and the threshold
MIN_HOLDOUT = 2  # a standard deviation needs at least two scores
CORESET_PROJECTION, CORESET_PARTITION = 128, 16384  # as PatchCoreConfig
SEARCH_BATCH = 16  # views searched against the bank at once
TRAIN_CROP = 16  # cells a side of the crops the head trains on: 4x its 5x5-cell receptive field, and a
# quarter of the cost of whole 256-px views (32 x 32 cells)
BLOB_COVER = (0.02, 0.2)  # feature-space negatives: share of a crop's cells the noise blob covers
NOISE_SCALE = (0.5, 1.5)  # ... times config.feature_noise times each channel's std
DIHEDRAL = 8  # real shots: every flip and quarter turn of the image


@dataclass
class ViewSet:
    """Cached views: per view its features, valid cells and source image; defects add targets, weights."""
    features: list[torch.Tensor]  # (C, h, w) FEATURE_DTYPE per view (C: the backbone's feature channels)
    valid: list[torch.Tensor]  # (h, w) bool: cells over real pixels (keep-aspect padding excluded)
    source: torch.Tensor  # (n,) int64: index of the normal training image the view shows or was drawn on; -1 none
    targets: list[torch.Tensor] | None = None  # (h, w) defect coverage per cell
    weights: torch.Tensor | None = None  # (n,) loss weight per view (QAW; 1 = unweighted)
    scores: np.ndarray | None = None  # (n,) QAW score of the sample each view came from (nan if unscored)
    dist: list[torch.Tensor] | None = None  # filled by the search: (h, w) distance to the nearest bank row
    rows: list[torch.Tensor] | None = None  # (h, w) int64 that row

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, keep: torch.Tensor) -> "ViewSet":
        pick = lambda xs: None if xs is None else [xs[i] for i in keep.tolist()]  # noqa: E731
        return ViewSet(pick(self.features), pick(self.valid), self.source[keep], pick(self.targets),
                       None if self.weights is None else self.weights[keep],
                       None if self.scores is None else self.scores[keep.numpy()], pick(self.dist), pick(self.rows))


def _views_of(items: Iterator[tuple[Loaded, torch.Tensor]], on_image=None):
    for item, emb in items:
        yield item, emb.to(FEATURE_DTYPE), patch_valid(item.layout.valid())
        if on_image:
            on_image()


def normal_features(model: Segmenter, paths: list[Path], batch_size: int = 8, max_views: int | None = None,
                    seed: int = 0, on_image: Callable[[], None] | None = None) -> ViewSet:
    """Every view of the normal images (source = index in `paths`); a reproducible subset past max_views."""
    feats, valid, source = [], [], []
    for item, emb, ok in _views_of(map_views(iter_loaded(paths, model.policy), model.embed, batch_size), on_image):
        feats += list(emb)
        valid += list(ok)
        source += [item.index] * len(emb)
    out = ViewSet(feats, valid, torch.tensor(source, dtype=torch.int64))
    if max_views is not None and len(out) > max_views:
        keep = torch.randperm(len(out), generator=torch.Generator().manual_seed(seed))[:max_views]
        out = out.subset(keep.sort().values)
    return out


def _mask_views(mask: np.ndarray, policy: ResolutionPolicy) -> torch.Tensor:
    """(H, W) bool -> (n_views, vh, vw) float coverage, cut exactly like the image's views."""
    layout = policy.layout(*mask.shape)
    as_image = np.repeat(mask.astype(np.float32)[..., None], 3, axis=2)
    return layout.views(as_image)[:, 0]


def _defect_views(model: Segmenter, loaded: Iterator[Loaded], mask_views: Callable[[Loaded], torch.Tensor],
                  sources: Callable[[Loaded], int], batch_size: int, on_image=None) -> tuple[ViewSet, list[int]]:
    """Views that show some of the defect, with cell targets; also the item index of each view."""
    feats, valid, targets, source, origin = [], [], [], [], []
    for item, emb, ok in _views_of(map_views(loaded, model.embed, batch_size), on_image):
        cover = cell_targets(mask_views(item) > 0.5)
        for i in torch.nonzero(cover.flatten(1).amax(1) > 0)[:, 0].tolist():  # views that show the defect
            feats.append(emb[i])
            valid.append(ok[i])
            targets.append(cover[i])
            source.append(sources(item))
            origin.append(item.index)
    return ViewSet(feats, valid, torch.tensor(source, dtype=torch.int64), targets), origin


def _source_index(paths: list[Path]) -> dict[str, int]:
    return {str(Path(p).resolve()): i for i, p in enumerate(paths)}


def synthetic_features(model: Segmenter, synth_dir: Path, normal_paths: list[Path] | None = None,
                       batch_size: int = 8, on_image: Callable[[], None] | None = None,
                       held_out: list[Path] = ()) -> ViewSet:
    """Views of a `qarad synth` folder that show a defect; a sample drawn on one of `normal_paths`
    gets that image as its source (its bank rows are skipped when it is searched). Samples drawn
    on one of `held_out` (the validation split's normals) are left out: they validate the run."""
    synth_dir = Path(synth_dir)
    entries = check_finished(synth_dir)
    if not entries:
        raise ValueError(f"{synth_dir / MANIFEST}: no synthetic samples (run `qarad synth` first)")
    if held_out:
        held = set(_source_index(held_out))
        entries = [e for e in entries if str(Path(e["source"]).resolve()) not in held]
        if not entries:
            raise ValueError(f"{synth_dir}: every synthetic sample is drawn on a held-out validation image; "
                             "synthesize on the other training images too, or lower --val-share")
    index = _source_index(normal_paths or [])
    paths = [sample_path(synth_dir, e, "image") for e in entries]
    out, origin = _defect_views(
        model, iter_loaded(paths, model.policy),
        lambda item: _mask_views(read_mask(sample_path(synth_dir, entries[item.index], "mask"), item.image.shape[:2]),
                                 model.policy),
        lambda item: index.get(str(Path(entries[item.index]["source"]).resolve()), -1), batch_size, on_image)
    if not len(out):
        raise ValueError(f"{synth_dir}: no synthetic sample has a non-empty mask")
    scores = [entries[i].get("score") for i in origin]
    out.scores = np.asarray([np.nan if s is None else float(s) for s in scores])
    return out


def perlin_features(model: Segmenter, paths: list[Path], n: int, seed: int = 0, batch_size: int = 8,
                    on_image: Callable[[], None] | None = None) -> ViewSet:
    """`n` DRAEM-style Perlin texture patches drawn on the normal images in turn (source = their index).

    They are drawn on the working image (what the backbone sees), not at source resolution: the
    same defects for the detector, at a fraction of the cost on large images."""
    masks: dict[int, np.ndarray] = {}
    at_work = replace(model.policy, scale=1.0)  # the working image is already scaled

    def loaded() -> Iterator[Loaded]:
        for i in range(n):
            j = i % len(paths)
            source = read_image(paths[j])
            work = model.policy.layout(*source.shape[:2]).to_work(source).permute(1, 2, 0).numpy()
            drawn = perlin_texture(work, np.random.default_rng([seed, i]), foreground=foreground_mask(work))
            masks[i] = drawn.mask
            layout = at_work.layout(*work.shape[:2])
            yield Loaded(i, Path(paths[j]), drawn.image, layout, layout.views(drawn.image))

    out, _ = _defect_views(model, loaded(), lambda item: _mask_views(masks.pop(item.index), at_work),
                           lambda item: item.index % len(paths), batch_size, on_image)
    out.weights = torch.ones(len(out))
    return out


def real_features(model: Segmenter, real: RealDefects, batch_size: int = 8, weight: float = 1.0,
                  on_image: Callable[[], None] | None = None) -> ViewSet:
    """The views of every real shot that show its defect, in the 8 flips and quarter turns of the
    image (on_image is called once per shot and turn), each with loss weight `weight`."""
    masks: dict[int, np.ndarray] = {}

    def loaded() -> Iterator[Loaded]:
        for i, shot in enumerate(real.defects):
            image = read_image(shot.image)
            mask = read_mask(shot.mask, image.shape[:2])
            for t in range(DIHEDRAL):
                k = i * DIHEDRAL + t
                turned, masks[k] = (np.ascontiguousarray(np.rot90(a[:, ::-1] if t >= 4 else a, t % 4))
                                    for a in (image, mask))
                layout = model.policy.layout(*turned.shape[:2])
                yield Loaded(k, Path(shot.image), turned, layout, layout.views(turned))

    out, _ = _defect_views(model, loaded(), lambda item: _mask_views(masks.pop(item.index), model.policy),
                           lambda item: -1, batch_size, on_image)
    if not len(out):
        raise ValueError("no real defect shot shows its defect in any view")
    out.weights = torch.full((len(out),), float(weight))
    return out


def sample_weights(scores: np.ndarray, config: WeightingConfig) -> torch.Tensor:
    if config.calibration != "none" and np.isnan(scores).any():
        raise ValueError("QAW weighting needs scores: run `qarad score SYNTH_DIR` first, or use --weighting none")
    return torch.as_tensor(weights(np.nan_to_num(scores), config), dtype=torch.float32)


def describe(synth: ViewSet) -> str:
    w = synth.weights
    return json.dumps({"synthetic_views": len(w), "weight_min": float(w.min()), "weight_mean": float(w.mean()),
                       "weight_max": float(w.max())})


# ---- bank and search -----------------------------------------------------------------------
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


def _valid_cells(xs: list[torch.Tensor], valid: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x[ok] for x, ok in zip(xs, valid)])


# ---- training ------------------------------------------------------------------------------
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

    def __init__(self, model: Segmenter, normal: ViewSet, pools: dict[str, ViewSet], generator: torch.Generator):
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


def fit_detector(config: SegmenterConfig, policy: ResolutionPolicy, normal: ViewSet, pools: dict[str, ViewSet],
                 on_step: Callable[[float], None] | None = None, model: Segmenter | None = None) -> Segmenter:
    """Bank, search, head and calibration on cached views. `pools`: defect views by kind
    ("synthetic": QAW-weighted ARAS samples, "perlin", "real"), each with targets and weights; feature-space
    negatives are made from the normal views as the loop runs."""
    model = model or Segmenter(config, policy)
    model.config = config
    pools = {k: v for k, v in pools.items() if k in config.negatives}
    _check_inputs(config, normal, pools)
    if config.uses_bank:
        fit_bank(model, normal, pools.values())
    return fit_head(model, normal, pools, on_step)


def fit_bank(model: Segmenter, normal: ViewSet, others=()) -> None:
    """The memory bank from the normal views, then every cell of `normal` and `others` searched in it."""
    build_bank(model, normal)
    for views in (normal, *others):
        search(model, views)


def fit_head(model: Segmenter, normal: ViewSet, pools: dict[str, ViewSet],
             on_step: Callable[[float], None] | None = None) -> Segmenter:
    """Head and calibration on views already searched in `model`'s bank (`fit_bank`; a bank may be
    shared by several heads, as the ablation does)."""
    config = model.config
    pools = {k: v for k, v in pools.items() if k in config.negatives}
    _check_inputs(config, normal, pools)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(normal), generator=generator)
    n_hold = max(MIN_HOLDOUT, round(HOLDOUT_FRACTION * len(normal))) if len(normal) >= 2 * MIN_HOLDOUT else 0
    held, train = normal.subset(order[:n_hold].sort().values), normal.subset(order[n_hold:].sort().values)
    if config.uses_bank:
        model.reference_ = Reference(dist_scale=max(float(_valid_cells(train.dist, train.valid).median()), 1e-6))
    _train_head(model, _Trainer(model, train, pools, generator), on_step)
    _calibrate(model, held if n_hold else train)
    return model


def _check_inputs(config: SegmenterConfig, normal: ViewSet, pools: dict[str, ViewSet]) -> None:
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


def _train_head(model: Segmenter, trainer: _Trainer, on_step) -> None:
    cfg = model.config
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
    model.head_ = head.eval()


def _calibrate(model: Segmenter, held: ViewSet) -> None:
    """Fusion statistics and threshold from normal views the head did not train on (own rows skipped).

    The threshold is mean + 3 std of their view scores, as PatchCore's. Under the tile policy an
    image's score is a max over several views, so a threshold chosen on validation images is
    preferable there when labels exist."""
    cfg = model.config
    with torch.no_grad():
        if cfg.fusion:
            logits = [model.logits(f[None].float(), d[None], r[None])[0, 0]
                      for f, d, r in zip(held.features, held.dist, held.rows)]
            lc, dc = _valid_cells(logits, held.valid), _valid_cells(held.dist, held.valid)
            model.reference_ = Reference(model.reference_.dist_scale, float(lc.mean()), _std(lc),
                                         float(dc.mean()), _std(dc))
        scores = []
        for f, s in zip(held.features, held.source):
            maps = model.maps_from_features(f[None].float(), s[None] if cfg.uses_bank else None)
            scores.append(float(model.smooth(maps[0]).max()))
    model.calibration_scores_ = np.asarray(scores, dtype=np.float64)
    s = model.calibration_scores_
    model.threshold_ = float(s.mean() + THRESHOLD_SIGMAS * s.std()) if len(s) > 1 else float("inf")


def _std(x: torch.Tensor) -> float:
    return max(float(x.std()) if len(x) > 1 else 1.0, 1e-6)


# ---- cached test images (benchmarks) --------------------------------------------------------
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
    search for every head that shares that bank (Segmenter.share_bank)."""
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
