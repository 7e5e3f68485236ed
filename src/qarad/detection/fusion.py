"""The two scoring choices a qarad run makes on its validation split (detection/validation.py):
how much the head counts against the memory bank, and how a map becomes an image score.

Gate: the cell score is 2 (w z(head logit) + (1 - w) z(nearest-neighbour distance)), z-scored on
held-out normal views (segmenter.Reference). w = 0 is the memory bank alone (PatchCore's map up to
one affine map, so the same ranking and the same AUROC/AUPRO); w = 0.5 is the sum of the two
z-scores that every run made before the gate (LEGACY_HEAD_WEIGHT, what old runs load with); w = 1
is the head alone in logit space. The factor 2 keeps w = 0.5 bit-identical to that sum.

Image rule: the image score read from the smoothed map over the working image. "max" (every run
before the rule) or "top-P%": the mean of the P% highest pixels, which a single bright spot on
the background moves less than the maximum.
"""
from __future__ import annotations

import math

import torch

HEAD_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the gate's grid: 0 = the bank alone
LEGACY_HEAD_WEIGHT = 0.5  # runs saved before the gate: z(logit) + z(dist)
IMAGE_RULES = ("max", "top-1%", "top-5%")  # the image-score rules the validation split chooses from
LEGACY_IMAGE_RULE = "max"


def check_weight(weight: float) -> float:
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"head weight must be in [0, 1], got {weight}")
    return float(weight)


def check_rule(rule: str) -> str:
    if rule != "max":
        share = _top_share(rule)
        if share is None or not 0 < share <= 100:
            raise ValueError(f"unknown image-score rule {rule!r}: 'max' or 'top-P%' with P in (0, 100]")
    return rule


def _top_share(rule: str) -> float | None:
    if not (rule.startswith("top-") and rule.endswith("%")):
        return None
    try:
        return float(rule[4:-1])
    except ValueError:
        return None


def fuse(z_logit: torch.Tensor | None, z_dist: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, h, w) z-scores -> cell scores; `z_logit` may be None when weight is 0 (the head not run)."""
    if weight == 0.0:
        return 2.0 * z_dist
    if weight == LEGACY_HEAD_WEIGHT:  # exactly the sum old runs computed
        return z_logit + z_dist
    return 2.0 * (weight * z_logit + (1.0 - weight) * z_dist)


def image_score(work_map: torch.Tensor, rule: str = LEGACY_IMAGE_RULE) -> torch.Tensor:
    """Score of a smoothed (h, w) map, or of each (B, h, w) map, under `rule` (a 0-d / (B,) tensor)."""
    flat = work_map.reshape(-1) if work_map.dim() == 2 else work_map.flatten(1)
    if rule == "max":
        return flat.amax(-1)
    share = _top_share(rule)
    k = max(1, math.ceil(share / 100.0 * flat.shape[-1]))
    return flat.topk(k, dim=-1).values.mean(-1)
