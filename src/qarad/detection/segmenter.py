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
`fit` sets the bank, `head_`, the fusion statistics, `threshold_` and `calibration_scores_`;
`view_maps` and `smooth` serve `score_images`, so resolution policies work unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint
from ..backbone import PATCH_STRIDE, Backbone, PatchEmbedder
from ..backbone_config import LEGACY_BACKBONE
from ..data.resolution import ResolutionPolicy
from ..detector_config import NEGATIVE_SOURCES, SegmenterConfig  # noqa: F401 (re-exported: the head's config)
from .anomaly_map import gaussian_blur, upsample
from .fusion import LEGACY_HEAD_WEIGHT, LEGACY_IMAGE_RULE, check_rule, check_weight, fuse, image_score
from .knn import NearestNeighbours, SearchConfig

CONV_LAYERS = 2  # 3x3 layers after the adaptor: receptive field of 5x5 cells = 40 px on top of the taps
PRIOR_PROBABILITY = 0.01  # initial defect probability (focal-loss bias init, Lin et al. 2017)


# Models saved before the residual detector: their head reads features only and has no bank.
LEGACY_DEFAULTS = {"residual": False, "fusion": False}


def cell_targets(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool defect mask -> (B, H/8, W/8) fraction of each stride-8 cell it covers."""
    if mask.shape[-1] % PATCH_STRIDE or mask.shape[-2] % PATCH_STRIDE:
        raise ValueError(f"mask size must be a multiple of {PATCH_STRIDE}, got {tuple(mask.shape[-2:])}")
    return F.avg_pool2d(mask.float()[:, None], PATCH_STRIDE)[:, 0]


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    # BatchNorm rather than GroupNorm: at inference it is a fixed per-channel affine map, so a
    # pixel's score depends only on its receptive field, never on the rest of the view; tiles then
    # stitch consistently and a defect cannot change the scores of distant normal pixels.
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SegmentationHead(nn.Module):
    """(B, C, h, w) head inputs -> (B, 1, h, w) defect logits at stride 8."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig(), in_channels: int | None = None):
        super().__init__()
        self.adaptor = _conv_bn_relu(in_channels or config.in_channels, config.hidden, 1)
        self.body = nn.Sequential(*[_conv_bn_relu(config.hidden, config.hidden, 3) for _ in range(CONV_LAYERS)])
        self.out = nn.Conv2d(config.hidden, 1, 1)
        # Start by predicting "normal" everywhere: defects cover a few % of pixels, and a 0.5 start
        # makes the first focal-loss steps dominated by the easy normal pixels.
        nn.init.constant_(self.out.bias, math.log(PRIOR_PROBABILITY / (1 - PRIOR_PROBABILITY)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.adaptor(inputs)))


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """(B, 1, h, w) logits, (B, h, w) soft targets in [0, 1] -> (B,) focal loss per sample.

    Focal loss in its soft-target form, |t - p|^gamma * BCE(t, p) (gamma 0 = BCE), since cell
    targets are coverage fractions. Per sample it is mean over normal cells + mean over defect
    cells (t > 0): a defect of three cells counts as much as the background, so small defects are
    learned, and an all-normal sample has only the first term.
    """
    t = target.to(logits.dtype)[:, None]  # (B, 1, h, w)
    p = torch.sigmoid(logits)
    focal = (t - p).abs().pow(gamma) * F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    defect = (t > 0).to(logits.dtype)
    normal = 1.0 - defect

    def masked_mean(weight: torch.Tensor) -> torch.Tensor:
        return (focal * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)

    return masked_mean(normal) + masked_mean(defect)


@dataclass(frozen=True)
class Reference:
    """What the head and the fusion need besides the features; fitted on normal views only."""
    dist_scale: float = 1.0  # median nearest-neighbour distance of normal training cells
    logit_mean: float = 0.0  # held-out normal cells: head logit and distance statistics (fusion)
    logit_std: float = 1.0
    dist_mean: float = 0.0
    dist_std: float = 1.0


def head_inputs(features: torch.Tensor, nearest: torch.Tensor | None, dist: torch.Tensor | None,
                residual: bool, dist_scale: float) -> torch.Tensor:
    """(B, C, h, w) features, their nearest bank rows (B, C, h, w) and distances (B, h, w)."""
    if not residual:
        return features
    return torch.cat([features, features - nearest, (dist / dist_scale)[:, None]], 1)


def cell_scores(logit: torch.Tensor | None, dist: torch.Tensor | None, fusion: bool, ref: Reference,
                head_weight: float = LEGACY_HEAD_WEIGHT) -> torch.Tensor:
    """(B, 1, h, w) logits (+ (B, h, w) distances) -> (B, h, w) anomaly score per cell.

    Fusion weighs the two z-scores by `head_weight` (detection/fusion.py; 0.5: their sum, as every
    run before the gate; a max of them measured lower on magnetic tile: image AUROC 0.906 vs 0.925,
    AUPRO 0.736 vs 0.769). `logit` may be None under fusion with head_weight 0 (the bank alone)."""
    if not fusion:
        return torch.sigmoid(logit)[:, 0]
    z_logit = None if logit is None else (logit[:, 0] - ref.logit_mean) / ref.logit_std
    return fuse(z_logit, (dist - ref.dist_mean) / ref.dist_std, head_weight)


def cells_to_map(cells: torch.Tensor) -> torch.Tensor:
    """(B, h, w) cell scores -> (B, 8h, 8w) anomaly map, bilinear from the stride-8 grid."""
    h, w = cells.shape[-2:]
    return upsample(cells, (h * PATCH_STRIDE, w * PATCH_STRIDE))


def fit_view(maps: torch.Tensor, view_hw: tuple[int, int]) -> torch.Tensor:
    """(n, 8h, 8w) maps resized to views of view_hw (a view side not a multiple of 8), on the CPU."""
    if tuple(maps.shape[-2:]) != tuple(view_hw):
        maps = upsample(maps, tuple(view_hw))
    return maps.cpu()


def _check_features(name: str, features: torch.Tensor, config: SegmenterConfig) -> None:
    if features.dim() != 4 or features.shape[1] != config.feature_channels:
        raise ValueError(f"{name} must be (N, {config.feature_channels}, h, w) PatchEmbedder features of "
                         f"{config.backbone}, got {tuple(features.shape)}")


class Segmenter:
    """Synthesis-trained detector with a scikit-learn-like API; see the module docstring.

    Fitting happens in `detection.train` (`fit_detector`, `train_qarad`), on cached features; this class holds
    the fitted parts and scores views.
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

    # --- the memory bank ----------------------------------------------------------------------
    def set_bank(self, memory: torch.Tensor, source: torch.Tensor) -> None:
        self.memory_ = memory.float().contiguous()
        self.memory_source_ = source.to(torch.int64)
        self.index_ = NearestNeighbours(self.memory_, self.memory_source_,
                                        SearchConfig(self.config.search, self.config.nprobe, self.config.seed))

    def share_bank(self, other: "Segmenter") -> None:
        """Use `other`'s fitted bank and search index (heads trained side by side on one bank)."""
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
            raise RuntimeError("this Segmenter is not fitted yet: call detection.train.fit_detector or load a run")

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
        optional = {"reference", "head_weight", "image_rule", "foreground"}  # since the residual head / the gate
        if not known <= set(cfg) <= known | optional or cfg["method"] != cls.method:
            raise checkpoint.CheckpointError(f"{source}: not a QARAD segmenter config (keys {sorted(cfg)})")
        threshold = checkpoint.read_threshold(cfg["threshold"], source)
        scores = checkpoint.finite_numbers(cfg["calibration_scores"], "calibration_scores", source)
        settings = cfg["segmenter"]
        if isinstance(settings, dict):  # saved without a backbone setting: Lite0, whatever the default is now
            settings = {"backbone": LEGACY_BACKBONE, **(LEGACY_DEFAULTS if "reference" not in cfg else {}), **settings}
        model = cls(checkpoint.build_config(SegmenterConfig, settings, source),
                    checkpoint.build_config(ResolutionPolicy, cfg["policy"], source), backbone)
        model.reference_ = checkpoint.build_config(Reference, cfg.get("reference", {}), source)
        for key in ("dist_scale", "logit_std", "dist_std"):  # divisors: 0 would make every map inf or NaN
            if getattr(model.reference_, key) <= 0:
                raise checkpoint.CheckpointError(f"{source}: reference {key} must be positive, "
                                                 f"got {getattr(model.reference_, key)}")
        head = SegmentationHead(model.config)
        rest = checkpoint.load_module(stem, head, prefix="head.")
        from . import scoring_region

        region = cfg.get("foreground")
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
        try:  # saved before the gate: the sum of the z-scores and the maximum, as then
            model.head_weight_ = check_weight(cfg.get("head_weight", LEGACY_HEAD_WEIGHT))
            model.image_rule_ = check_rule(str(cfg.get("image_rule", LEGACY_IMAGE_RULE)))
            model.foreground_ = scoring_region.from_config(region, rest, source)
        except (TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"{source}: {exc}") from None
        return model

