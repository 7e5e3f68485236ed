"""PatchCore baseline (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

No synthesis: a memory bank of locally aggregated stride-8 + stride-16 backbone patch features
from normal images, reduced by a greedy coreset; a patch's anomaly score is the distance to its
nearest neighbour in the bank. The map is upsampled, stitched per the resolution policy,
smoothed, and the image score is its maximum.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from .. import checkpoint
from ..backbone import PATCH_STRIDE, Backbone, PatchEmbedder
from ..backbone_config import LEGACY_BACKBONE
from ..data.resolution import ResolutionPolicy
from ..data.stream import iter_loaded, map_views
from ..detector_config import PatchCoreConfig  # noqa: F401 (re-exported: the bank's config)
from .anomaly_map import gaussian_blur, upsample
from .coreset import CoresetSampler
from .knn import NearestNeighbours, SearchConfig

THRESHOLD_SIGMAS = 3.0  # decision threshold = mean + 3 std of held-out normal image scores
# model.json (PatchCore.save writes it, PatchCore.load reads it): each "patchcore" setting added since the
# first saved models, with the value that reads an older file as it was fitted (the format's one table)
LEGACY_SETTINGS = {"backbone": LEGACY_BACKBONE}  # before the backbone setting: EfficientNet-Lite0


def patch_valid(valid: torch.Tensor) -> torch.Tensor:
    """(n, vh, vw) pixel validity -> (n, vh/8, vw/8): a patch counts if its centre pixel is real."""
    c = PATCH_STRIDE // 2
    return valid[:, c::PATCH_STRIDE, c::PATCH_STRIDE]


class PatchCore:
    """Memory-bank detector with a scikit-learn-like API: `fit(paths)` then `score_views`/inference."""

    method = "patchcore"

    def __init__(self, config: PatchCoreConfig = PatchCoreConfig(), policy: ResolutionPolicy = ResolutionPolicy(),
                 backbone: Backbone | None = None):
        self.config = config
        self.policy = policy
        wanted = config.backbone_config
        if backbone is not None and backbone.config != wanted:
            raise ValueError(f"the backbone is {backbone.config}; this PatchCore was configured for {wanted}")
        self.backbone = backbone  # None: built on first use (`embedder`), as Segmenter does
        self._patch_embedder: PatchEmbedder | None = None
        self.device = torch.device("cpu")

    @property
    def embedder(self) -> PatchEmbedder:
        """The backbone's patch features, on this detector's device; loaded on first use."""
        if self._patch_embedder is None:
            self._patch_embedder = PatchEmbedder(self.backbone or Backbone(self.config.backbone_config))
            self._patch_embedder.to(self.device)
        return self._patch_embedder

    def to(self, device: str | torch.device) -> "PatchCore":
        """Move the backbone and the memory bank ('auto' picks CUDA when present)."""
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self._patch_embedder is not None:
            self._patch_embedder.to(self.device)
        if hasattr(self, "memory_"):
            self._set_memory(self.memory_, self.memory_source_)
        return self

    def _set_memory(self, memory: torch.Tensor, source: torch.Tensor) -> None:
        self.memory_ = memory.float().to(self.device)
        self.memory_source_ = source.to(self.device)
        self.index_ = NearestNeighbours(self.memory_, self.memory_source_,
                                        SearchConfig(self.config.search, self.config.nprobe, self.config.seed,
                                                     self.config.refine))

    # --- fitting -----------------------------------------------------------------------------
    def fit(self, paths: list[Path], on_image: Callable[[], None] | None = None) -> "PatchCore":
        cfg = self.config
        if not paths:
            raise ValueError("PatchCore.fit needs at least one normal image")
        sampler = CoresetSampler(cfg.coreset_ratio, cfg.projection_dim, cfg.coreset_partition, cfg.seed,
                                 cfg.memory_limit)
        with torch.inference_mode():
            for item, emb in map_views(iter_loaded(paths, self.policy, keep_image=False), self._embed, cfg.batch_size):
                keep = patch_valid(item.layout.valid())  # (n, h, w)
                feats = emb.permute(0, 2, 3, 1)[keep]  # (patches, C), on CPU
                sampler.add(feats, torch.full((len(feats),), item.index, dtype=torch.int32))
                if on_image:
                    on_image()
            self._set_memory(*sampler.result())
            self.calibration_scores_ = self._leave_one_out_scores(paths)
        s = self.calibration_scores_
        self.threshold_ = float(s.mean() + THRESHOLD_SIGMAS * s.std()) if len(s) > 1 else float("inf")
        return self

    def _leave_one_out_scores(self, paths: list[Path]) -> np.ndarray:
        """Image scores of training images against the bank without their own patches."""
        n = min(self.config.calibration_images, len(paths))
        if n == 0 or len(paths) < 2:
            return np.zeros(0)
        picks = np.unique(np.linspace(0, len(paths) - 1, n).round().astype(int))
        scores = []
        for item, emb in map_views(iter_loaded([paths[i] for i in picks], self.policy, keep_image=False), self._embed,
                                   self.config.batch_size):
            source = int(picks[item.index])
            maps = self._maps_from_embedding(emb, exclude_source=source)
            scores.append(float(self.smooth(item.layout.stitch(maps.cpu())).max()))
        return np.asarray(scores)

    # --- scoring -----------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "memory_"):
            raise RuntimeError("this PatchCore is not fitted yet: call fit() or load a run")

    def _embed(self, views: torch.Tensor) -> torch.Tensor:
        return self.embedder(views.to(self.device)).cpu()

    def _maps_from_embedding(self, emb: torch.Tensor, exclude_source: int | None = None) -> torch.Tensor:
        """(B, C, h, w) -> (B, 8h, 8w) on the CPU; `exclude_source` skips the bank rows of that image."""
        b, c, h, w = emb.shape
        flat = emb.permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, C)
        own = None if exclude_source is None else torch.full((len(flat),), exclude_source, dtype=torch.int64)
        dist = self.index_.search(flat, own, per_view=h * w)[0].view(b, h, w)
        return upsample(dist, (h * PATCH_STRIDE, w * PATCH_STRIDE))

    def view_maps(self, views: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self._maps_from_embedding(self.embedder(views.to(self.device)))

    def smooth(self, work_map: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(work_map, self.config.blur_sigma)

    # --- persistence ---------------------------------------------------------------------------
    def save(self, stem: str | Path) -> None:
        self._check_fitted()
        checkpoint.save(stem, {"memory": self.memory_.cpu(), "memory_source": self.memory_source_.cpu()}, {
            "method": self.method, "patchcore": asdict(self.config), "policy": self.policy.to_dict(),
            "threshold": checkpoint.threshold_json(self.threshold_),
            "calibration_scores": self.calibration_scores_.tolist()})

    @classmethod
    def load(cls, stem: str | Path) -> "PatchCore":
        cfg = checkpoint.load_config(stem)
        known = {"method", "patchcore", "policy", "threshold", "calibration_scores"}
        if set(cfg) != known or cfg["method"] != cls.method:
            raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.json')}: not a PatchCore config "
                                             f"(keys {sorted(cfg)})")
        source = Path(stem).with_suffix(".json")
        settings = cfg["patchcore"]
        if isinstance(settings, dict):  # a setting it was saved without: as fitted then (not today's default)
            settings = {**LEGACY_SETTINGS, **settings}
        model = cls(checkpoint.build_config(PatchCoreConfig, settings, source),
                    checkpoint.build_config(ResolutionPolicy, cfg["policy"], source))
        threshold = checkpoint.read_threshold(cfg["threshold"], source)
        scores = checkpoint.finite_numbers(cfg["calibration_scores"], "calibration_scores", source)
        tensors = checkpoint.load_tensors(stem, {"memory": (None, model.config.backbone_config.feature_channels),
                                               "memory_source": (None,)})
        if len(tensors["memory"]) != len(tensors["memory_source"]):
            raise checkpoint.CheckpointError(f"{stem}: memory and memory_source lengths differ")
        if len(tensors["memory"]) == 0:  # every search would fail, or find nothing
            raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.safetensors')}: the memory bank is empty")
        model._set_memory(tensors["memory"], tensors["memory_source"])
        model.threshold_ = threshold
        model.calibration_scores_ = np.asarray(scores, dtype=np.float64)
        return model
