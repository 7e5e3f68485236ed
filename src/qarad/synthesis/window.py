"""Where the local window around a mask goes and how far it zooms (one rule for fit and synthesis).

The tokenizer sees the world in 8x8-pixel cells. A defect a few working pixels across fills
one or two cells, and a factor-8 code cannot carry a scratch or a pit that small: on magnetic
tile, with windows cut at working scale, the tokenizer's encode/decode kept 0.19 of the defect
families a classifier recognised (0.44-0.48 with this rule; benchmarks/synthesis.py,
`tokenizer_ceiling_top1`). So the window is sized to the mask: the mask's bounding box spans
half the window (a quarter of it stays context on each side), zooming in up to `max_zoom` for
small masks and out, without limit, for large ones. The fitting corpus is cut with the same rule,
so the prior learns defects at the scale it is later asked to draw them.

The cut itself lives here too: the source-pixel box, the crop (replicating the border where the
box runs past the image) and its resize to the prior's window, for synthesis, the fitting corpus,
the QAW scorer and the benchmarks alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.resolution import ResolutionPolicy

LEGACY_MAX_ZOOM = 1.0  # models fitted before the rule existed were never zoomed in


@dataclass(frozen=True)
class WindowRule:
    side: int  # window px a side (the prior's window)
    max_zoom: float = 4.0  # window px per working px, at most

    def __post_init__(self):
        if self.side < 8:
            raise ValueError(f"window side must be at least 8 px, got {self.side}")
        if not self.max_zoom >= 1.0:
            raise ValueError(f"max_zoom must be at least 1 (no zoom), got {self.max_zoom}")

    def extent(self, mask_extent: float) -> float:
        """Working px a side of the window for a mask whose bounding box spans `mask_extent` working px."""
        return max(self.side / self.max_zoom, 2.0 * mask_extent)

    def box(self, mask: np.ndarray, scale_yx: tuple[float, float],
            limit: bool = False) -> tuple[int, int, int, int]:
        """Source-pixel rectangle (y0, x0, y1, x1) centred on `mask`; scale_yx = working px per source px.

        The rectangle is shifted to stay inside the image; it may still run past the bottom/right
        when it is larger than the image, unless `limit`, which clips its size to the image (the
        corpus cuts inside a rendered crop and must not invent border pixels).
        """
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            raise ValueError("mask is empty: nothing to synthesize")
        sy, sx = scale_yx
        need = self.extent(max((ys.max() - ys.min() + 1) * sy, (xs.max() - xs.min() + 1) * sx))
        hh, ww = max(1, round(need / sy)), max(1, round(need / sx))
        if limit:
            hh, ww = min(hh, mask.shape[0]), min(ww, mask.shape[1])
        cy, cx = (ys.min() + ys.max() + 1) // 2, (xs.min() + xs.max() + 1) // 2
        y0 = int(np.clip(cy - hh // 2, 0, max(0, mask.shape[0] - hh)))
        x0 = int(np.clip(cx - ww // 2, 0, max(0, mask.shape[1] - ww)))
        return y0, x0, y0 + hh, x0 + ww


def padded_crop(arr: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(C, H, W) crop that may run past the image on the bottom/right: replicate the border."""
    y0, x0, y1, x1 = box
    h, w = arr.shape[-2:]
    part = arr[:, y0:min(y1, h), x0:min(x1, w)]
    ph, pw = (y1 - y0) - part.shape[1], (x1 - x0) - part.shape[2]
    if ph or pw:
        part = F.pad(part[None].float(), (0, pw, 0, ph), mode="replicate")[0].to(arr.dtype)
    return part


@dataclass
class WindowCut:
    box: tuple[int, int, int, int]  # source-pixel rectangle
    crop: torch.Tensor  # (3, hh, ww) source-resolution crop
    crop_mask: torch.Tensor  # (hh, ww) bool
    window: torch.Tensor  # (3, S, S) crop resized to the prior's window


def to_window(crop: torch.Tensor, side: int) -> torch.Tensor:
    """(3, h, w) float crop -> (3, side, side) in [0, 1], the way every window is resized."""
    return F.interpolate(crop[None].float(), size=(side, side), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def coverage(mask: torch.Tensor, side: int) -> torch.Tensor:
    """(h, w) bool crop mask -> (side, side) float share of each window pixel the mask covers."""
    return F.interpolate(mask[None, None].float(), size=(side, side), mode="area")[0, 0]


def window_cut(image: np.ndarray, mask: np.ndarray, policy: ResolutionPolicy, rule: WindowRule) -> WindowCut:
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")
    work_h, work_w = policy.layout(h, w).work_hw
    box = rule.box(mask, (work_h / h, work_w / w))
    crop = padded_crop(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), box)
    return WindowCut(box, crop, padded_crop(torch.from_numpy(mask)[None], box)[0], to_window(crop, rule.side))


def crop_window(image: np.ndarray, mask: np.ndarray, policy: ResolutionPolicy, rule: WindowRule
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3, S, S) image window around `mask` cut by `rule` at the policy's working scale, and
    the mask's (S, S) coverage of it in [0, 1] (as used by the QAW scorer and benchmarks)."""
    cut = window_cut(image, mask, policy, rule)
    return cut.window, coverage(cut.crop_mask, rule.side)
