"""Contrastive training of the QAW dual encoder (its checkpoint: synthesis/model.py, the model folder's owner).

Qian et al., arXiv 2508.03539 (QAW). The backbone is frozen and each sample's region is fixed, so
the region-pooled features are computed once and only the two projections (and the temperature)
are trained: a training step costs two small MLPs, not a backbone pass.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..training import optimizer_step
from .dual_encoder import DualEncoder, DualEncoderConfig, region_pool

FEATURE_BATCH = 16  # images per frozen-backbone pass while caching features
WEIGHT_DECAY = 0.01

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) in [0, 1] -> (B, C, S/8, S/8)


def default_features_fn() -> FeaturesFn:
    """The detectors' kind of features: Lite0 stride-8 + stride-16 taps, 3x3-aggregated (152 channels)."""
    from ..backbone import Backbone, PatchEmbedder
    from .dual_encoder import FEATURES

    return PatchEmbedder(Backbone(FEATURES))


def _as_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def pooled_features(features_fn: FeaturesFn, images: torch.Tensor, masks: torch.Tensor,
                    batch_size: int = FEATURE_BATCH, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 3, S, S) images + (N, S, S) masks -> (N, 2C) region-pooled frozen features (on the CPU;
    each batch goes to `device`, where `features_fn` runs)."""
    out = []
    # no_grad, not inference_mode: the cached rows later feed a trained layer that saves its input.
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            feats = features_fn(_as_unit_float(images[s:s + batch_size]).to(device))
            out.append(region_pool(feats.float(), masks[s:s + batch_size].float().to(device)).cpu())
    return torch.cat(out)


def fit_dual_encoder(features_fn: FeaturesFn | None, images: torch.Tensor, masks: torch.Tensor, text: torch.Tensor,
                     families: torch.Tensor, steps: int = 2000, batch_size: int = 64, lr: float = 1e-3,
                     seed: int = 0, on_step: Callable[[float], None] | None = None,
                     config: DualEncoderConfig = DualEncoderConfig(), device: str | torch.device = "cpu"
                     ) -> DualEncoder:
    """Train the projections contrastively on (region, prompt) pairs; returns the model in eval mode.

    images (N, 3, S, S) uint8 or float in [0, 1]; masks (N, S, S) defect regions; text (N, 384)
    MiniLM embeddings of each sample's prompt; families (N,) prompt-family ids (same family =
    positives for each other). `features_fn` None uses the frozen EfficientNet-Lite0 embedder,
    moved to `device` (a given `features_fn` runs where it is). Returns the model on the CPU.
    """
    n = len(images)
    if not (len(masks) == len(text) == len(families) == n):
        raise ValueError(f"images, masks, text and families must have equal length, got "
                         f"{n}, {len(masks)}, {len(text)}, {len(families)}")
    if n < 2:
        raise ValueError("contrastive training needs at least two samples")
    if text.shape[1:] != (config.text_dim,):
        raise ValueError(f"text embeddings must be (N, {config.text_dim}), got {tuple(text.shape)}")
    device = torch.device(device)
    pooled = pooled_features(features_fn or default_features_fn().to(device), images, masks, device=device)
    if pooled.shape[1] != 2 * config.image_channels:
        raise ValueError(f"features have {pooled.shape[1] // 2} channels, config expects {config.image_channels}")
    pooled, text, families = pooled.to(device), text.float().to(device), families.long().to(device)

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        model = DualEncoder(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    order, cursor = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if cursor + batch_size > n:  # next epoch: a fresh shuffle, every sample seen once per epoch
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        loss = model.contrastive_loss(model.image_project(pooled[idx]), model.text_embed(text[idx]), families[idx])
        value = optimizer_step(optimizer, loss, model.parameters())
        if on_step:
            on_step(value)
    return model.cpu().eval()
