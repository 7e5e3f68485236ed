"""QAW calibrations: dual-encoder scores in [-1, 1] -> per-sample loss weights.

Qian et al., arXiv 2508.03539 (QAW): well-made synthetic samples count more and poor ones less,
without discarding any. The weight multiplies each sample's own loss (`weighted_loss`), which is
what makes the weighting per-sample rather than a rescaled batch mean (DESIGN.md 4.5).

  none     w = 1
  linear   w = min(1, max(w_min, (s - a) / (b - a)))     scores at or above b get full weight
  softmax  w = N * softmax(s / T) over the set           weights average exactly 1
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

CALIBRATIONS = ("none", "linear", "softmax")
Scores = TypeVar("Scores", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class WeightingConfig:
    calibration: str = "linear"
    a: float = 0.0  # linear: score that maps to weight 0 (then floored at w_min)
    b: float = 0.3  # linear: score that maps to weight 1
    w_min: float = 0.1  # linear: floor, so no sample is thrown away
    temperature: float = 0.05  # softmax: lower = sharper preference for high scores

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATIONS)}")
        if not self.b > self.a:
            raise ValueError(f"linear calibration needs b > a, got a={self.a}, b={self.b}")
        if not 0.0 <= self.w_min <= 1.0:
            raise ValueError(f"w_min must be in [0, 1], got {self.w_min}")
        if not self.temperature > 0:
            raise ValueError(f"softmax temperature must be positive, got {self.temperature}")


def weights(scores: Scores, config: WeightingConfig = WeightingConfig()) -> Scores:
    """(N,) scores -> (N,) weights of the same type (numpy or torch), dtype and device."""
    if isinstance(scores, torch.Tensor):
        s = scores.detach()  # weights are constants for the detector: no gradient into the scorer
        if config.calibration == "none":
            return torch.ones_like(s)
        if config.calibration == "linear":
            return ((s - config.a) / (config.b - config.a)).clamp(min=config.w_min, max=1.0)
        return len(s) * torch.softmax(s / config.temperature, dim=0)
    s = np.asarray(scores)
    dtype = s.dtype if np.issubdtype(s.dtype, np.floating) else np.float64
    s = s.astype(dtype, copy=False)
    if config.calibration == "none":
        return np.ones_like(s)
    if config.calibration == "linear":
        return np.clip((s - config.a) / (config.b - config.a), config.w_min, 1.0)
    if s.size == 0:
        return s.copy()
    e = np.exp((s - s.max()) / config.temperature)  # shifted by the max: no overflow at small T
    return (s.size * e / e.sum()).astype(dtype, copy=False)


def weighted_loss(per_sample_loss: torch.Tensor, sample_weights: torch.Tensor) -> torch.Tensor:
    """Mean of w_i * loss_i over the batch: each sample's gradient scales with its own weight."""
    if per_sample_loss.dim() != 1 or per_sample_loss.shape != sample_weights.shape:
        raise ValueError(f"per-sample losses and weights must both be (B,), got {tuple(per_sample_loss.shape)} "
                         f"and {tuple(sample_weights.shape)}")
    return (per_sample_loss * sample_weights.detach().to(per_sample_loss.dtype)).mean()
