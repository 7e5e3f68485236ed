"""The synthesis-trained detector (QARAD): a segmentation head on frozen backbone features.

Qian et al., "Quality-Aware Language-Conditioned Local Auto-Regressive Anomaly Synthesis and
Detection", arXiv 2508.03539: a RealNet/DRAEM-style detector learns from normal images (every
pixel 0) and synthetic anomalies (defect pixels 1), each synthetic sample's loss multiplied by
its QAW weight (DESIGN.md 4.6). Features are the PatchCore ones (stride 8 + 16, 3x3-aggregated,
152 ch); only the adaptor and head are trained, on features cached once by the caller.

`Segmenter` follows the scikit-learn pattern and the `Detector` protocol of `inference.py`:
`fit` sets `head_`, `threshold_` and `calibration_scores_`; `view_maps` and `smooth` serve
`score_images`, so resolution policies (resize, keep-aspect, tile) work unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint
from ..backbone import TAP_CHANNELS, Backbone, BackboneConfig
from ..data.resolution import ResolutionPolicy
from ..quality.weighting import weighted_loss
from ..training import optimizer_step
from .anomaly_map import gaussian_blur, upsample
from .patchcore import PATCH_STRIDE, THRESHOLD_SIGMAS, PatchEmbedder

FEATURE_CHANNELS = TAP_CHANNELS[8] + TAP_CHANNELS[16]  # what PatchEmbedder gives for strides (8, 16)
CONV_LAYERS = 2  # 3x3 layers after the adaptor: receptive field of 5x5 cells = 40 px on top of the taps
PRIOR_PROBABILITY = 0.01  # initial defect probability (focal-loss bias init, Lin et al. 2017)
SYNTH_FRACTION = 0.5  # share of each batch that is synthetic
HOLDOUT_FRACTION = 0.1  # normal features kept aside to set the threshold
MIN_HOLDOUT = 2  # a standard deviation needs at least two scores


@dataclass(frozen=True)
class SegmenterConfig:
    hidden: int = 64  # 3x3 convs dominate the cost: 128 channels make every step ~3.5x slower
    focal_gamma: float = 2.0  # 0 gives plain BCE
    lr: float = 1e-3
    steps: int = 1500
    batch_size: int = 16
    blur_sigma: float = 4.0
    seed: int = 0


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
    """(B, 152, h, w) frozen features -> (B, 1, h, w) defect logits at stride 8."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig(), in_channels: int = FEATURE_CHANNELS):
        super().__init__()
        self.adaptor = _conv_bn_relu(in_channels, config.hidden, 1)  # re-targets ImageNet features
        self.body = nn.Sequential(*[_conv_bn_relu(config.hidden, config.hidden, 3) for _ in range(CONV_LAYERS)])
        self.out = nn.Conv2d(config.hidden, 1, 1)
        # Start by predicting "normal" everywhere: defects cover a few % of pixels, and a 0.5 start
        # makes the first focal-loss steps dominated by the easy normal pixels.
        nn.init.constant_(self.out.bias, math.log(PRIOR_PROBABILITY / (1 - PRIOR_PROBABILITY)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.adaptor(features)))


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


def _check_features(name: str, features: torch.Tensor) -> None:
    if features.dim() != 4 or features.shape[1] != FEATURE_CHANNELS:
        raise ValueError(f"{name} must be (N, {FEATURE_CHANNELS}, h, w) PatchEmbedder features, "
                         f"got {tuple(features.shape)}")


