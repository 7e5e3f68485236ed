"""Where the local window around a mask goes and how far it zooms (one rule for fit and synthesis).

The tokenizer sees the world in 8x8-pixel cells. A defect a few working pixels across fills
one or two cells, and a factor-8 code cannot carry a scratch or a pit that small: on magnetic
tile, with windows cut at working scale, the tokenizer's encode/decode kept 0.19 of the defect
families a classifier recognised (0.44-0.48 with this rule; benchmarks/synthesis.py,
`tokenizer_ceiling_top1`). So the window is sized to the mask: the mask's bounding box spans
half the window (a quarter of it stays context on each side), zooming in up to `max_zoom` for
small masks and out, without limit, for large ones. The fitting corpus is cut with the same rule,
so the prior learns defects at the scale it is later asked to draw them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
