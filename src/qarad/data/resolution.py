"""Resolution policies: how an image of any size becomes backbone-sized views and back.

Three policies, stored with every run so that train, eval, predict, synth and export agree:

* ``resize``      squash the image to size x size (aspect ratio lost; small defects may vanish).
* ``keep-aspect`` scale so the shorter side is `size`, keep the aspect ratio, pad the bottom/right
                  edge up to a multiple of 32 by replicating the border; one view per image.
* ``tile``        scale by `scale` (1.0 = native pixels), cover the image with size x size tiles
                  that overlap by at least `overlap` px; images smaller than a tile are padded.

A `Layout` maps one image to its views and stitches per-view maps back into one map over the
*working* image (the scaled image, padding removed). Metrics and image scores are computed on
that map, so padding never counts.

Stitching blend (documented and tested): each view's map is weighted by a separable ramp
w(i) = min(1, (i + 1) / (overlap + 1), (n - i) / (overlap + 1)) along rows and columns; a pixel's
value is the weighted mean over the views covering it. Where only one view covers a pixel the
result is that view's value exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

POLICIES = ("resize", "keep-aspect", "tile")
# working size in px at most; flags.MAX_WORKING_SIZE is the same bound, checked while parsing (flags.py is torch-free
# and imports this module lazily, so it cannot be imported from here: tests/test_flags.py checks they agree)
MAX_SIZE = 4096
STRIDE_MULTIPLE = 32  # coarsest backbone stride: view sides must be multiples of it


@dataclass(frozen=True)
class ResolutionPolicy:
    mode: str = "resize"
    size: int = 256  # resize: output side; keep-aspect: shorter side; tile: tile side
    scale: float = 1.0  # tile only: image scale before tiling
    overlap: int = 64  # tile only: minimum overlap between neighbouring tiles, px

    def __post_init__(self):
        if self.mode not in POLICIES:
            raise ValueError(f"unknown resolution policy {self.mode!r}; choose from {', '.join(POLICIES)}")
        if self.size < STRIDE_MULTIPLE or self.size % STRIDE_MULTIPLE:
            raise ValueError(f"working size must be a positive multiple of {STRIDE_MULTIPLE}, got {self.size}")
        if self.size > MAX_SIZE:  # a 100000-px view would ask for 120 GB before failing
            raise ValueError(f"working size must be at most {MAX_SIZE} px (tile larger images), got {self.size}")
        if not 0 < self.scale <= 8:
            raise ValueError(f"tile scale must be in (0, 8], got {self.scale}")
        if self.mode == "tile" and not 0 <= self.overlap < self.size:
            raise ValueError(f"tile overlap must be in [0, size), got {self.overlap}")

    def to_dict(self) -> dict:
        return asdict(self)

    def layout(self, height: int, width: int) -> "Layout":
        return Layout.plan(self, height, width)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, length): evenly spread, the last one flush with the end."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Layout:
    """Where the views of one image lie. All coordinates are in working (scaled) pixels."""

    source_hw: tuple[int, int]  # original image size
    work_hw: tuple[int, int]  # scaled image size: maps and metrics live here
    view_hw: tuple[int, int]  # size of every view (backbone input)
    origins: tuple[tuple[int, int], ...]  # top-left corner of each view
    overlap: int

    @staticmethod
    def plan(policy: ResolutionPolicy, height: int, width: int) -> "Layout":
        s = policy.size
        if policy.mode == "resize":
            return Layout((height, width), (s, s), (s, s), ((0, 0),), 0)
        if policy.mode == "keep-aspect":
            k = s / min(height, width)
            work = (max(s, round(height * k)), max(s, round(width * k)))
            view = (_round_up(work[0], STRIDE_MULTIPLE), _round_up(work[1], STRIDE_MULTIPLE))
            return Layout((height, width), work, view, ((0, 0),), 0)
        work = (max(1, round(height * policy.scale)), max(1, round(width * policy.scale)))
        ys = _tile_starts(work[0], s, policy.overlap)
        xs = _tile_starts(work[1], s, policy.overlap)
        return Layout((height, width), work, (s, s), tuple((y, x) for y in ys for x in xs), policy.overlap)

    @property
    def decode_reduction(self) -> int:
        """Integer factor by which the source may be block-averaged while decoding (io.read_image's
        `reduce`): a quarter of the downscale to the working image, so the antialiased resize that
        follows still averages >= 4 reduced pixels per working pixel and the views stay within ~1% of
        the full decode (measured on MPDD and DeepPCB at 8x-10x: max 0.008, mean 0.0007 of the [0, 1]
        range; at half the downscale max 0.03-0.05). 1 unless the image is shrunk 8x or more."""
        shrink = min(self.source_hw[0] / self.work_hw[0], self.source_hw[1] / self.work_hw[1])
        return max(1, int(shrink / 4))

    @property
    def canvas_hw(self) -> tuple[int, int]:
        return (max(self.work_hw[0], self.view_hw[0]), max(self.work_hw[1], self.view_hw[1]))

    def to_work(self, image: np.ndarray, reduction: int = 1) -> torch.Tensor:
        """(H, W, 3) float image in [0, 1] -> (3, h, w) tensor at working size. `reduction`: the image
        was decoded reduced by that factor (ceil(H / reduction) x ceil(W / reduction), the last block
        partial), so its pixels are mapped by the source's geometry, not by its own size."""
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        if reduction > 1:
            (big_h, big_w), (h, w) = self.source_hw, self.work_hw
            t = F.interpolate(t, scale_factor=(h * reduction / big_h, w * reduction / big_w), mode="bilinear",
                              align_corners=False, antialias=True, recompute_scale_factor=False)[..., :h, :w]
        elif tuple(t.shape[-2:]) != self.work_hw:
            # antialias: shrinking without it aliases thin structures into noise
            t = F.interpolate(t, size=self.work_hw, mode="bilinear", align_corners=False, antialias=True)
        return t[0].clamp_(0.0, 1.0)

    def mask_to_work(self, mask: np.ndarray) -> np.ndarray:
        """Ground-truth mask at working size (nearest neighbour, so it stays binary)."""
        if tuple(mask.shape) == self.work_hw:
            return mask.astype(bool)
        t = torch.from_numpy(mask.astype(np.uint8))[None, None].float()
        return F.interpolate(t, size=self.work_hw, mode="nearest")[0, 0].numpy() > 0.5

    def views(self, image: np.ndarray, reduction: int = 1) -> torch.Tensor:
        """(n_views, 3, vh, vw) backbone inputs; padding replicates the border (`reduction`: to_work)."""
        work = self.to_work(image, reduction)
        ph, pw = self.canvas_hw[0] - self.work_hw[0], self.canvas_hw[1] - self.work_hw[1]
        if ph or pw:
            work = F.pad(work[None], (0, pw, 0, ph), mode="replicate")[0]
        vh, vw = self.view_hw
        return torch.stack([work[:, y:y + vh, x:x + vw] for y, x in self.origins])

    def valid(self) -> torch.Tensor:
        """(n_views, vh, vw) bool: True where a view shows real (unpadded) image."""
        out = torch.zeros(len(self.origins), *self.view_hw, dtype=torch.bool)
        h, w = self.work_hw
        for i, (y, x) in enumerate(self.origins):
            out[i, : max(0, h - y), : max(0, w - x)] = True
        return out

    def _ramp(self, n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        d = float(self.overlap + 1)
        return torch.minimum(torch.ones(n), torch.minimum((i + 1) / d, (n - i) / d))

    def stitch(self, maps: torch.Tensor) -> torch.Tensor:
        """(n_views, vh, vw) per-view maps -> (h, w) map over the working image."""
        if len(self.origins) == 1:
            return maps[0, : self.work_hw[0], : self.work_hw[1]]
        vh, vw = self.view_hw
        weight = self._ramp(vh)[:, None] * self._ramp(vw)[None, :]
        total = torch.zeros(self.canvas_hw, dtype=maps.dtype)
        norm = torch.zeros(self.canvas_hw, dtype=maps.dtype)
        plain = torch.zeros(self.canvas_hw, dtype=maps.dtype)
        count = torch.zeros(self.canvas_hw, dtype=torch.int32)
        for m, (y, x) in zip(maps, self.origins):
            total[y:y + vh, x:x + vw] += m * weight
            norm[y:y + vh, x:x + vw] += weight
            plain[y:y + vh, x:x + vw] += m
            count[y:y + vh, x:x + vw] += 1
        # (m * w) / w is not always m in float32: copy single-cover pixels exactly
        return torch.where(count == 1, plain, total / norm)[: self.work_hw[0], : self.work_hw[1]]

    def to_source(self, work_map: torch.Tensor) -> torch.Tensor:
        """(h, w) working map -> (H, W) map at the original image size (for overlays)."""
        if tuple(work_map.shape) == self.source_hw:
            return work_map
        return F.interpolate(work_map[None, None], size=self.source_hw, mode="bilinear", align_corners=False)[0, 0]
