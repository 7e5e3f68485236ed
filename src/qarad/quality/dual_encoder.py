"""QAW dual encoder: how well does a synthesized defect region match its prompt?

Qian et al., "Quality-Aware Language-Conditioned Local Auto-Regressive Anomaly Synthesis and
Detection", arXiv 2508.03539: each synthetic sample is scored by the cosine similarity of an image
embedding of its defect region and a text embedding of its prompt (DESIGN.md 4.5).

Image tower: frozen EfficientNet-Lite0 PatchEmbedder features (stride 8, 152 ch; `FEATURES`) pooled over the region and over a
ring of context around it (`region_pool`), then a trained MLP. Text tower: frozen MiniLM (384-d)
plus a trained MLP. Both outputs are L2-normalised, so `score` is a cosine in [-1, 1].

This file is the pure module; training and checkpoint I/O live in `quality/fit.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone_config import LITE0, BackboneConfig

RING_CELLS = 2  # width of the context ring, in stride-8 feature cells (16 px at working size)
POOL_EPS = 1e-6  # guards the division of masked means; a region this small counts as empty
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: keeps the learned temperature above 0.01
HIDDEN_MULT = 2  # MLP hidden width = HIDDEN_MULT * embed_dim
FEATURES = BackboneConfig(LITE0, strides=(8, 16))  # QAW's taps: Lite0, whatever backbone the detectors use


@dataclass(frozen=True)
class DualEncoderConfig:
    embed_dim: int = 128
    image_channels: int = FEATURES.feature_channels  # stride-8 40 ch + stride-16 112 ch (PatchEmbedder)
    text_dim: int = 384  # all-MiniLM-L6-v2
    temperature_init: float = 0.07


def _masked_mean(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w), (B, 1, h, w) -> (B, C) weighted spatial mean."""
    total = weight.flatten(1).sum(1).clamp_min(POOL_EPS)  # (B,)
    return (features * weight).flatten(2).sum(2) / total[:, None]


def region_pool(features: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) features, (B, h', w') region weights -> (B, 2C) = [inside, inside - around].

    `inside` is the mean feature over the defect region and `around` the mean over a ring of
    RING_CELLS cells outside it. Why both halves: prompts describe absolute appearance ("a bright
    rust-coloured stain") and contrast with the material ("a dark scratch" means darker than its
    surroundings). The difference makes the contrast explicit and cancels most of the material's
    own appearance, so one projection serves every category; `inside` keeps the absolute part,
    which the difference alone would lose. A region that is larger than the feature grid (a pixel
    mask) is reduced to the fraction of each cell it covers. No parameters: callers may cache it.
    """
    if region.shape[-2:] != features.shape[-2:]:
        region = F.adaptive_avg_pool2d(region[:, None].float(), features.shape[-2:])[:, 0]  # cell coverage
    region = region.to(features.dtype).clamp(0, 1)[:, None]  # (B, 1, h, w)
    grown = F.max_pool2d(region, 2 * RING_CELLS + 1, stride=1, padding=RING_CELLS)
    ring = (grown - region).clamp_min(0)
    inside = _masked_mean(features, region)
    around = _masked_mean(features, ring)
    # A region that fills the view has no ring: report zero contrast rather than a mean of nothing.
    has_ring = ring.flatten(1).sum(1, keepdim=True) > POOL_EPS
    around = torch.where(has_ring, around, inside)
    return torch.cat([inside, inside - around], 1)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    # LayerNorm first: backbone channels and MiniLM dimensions have very different scales.
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class DualEncoder(nn.Module):
    def __init__(self, config: DualEncoderConfig = DualEncoderConfig()):
        super().__init__()
        self.config = config
        hidden = HIDDEN_MULT * config.embed_dim
        self.image_proj = _mlp(2 * config.image_channels, hidden, config.embed_dim)
        self.text_proj = _mlp(config.text_dim, hidden, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature_init)))

    def image_project(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, 2C) output of `region_pool` -> (B, D) unit vectors."""
        return F.normalize(self.image_proj(pooled), dim=-1)

    def image_embed(self, features: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) frozen features, (B, h, w) region weights in [0, 1] -> (B, D) unit vectors."""
        if features.shape[1] != self.config.image_channels:
            raise ValueError(f"features have {features.shape[1]} channels, the dual encoder expects "
                             f"{self.config.image_channels}")
        return self.image_project(region_pool(features, region))

    def text_embed(self, text: torch.Tensor) -> torch.Tensor:
        """(B, 384) frozen MiniLM embeddings -> (B, D) unit vectors."""
        return F.normalize(self.text_proj(text), dim=-1)

    def score(self, features: torch.Tensor, region: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity of each region with its own prompt, in [-1, 1]."""
        return (self.image_embed(features, region) * self.text_embed(text)).sum(-1).clamp(-1.0, 1.0)

    def contrastive_loss(self, img: torch.Tensor, txt: torch.Tensor,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
        """Symmetric InfoNCE over a batch of (B, D) unit embeddings.

        With `labels` (prompt-family ids), every pair in the same family is a positive: the loss
        is -log of the softmax mass on all positives. A corpus repeats prompts, and plain InfoNCE
        would push identical texts apart from "their" images. Summing the mass (rather than
        averaging -log p over positives) leaves the ranking inside a family free, so prompts of
        one family that differ in detail ("thin" vs "wide" scratch) are not forced together.
        """
        logits = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * img @ txt.T  # (B, B)
        if labels is None:
            positive = torch.eye(len(img), dtype=torch.bool, device=img.device)
        else:
            positive = labels[:, None] == labels[None, :]  # symmetric, so it serves both directions
        lowest = torch.finfo(logits.dtype).min

        def direction(lg: torch.Tensor) -> torch.Tensor:
            return (torch.logsumexp(lg, 1) - torch.logsumexp(lg.masked_fill(~positive, lowest), 1)).mean()

        return 0.5 * (direction(logits) + direction(logits.T))
