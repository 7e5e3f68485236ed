"""Cached views for training the QARAD detector: frozen backbone features of every kind of view.

Backbone features of the normal images and of every kind of defect are computed once (and can be
reused across settings and seeds, as the ablation does). Everything follows the run's resolution
policy: views are cut as at test time, and cached one by one (under keep-aspect they differ in shape).

Real defect shots (`real_features`, data/real_defects.py) are a pool of their own: each shot's
whole views with its ground-truth mask, in the 8 flips and quarter turns of the image; they were
drawn on no normal training image (source -1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from ..data.io import read_image, read_mask
from ..data.real_defects import RealDefects
from ..data.resolution import ResolutionPolicy
from ..data.stream import Loaded, iter_loaded, map_views
from ..defects.baselines import perlin_texture
from ..defects.masks import foreground_mask
from ..quality.weighting import WeightingConfig, weights
from ..synthesis.jobs import MANIFEST, check_finished, sample_path
from .patchcore import patch_valid
from .head import cell_targets

FEATURE_DTYPE = torch.float16  # halves the cache; the head trains in float32
DIHEDRAL = 8  # real shots: every flip and quarter turn of the image


class Embedder(Protocol):
    """What caching views needs of a detector (a Segmenter): its resolution policy and its features."""
    policy: ResolutionPolicy

    def embed(self, views: torch.Tensor) -> torch.Tensor: ...


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


def normal_features(model: Embedder, paths: list[Path], batch_size: int = 8, max_views: int | None = None,
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


def _defect_views(model: Embedder, loaded: Iterator[Loaded], mask_views: Callable[[Loaded], torch.Tensor],
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


def synthetic_features(model: Embedder, synth_dir: Path, normal_paths: list[Path] | None = None,
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


def perlin_features(model: Embedder, paths: list[Path], n: int, seed: int = 0, batch_size: int = 8,
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


def real_features(model: Embedder, real: RealDefects, batch_size: int = 8, weight: float = 1.0,
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
