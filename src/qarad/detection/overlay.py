"""Heat-map overlays at the source resolution, made in row strips so that memory stays near the
decoded 8-bit image: no full-size float copy of the image or of the map ever exists.

The map is upsampled exactly as `Layout.to_source` does (bilinear, align_corners=False), but
separably: columns once for the whole map (working rows x source width), then each strip's rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.io import read_image_uint8, to_uint8, write_image
from ..data.resolution import Layout
from ..report.figures import overlay

STRIP_ROWS = 256  # source rows blended at a time: a strip of a 10000-px-wide image is ~30 MB of floats


def _row_weights(n_in: int, n_out: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows (lower, upper) and upper weight of output rows start..stop, as torch's bilinear
    resize with align_corners=False computes them."""
    src = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    lower = src.floor().long().clamp_max(n_in - 1)
    upper = (lower + 1).clamp_max(n_in - 1)
    return lower, upper, (src - lower).float()


def source_rows(layout: Layout, work_map: torch.Tensor):
    """Yield (row0, (rows, W) map at source resolution) strip by strip for a (h, w) working map."""
    height, width = layout.source_hw
    if tuple(work_map.shape) == (height, width):
        for y in range(0, height, STRIP_ROWS):
            yield y, work_map[y:y + STRIP_ROWS]
        return
    columns = F.interpolate(work_map[None, None], size=(work_map.shape[0], width), mode="bilinear",
                            align_corners=False)[0, 0]
    for y in range(0, height, STRIP_ROWS):
        lower, upper, t = _row_weights(work_map.shape[0], height, y, min(y + STRIP_ROWS, height))
        yield y, columns[lower] * (1 - t)[:, None] + columns[upper] * t[:, None]


def write_overlay(out: str | Path, source: str | Path, layout: Layout, work_map: np.ndarray, threshold: float) -> None:
    """Write the heat map of `work_map` (over the working image of `layout`) onto the image at `source`,
    at its resolution, as a PNG (report.figures.overlay, strip by strip)."""
    image = read_image_uint8(source)
    if image.shape[:2] != tuple(layout.source_hw):
        raise ValueError(f"{source}: image is {image.shape[1]}x{image.shape[0]}, its layout says "
                         f"{layout.source_hw[1]}x{layout.source_hw[0]}")
    work = torch.from_numpy(np.ascontiguousarray(work_map, dtype=np.float32))
    scale = 1.0
    if not np.isfinite(threshold) or threshold <= 0:
        # figures.normalise then divides by the whole map's maximum, which a strip does not know:
        # dividing first and clipping at threshold 0.5 colours every pixel alike
        scale = max(float(rows.max()) for _, rows in source_rows(layout, work)) or 1.0
        threshold = 0.5
    blended = np.empty_like(image)
    for y, rows in source_rows(layout, work):
        part = image[y:y + len(rows)].astype(np.float32) / 255.0
        blended[y:y + len(rows)] = to_uint8(overlay(part, (rows / scale).numpy(), threshold))
    del image  # the PNG encoder copies `blended` once more: free the source first
    write_image(out, blended)
