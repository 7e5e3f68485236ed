"""The QARAD detector's head network, its training loss and the cell scores it gives.

The head is convolutional on stride-8 cells of frozen PatchEmbedder features (segmenter.py): it
reads the features, and with `residual` the residual to each cell's nearest memory-bank row and that
row's distance; `cell_scores` turns its logits (fused with the distance, detection/fusion.py) into
a score per cell. The Segmenter holds a fitted head; head_training.py trains one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import PATCH_STRIDE
from ..detector_config import SegmenterConfig
from .anomaly_map import upsample
from .fusion import LEGACY_HEAD_WEIGHT, fuse

CONV_LAYERS = 2  # 3x3 layers after the adaptor: receptive field of 5x5 cells = 40 px on top of the taps
PRIOR_PROBABILITY = 0.01  # initial defect probability (focal-loss bias init, Lin et al. 2017)


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
