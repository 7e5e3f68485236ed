"""Turning patch scores into pixel anomaly maps: upsampling and Gaussian smoothing."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def upsample(patch_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear."""
    return F.interpolate(patch_scores[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def gaussian_blur(image_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (H, W) or (B, H, W) map, kernel radius 4 sigma, reflect padding."""
    if sigma <= 0:
        return image_map
    squeeze = image_map.dim() == 2
    x = image_map[None] if squeeze else image_map
    radius = int(math.ceil(4 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = x[:, None]
    # reflect padding needs pad < size; fall back to replicate on tiny maps
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), k.view(1, 1, -1, 1))
    x = x[:, 0]
    return x[0] if squeeze else x