class Segmenter:
    """Synthesis-trained detector with a scikit-learn-like API; see the module docstring."""

    method = "qarad"

    def __init__(self, config: SegmenterConfig = SegmenterConfig(), policy: ResolutionPolicy = ResolutionPolicy(),
                 backbone: Backbone | None = None):
        self.config = config
        self.policy = policy
        self.backbone = backbone
        self.device = torch.device("cpu")

    def _embedder(self) -> PatchEmbedder:
        # Built on first use: loading EfficientNet is not needed to fit on cached features.
        if getattr(self, "_patch_embedder", None) is None:
            self._patch_embedder = PatchEmbedder(self.backbone or Backbone(BackboneConfig(strides=(8, 16))))
            if self._patch_embedder.channels != FEATURE_CHANNELS:
                raise ValueError(f"the backbone gives {self._patch_embedder.channels} channels; the "
                                 f"segmenter needs strides (8, 16) = {FEATURE_CHANNELS} channels")
            self._patch_embedder.to(self.device)
        return self._patch_embedder

    def to(self, device: str | torch.device) -> "Segmenter":
        """Move the backbone and the head ('auto' picks CUDA when present)."""
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if getattr(self, "_patch_embedder", None) is not None:
            self._patch_embedder.to(self.device)
        if hasattr(self, "head_"):
            self.head_.to(self.device)
        return self

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """(n, 3, vh, vw) in [0, 1] -> (n, 152, vh/8, vw/8) frozen features on the CPU, for caching."""
        with torch.no_grad():
            return self._embedder()(views.to(self.device)).cpu()

    # --- fitting -----------------------------------------------------------------------------
    def fit(self, normal_features: torch.Tensor, synth_features: torch.Tensor, synth_targets: torch.Tensor,
            synth_weights: torch.Tensor, on_step: Callable[[float], None] | None = None) -> "Segmenter":
        """Train on cached features: normal (N, 152, h, w); synthetic (M, 152, h, w) with cell
        targets (M, h, w) from `cell_targets` and QAW weights (M,) (all ones for no weighting)."""
        cfg = self.config
        _check_features("normal_features", normal_features)
        _check_features("synth_features", synth_features)
        n, m = len(normal_features), len(synth_features)
        if n == 0 or m == 0:
            raise ValueError("Segmenter.fit needs at least one normal and one synthetic sample")
        size = normal_features.shape[-2:]
        if synth_features.shape[-2:] != size or synth_targets.shape != (m, *size) or synth_weights.shape != (m,):
            raise ValueError(f"shapes do not fit: normal {tuple(normal_features.shape)}, synthetic "
                             f"{tuple(synth_features.shape)}, targets {tuple(synth_targets.shape)}, "
                             f"weights {tuple(synth_weights.shape)}")
        if not torch.isfinite(synth_weights).all() or (synth_weights < 0).any():
            raise ValueError("synthetic sample weights must be finite and non-negative")

        generator = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(n, generator=generator)
        n_hold = max(MIN_HOLDOUT, round(HOLDOUT_FRACTION * n)) if n >= 2 * MIN_HOLDOUT else 0
        held, train = order[:n_hold], order[n_hold:]
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
            torch.manual_seed(cfg.seed)
            head = SegmentationHead(cfg).to(self.device)
        head.train()
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr)
        n_synth = max(1, round(SYNTH_FRACTION * cfg.batch_size))
        n_normal = max(1, cfg.batch_size - n_synth)
        zeros, ones = torch.zeros(n_normal, *size), torch.ones(n_normal)
        for _ in range(cfg.steps):
            i_n = train[torch.randint(len(train), (n_normal,), generator=generator)]
            i_s = torch.randint(m, (n_synth,), generator=generator)
            features = torch.cat([normal_features[i_n], synth_features[i_s]]).float().to(self.device)
            target = torch.cat([zeros, synth_targets[i_s].float()]).to(self.device)
            weight = torch.cat([ones, synth_weights[i_s].float()]).to(self.device)  # normal samples weigh 1
            loss = weighted_loss(per_sample_loss(head(features), target, cfg.focal_gamma), weight)
            value = optimizer_step(optimizer, loss, head.parameters())
            if on_step:
                on_step(value)
        self.head_ = head.eval()

        # Threshold from held-out normal views (mean + 3 std of their scores, as PatchCore). These
        # are view scores: under the tile policy an image's score is a max over several views, so
        # a threshold chosen on validation images is preferable there when labels exist.
        scores = [float(s) for s in self._view_scores(normal_features[held])] if n_hold else []
        self.calibration_scores_ = np.asarray(scores, dtype=np.float64)
        s = self.calibration_scores_
        self.threshold_ = float(s.mean() + THRESHOLD_SIGMAS * s.std()) if len(s) > 1 else float("inf")
        return self

    def _view_scores(self, features: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for s in range(0, len(features), self.config.batch_size):
                maps = self.maps_from_features(features[s:s + self.config.batch_size].float())
                out.append(self.smooth(maps.cpu()).flatten(1).max(1).values)
        return torch.cat(out)

    # --- scoring -----------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "head_"):
            raise RuntimeError("this Segmenter is not fitted yet: call fit() or load a run")

    def maps_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 152, h, w) -> (B, 8h, 8w) defect probability, bilinear from the stride-8 grid."""
        self._check_fitted()
        _check_features("features", features)
        h, w = features.shape[-2:]
        prob = torch.sigmoid(self.head_(features.to(self.device)))[:, 0]  # (B, h, w)
        return upsample(prob, (h * PATCH_STRIDE, w * PATCH_STRIDE))

    def view_maps(self, views: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self.view_maps_from_features(self._embedder()(views.to(self.device)), tuple(views.shape[-2:]))

    def view_maps_from_features(self, features: torch.Tensor, view_hw: tuple[int, int]) -> torch.Tensor:
        """`embed` output of views of size view_hw (float16 caches too) -> (n, vh, vw) on the CPU, as
        `view_maps` gives for those views: scoring cached features cannot drift from scoring images."""
        maps = self.maps_from_features(features.float())
        if tuple(maps.shape[-2:]) != tuple(view_hw):
            maps = upsample(maps, tuple(view_hw))
        return maps.cpu()

    def smooth(self, work_map: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(work_map, self.config.blur_sigma)

    # --- persistence ---------------------------------------------------------------------------
    def save(self, stem: str | Path) -> None:
        self._check_fitted()
        tensors = {f"head.{k}": v for k, v in self.head_.state_dict().items()}
        checkpoint.save(stem, tensors, {
            "method": self.method, "segmenter": asdict(self.config), "policy": self.policy.to_dict(),
            "threshold": self.threshold_, "calibration_scores": self.calibration_scores_.tolist()})

    @classmethod
    def load(cls, stem: str | Path, backbone: Backbone | None = None) -> "Segmenter":
        cfg = checkpoint.load_config(stem)
        known = {"method", "segmenter", "policy", "threshold", "calibration_scores"}
        if set(cfg) != known or cfg["method"] != cls.method:
            raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.json')}: not a QARAD segmenter config "
                                             f"(keys {sorted(cfg)})")
        if not isinstance(cfg["threshold"], (int, float)) or not isinstance(cfg["calibration_scores"], list):
            raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.json')}: threshold must be a number and "
                                             "calibration_scores a list")
        source = Path(stem).with_suffix(".json")
        model = cls(checkpoint.build_config(SegmenterConfig, cfg["segmenter"], source),
                    checkpoint.build_config(ResolutionPolicy, cfg["policy"], source), backbone)
        head = SegmentationHead(model.config)
        rest = checkpoint.load_module(stem, head, prefix="head.")
        if rest:
            raise checkpoint.CheckpointError(f"{Path(stem).with_suffix('.safetensors')}: unknown tensors "
                                             f"{sorted(rest)[:5]}")
        model.head_ = head.eval()
        model.threshold_ = float(cfg["threshold"])
        model.calibration_scores_ = np.asarray(cfg["calibration_scores"], dtype=np.float64)
        return model
