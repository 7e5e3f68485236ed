"""The synthesis-trained detector (QARAD): a residual segmentation head standing on the memory bank.

Qian et al., "Quality-Aware Language-Conditioned Local Auto-Regressive Anomaly Synthesis and
Detection", arXiv 2508.03539: a detector learns from normal images (every pixel 0) and synthetic
anomalies (defect pixels 1), each synthetic sample's loss multiplied by its QAW weight
(DESIGN.md 4.6). Features are the PatchCore ones (stride 8 + 16, 3x3-aggregated: C = 152 channels
for EfficientNet-Lite0, 168 for Lite2; `SegmenterConfig.backbone`).

A head on frozen ImageNet features alone must learn "normal" from a few hundred views and lost
to PatchCore (BENCHMARKS.md). So, as RealNet (reconstruction residuals), PRN (residuals to normal
prototypes) and MemSeg (differences to a memory of normals) do, the head also reads a normal
reference: per stride-8 cell, the residual to its nearest memory-bank row and the nearest-neighbour
distance (PatchCore's own score). The map is then fused with that distance: both are z-scored on
held-out normal views and added, so the detector starts where PatchCore is and the head adds
corrections. `residual=False, fusion=False` is the previous head (features only, sigmoid map).

`Segmenter` follows the scikit-learn pattern and the `Detector` protocol of `inference.py`:
`fit` (on cached views, detection/views.py; the steps in head_training.py) sets the bank, `head_`,
the fusion statistics, `threshold_` and `calibration_scores_` and returns the Segmenter; `view_maps`
and `smooth` serve `score_images`, so resolution policies work unchanged. The network and its loss
are in head.py.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import checkpoint
from ..backbone import Backbone, PatchEmbedder
from ..backbone_config import LEGACY_BACKBONE
from ..data.resolution import ResolutionPolicy
from ..detector_config import NEGATIVE_SOURCES, SegmenterConfig  # noqa: F401 (re-exported: the head's config)
from . import head_training
from .anomaly_map import gaussian_blur
from .coreset import CoresetSampler
from .fusion import LEGACY_HEAD_WEIGHT, LEGACY_IMAGE_RULE, check_rule, check_weight, image_score
from .head import Reference, SegmentationHead, cell_scores, cells_to_map, fit_view, head_inputs
from .knn import NearestNeighbours, SearchConfig
from .views import ViewSet

CORESET_PROJECTION, CORESET_PARTITION = 128, 16384  # the memory bank's coreset, as PatchCoreConfig


# model.json (Segmenter.save writes it, Segmenter.load reads it): each key and "segmenter" setting added
# since the first saved detectors, with the value that reads an older file as it was fitted (not today's
# default); the one table of this format's legacy defaults.
LEGACY_KEYS = {"reference": {},  # before the residual detector: no fitted reference (PRE_RESIDUAL below)
               "head_weight": LEGACY_HEAD_WEIGHT, "image_rule": LEGACY_IMAGE_RULE,  # before the gate
               "foreground": None}  # before the scoring region: the whole image is scored
LEGACY_SETTINGS = {"backbone": LEGACY_BACKBONE}  # before the backbone setting: EfficientNet-Lite0
PRE_RESIDUAL = {"residual": False, "fusion": False}  # a file without "reference": features-only head, no bank


def _check_features(name: str, features: torch.Tensor, config: SegmenterConfig) -> None:
    if features.dim() != 4 or features.shape[1] != config.feature_channels:
        raise ValueError(f"{name} must be (N, {config.feature_channels}, h, w) PatchEmbedder features of "
                         f"{config.backbone}, got {tuple(features.shape)}")


class Segmenter:
    """Synthesis-trained detector with a scikit-learn-like API; see the module docstring.

    `fit` learns from cached views (`detection.train.train_qarad` caches them from images, as
    `qarad train` does); this class holds the fitted parts and scores views.
    """

    method = "qarad"

    def __init__(self, config: SegmenterConfig = SegmenterConfig(), policy: ResolutionPolicy = ResolutionPolicy(),
                 backbone: Backbone | None = None):
        self.config = config
        self.policy = policy
        self.backbone = backbone
        self.device = torch.device("cpu")
        self.reference_ = Reference()
        # the gate and the image rule (detection/fusion.py): fitted on the validation split by
        # validation.gate; a Segmenter fitted without one scores as every run before the gate did
        self.head_weight_ = LEGACY_HEAD_WEIGHT
        self.image_rule_ = LEGACY_IMAGE_RULE
        self.foreground_ = None  # a data.foreground.Foreground: score the part only (scoring_region.py)

    def _embedder(self) -> PatchEmbedder:
        # Built on first use: loading EfficientNet is not needed to fit on cached features.
        if getattr(self, "_patch_embedder", None) is None:
            wanted = self.config.backbone_config
            self._patch_embedder = PatchEmbedder(self.backbone or Backbone(wanted))
            if self._patch_embedder.backbone.config != wanted:
                raise ValueError(f"the backbone is {self._patch_embedder.backbone.config}; this segmenter "
                                 f"was configured for {wanted}")
            self._patch_embedder.to(self.device)
        return self._patch_embedder

    def to(self, device: str | torch.device) -> "Segmenter":
        """Move the backbone and the head ('auto' picks CUDA when present); the search stays on the CPU."""
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if getattr(self, "_patch_embedder", None) is not None:
            self._patch_embedder.to(self.device)
        if hasattr(self, "head_"):
            self.head_.to(self.device)
        return self

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """(n, 3, vh, vw) in [0, 1] -> (n, C, vh/8, vw/8) frozen features on the CPU, for caching."""
        with torch.no_grad():
            return self._embedder()(views.to(self.device)).cpu()

    # --- fitting -------------------------------------------------------------------------------
    def fit(self, normal: ViewSet, pools: dict[str, ViewSet], on_step: Callable[[float], None] | None = None,
            bank: "Segmenter | None" = None) -> "Segmenter":
        """Bank, head, fusion statistics and threshold on cached views; -> self, fitted.

        `pools`: defect views by kind, each with targets and weights (kinds the config's negatives do
        not name are left out); feature-space negatives are made from the normal views as the head
        trains. The head trains on most normal views; the others (HOLDOUT_FRACTION, head_training.py)
        set the fusion statistics and the threshold. `bank`: a Segmenter fitted before (or `fit_bank`)
        whose bank and search index this one uses instead of building its own, so that heads trained
        side by side share one bank (benchmarks/ablation.py); views not searched yet are searched in it.
        `on_step` gets each training step's loss."""
        cfg = self.config
        pools = {k: v for k, v in pools.items() if k in cfg.negatives}
        head_training.check_inputs(cfg, normal, pools)
        if cfg.uses_bank and bank is None:
            self.fit_bank(normal, pools.values())
        elif cfg.uses_bank:
            self.share_bank(bank)
            for views in (normal, *pools.values()):
                if views.dist is None:
                    self.search(views)
        generator = torch.Generator().manual_seed(cfg.seed)
        train, held = head_training.hold_out(normal, generator)
        self.reference_ = Reference(dist_scale=head_training.dist_scale(train)) if cfg.uses_bank else Reference()
        self.head_ = head_training.train_head(self, train, pools, generator, on_step)
        if cfg.fusion:
            self.reference_ = head_training.fusion_reference(self, held)
        self.calibration_scores_ = head_training.calibration_scores(self, held)
        self.threshold_ = head_training.threshold(self.calibration_scores_)
        return self

    def set_gate(self, head_weight: float, image_rule: str, foreground, calibration_scores: np.ndarray) -> "Segmenter":
        """The scoring choices the validation split made (detection/validation.py): the head's weight
        against the bank, the image-score rule, the scoring region (None: the whole image), and the
        held-out normal images' scores under them, which set the threshold; -> self."""
        self.head_weight_, self.image_rule_ = check_weight(head_weight), check_rule(image_rule)
        self.foreground_ = foreground
        self.calibration_scores_ = np.asarray(calibration_scores, dtype=np.float64)
        self.threshold_ = head_training.threshold(self.calibration_scores_)
        return self

    # --- the memory bank ----------------------------------------------------------------------
    def fit_bank(self, normal: ViewSet, others=()) -> "Segmenter":
        """The memory bank alone: coreset rows of the normal views' cells, each row tagged with its
        source image, then every cell of `normal` and of the view sets `others` searched in it
        (`search`); -> self, whose bank `fit(..., bank=self)` can share."""
        cfg = self.config
        sampler = CoresetSampler(cfg.coreset_ratio, CORESET_PROJECTION, CORESET_PARTITION, cfg.seed, cfg.memory_limit)
        for f, ok, s in zip(normal.features, normal.valid, normal.source.tolist()):
            cells = f.float().permute(1, 2, 0)[ok]
            sampler.add(cells, torch.full((len(cells),), s, dtype=torch.int32))
        self.set_bank(*sampler.result())
        for views in (normal, *others):
            self.search(views)
        return self

    def search(self, views: ViewSet) -> None:
        """Fill `views.dist` and `views.rows`: the nearest bank row of every cell of every view, without
        the rows of the view's own image. Honest residuals: a training view (normal, or a defect drawn
        into a normal image) then looks like a test image, which never has its own rows in the bank."""
        views.dist, views.rows = [], []
        for f, s in zip(views.features, views.source):  # one view at a time: keep-aspect views differ in shape
            d, r = self.nearest(f[None].float(), s[None])
            views.dist.append(d[0])
            views.rows.append(r[0])

    def set_bank(self, memory: torch.Tensor, source: torch.Tensor) -> None:
        self.memory_ = memory.float().contiguous()
        self.memory_source_ = source.to(torch.int64)
        self.index_ = NearestNeighbours(self.memory_, self.memory_source_,
                                        SearchConfig(self.config.search, self.config.nprobe, self.config.seed))

    def share_bank(self, other: "Segmenter") -> None:
        """Use `other`'s fitted bank and search index (heads trained side by side on one bank)."""
        if not hasattr(other, "index_"):
            raise ValueError("that Segmenter has no memory bank yet: fit it, or fit_bank, first")
        self.memory_, self.memory_source_, self.index_ = other.memory_, other.memory_source_, other.index_

    def nearest(self, features: torch.Tensor, exclude_source: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> distance (B, h, w) and bank row (B, h, w); `exclude_source` (B,) skips each
        view's own image (honest training residuals)."""
        b, c, h, w = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(-1, c)
        own = None if exclude_source is None else exclude_source.repeat_interleave(h * w)
        dist, rows = self.index_.search(flat, own, per_view=h * w)
        return dist.view(b, h, w), rows.view(b, h, w)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, h, w) bank rows -> (B, C, h, w) their features."""
        return self.memory_[rows].permute(0, 3, 1, 2)

    # --- scoring -----------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "head_"):
            raise RuntimeError("this Segmenter is not fitted yet: call fit or load a run")

    def inputs(self, features: torch.Tensor, dist: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
        """What the head reads for these features and their search results (training and scoring alike)."""
        nearest = self.gather(rows) if self.config.residual else None
        return head_inputs(features, nearest, dist, self.config.residual, self.reference_.dist_scale)

    def logits(self, features: torch.Tensor, dist: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
        return self.head_(self.inputs(features, dist, rows).to(self.device)).cpu()

    def cells_from_features(self, features: torch.Tensor, exclude_source: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) -> (B, h, w) anomaly score per stride-8 cell."""
        self._check_fitted()
        _check_features("features", features, self.config)
        features = features.float()
        dist, rows = self.nearest(features, exclude_source) if self.config.uses_bank else (None, None)
        return self.cells_from_search(features, dist, rows)

    def cells_from_search(self, features: torch.Tensor, dist: torch.Tensor | None, rows: torch.Tensor | None,
                          head_weight: float | None = None) -> torch.Tensor:
        """As cells_from_features, with the bank already searched (`nearest`): heads sharing one bank
        score cached test features without searching them again. `head_weight` (default the fitted
        head_weight_) lets the validation split try the gate's grid on one search."""
        self._check_fitted()
        weight = self.head_weight_ if head_weight is None else check_weight(head_weight)
        skip_head = self.config.fusion and weight == 0.0  # the bank alone: the head is not needed
        logits = None if skip_head else self.logits(features.float(), dist, rows)
        return cell_scores(logits, dist, self.config.fusion, self.reference_, weight)

    def maps_from_features(self, features: torch.Tensor, exclude_source: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) -> (B, 8h, 8w) anomaly map, bilinear from the stride-8 grid."""
        return cells_to_map(self.cells_from_features(features, exclude_source))

    def view_maps(self, views: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self.view_maps_from_features(self._embedder()(views.to(self.device)).cpu(), tuple(views.shape[-2:]))

    def view_maps_from_features(self, features: torch.Tensor, view_hw: tuple[int, int]) -> torch.Tensor:
        """`embed` output of views of size view_hw (float16 caches too) -> (n, vh, vw) on the CPU, as
        `view_maps` gives for those views: scoring cached features cannot drift from scoring images."""
        return fit_view(self.maps_from_features(features.float()), view_hw)

    def view_maps_from_search(self, features: torch.Tensor, dist: torch.Tensor | None, rows: torch.Tensor | None,
                              view_hw: tuple[int, int], head_weight: float | None = None) -> torch.Tensor:
        """view_maps_from_features with the bank already searched (see cells_from_search)."""
        return fit_view(cells_to_map(self.cells_from_search(features, dist, rows, head_weight)), view_hw)

    def smooth(self, work_map: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(work_map, self.config.blur_sigma)

    def restrict(self, work_map: torch.Tensor, image: np.ndarray, layout) -> torch.Tensor:
        """The smoothed map of `image` restricted to its part, when the gate chose to (scoring_region.py)."""
        if self.foreground_ is None:
            return work_map
        from .scoring_region import restrict, work_region

        return restrict(work_map, work_region(self.foreground_, image, layout))

    def image_score(self, work_map: torch.Tensor) -> float:
        """The image score of a smoothed map over the working image, by the fitted image_rule_."""
        return float(image_score(work_map, self.image_rule_))

    # --- persistence ---------------------------------------------------------------------------
    def save(self, stem: str | Path) -> None:
        self._check_fitted()
        from . import scoring_region

        tensors = {f"head.{k}": v for k, v in self.head_.state_dict().items()}
        if self.config.uses_bank:
            tensors.update(memory=self.memory_.cpu(), memory_source=self.memory_source_.cpu())
        tensors.update(scoring_region.tensors(self.foreground_))
        checkpoint.save(stem, tensors, {
            "method": self.method, "segmenter": asdict(self.config), "policy": self.policy.to_dict(),
            "reference": asdict(self.reference_), "threshold": checkpoint.threshold_json(self.threshold_),
            "calibration_scores": self.calibration_scores_.tolist(), "head_weight": self.head_weight_,
            "image_rule": self.image_rule_, "foreground": scoring_region.to_config(self.foreground_)})

    @classmethod
    def load(cls, stem: str | Path, backbone: Backbone | None = None) -> "Segmenter":
        source = Path(stem).with_suffix(".json")
        cfg = checkpoint.load_config(stem)
        known = {"method", "segmenter", "policy", "threshold", "calibration_scores"}
        optional = set(LEGACY_KEYS)
        if not known <= set(cfg) <= known | optional or cfg["method"] != cls.method:
            raise checkpoint.CheckpointError(f"{source}: not a QARAD segmenter config (keys {sorted(cfg)})")
        threshold = checkpoint.read_threshold(cfg["threshold"], source)
        scores = checkpoint.finite_numbers(cfg["calibration_scores"], "calibration_scores", source)
        settings = cfg["segmenter"]
        if isinstance(settings, dict):  # a setting it was saved without: as fitted then
            settings = {**LEGACY_SETTINGS, **(PRE_RESIDUAL if "reference" not in cfg else {}), **settings}
        cfg = {**LEGACY_KEYS, **cfg}
        model = cls(checkpoint.build_config(SegmenterConfig, settings, source),
                    checkpoint.build_config(ResolutionPolicy, cfg["policy"], source), backbone)
        model.reference_ = checkpoint.build_config(Reference, cfg["reference"], source)
        for key in ("dist_scale", "logit_std", "dist_std"):  # divisors: 0 would make every map inf or NaN
            if getattr(model.reference_, key) <= 0:
                raise checkpoint.CheckpointError(f"{source}: reference {key} must be positive, "
                                                 f"got {getattr(model.reference_, key)}")
        head = SegmentationHead(model.config)
        rest = checkpoint.load_module(stem, head, prefix="head.")
        from . import scoring_region

        region = cfg["foreground"]
        extra = {scoring_region.LAYOUT_TENSOR} if isinstance(region, dict) and region.get("has_layout") else set()
        bank = {"memory", "memory_source"} if model.config.uses_bank else set()
        if set(rest) != bank | extra:
            raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.safetensors')}: expected tensors "
                                             f"{sorted(bank)} besides the head, found {sorted(rest)[:5]}")
        if bank:
            memory, rows = rest["memory"], rest["memory_source"]
            if memory.dim() != 2 or memory.shape[1] != model.config.feature_channels or rows.shape != (len(memory),):
                raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.safetensors')}: memory bank shapes "
                                                 f"{tuple(memory.shape)} / {tuple(rows.shape)} do not fit")
            if len(memory) == 0:  # every search would fail, or find nothing
                raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.safetensors')}: the memory bank is empty")
            model.set_bank(memory, rows)
        model.head_ = head.eval()
        model.threshold_ = threshold
        model.calibration_scores_ = np.asarray(scores, dtype=np.float64)
        try:
            model.head_weight_ = check_weight(cfg["head_weight"])
            model.image_rule_ = check_rule(str(cfg["image_rule"]))
            model.foreground_ = scoring_region.from_config(region, rest, source)
        except (TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"{source}: {exc}") from None
        return model

