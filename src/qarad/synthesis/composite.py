"""The grain composite: the defect's structure from the ARAS decode, the material's grain from real pixels.

An 8x8-token decode of a 64-px window cannot carry the material's high frequencies: pasted as it
is, a defect is a smooth blob on grainy material (DESIGN 4.4). So each generated crop is split by
frequency at the token scale: the low frequencies (shading, polarity, shape, soft edges) come from
the decode of the new codes; of the high frequencies the decode keeps only what the new codes
changed (a stroke, a sharp rim: decode(new) - decode(old) above the split), and the material's
grain, which the decode of the old codes only imitates, comes from real material: the source
crop itself or, for a defect that removes material (a hole, a break), a donor crop of normal
material elsewhere in the image. Inside the mask the grain's gain follows the defect (GRAIN): a
stain dulls it, a scratch replaces it (the decode's stroke stays, little of the grain under it),
a discoloration leaves it as it was. Outside the mask the source's grain is kept whole, so the
blend's feathered ring stays grainy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Low-pass width in window px: a code describes an 8-px cell, so detail finer than a quarter of
# a cell is what the decode draws from its codebook, not from the defect.
SPLIT_SIGMA_WINDOW = 2.0


@dataclass(frozen=True)
class Grain:
    gain: float  # of the real material's grain inside the mask (1 outside)
    donor: bool = False  # the defect removes material: the grain comes from normal material elsewhere


GRAIN = {
    "scratch": Grain(0.3), "crack": Grain(0.3), "fray": Grain(0.4), "print_line": Grain(0.3),
    "stain": Grain(0.6), "discoloration": Grain(1.0), "dent": Grain(1.0),
    "hole": Grain(0.8, donor=True), "break": Grain(0.8, donor=True),
}
UNKNOWN = Grain(0.8)  # a prompt that names no family (a real defect type's own name)
DONOR_TRIES = 24


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) -> same, separable Gaussian with replicated borders; sigma <= 0 returns x."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def fine_energy(x: torch.Tensor, sigma: float) -> float:
    """RMS of x's fine detail (x minus its blur): how grainy a crop is."""
    return float((x - gaussian_blur(x, sigma)).pow(2).mean().sqrt())


def _grain_stats(x: torch.Tensor, sigma: float, where: torch.Tensor | None = None) -> tuple[float, float]:
    """Median and 99th percentile of |fine detail| (over `where`, (h, w) bool, when given): the
    grain's level, and how strong its strongest structure is (an edge, a print)."""
    fine = (x - gaussian_blur(x, sigma)).abs().mean(0)
    values = fine[where] if where is not None and bool(where.any()) else fine.flatten()
    return float(values.median()) + 1e-4, float(torch.quantile(values.float(), 0.99)) + 1e-4


def donor_crop(image: np.ndarray, box: tuple[int, int, int, int], mask: torch.Tensor, sigma: float,
               generator: torch.Generator) -> torch.Tensor:
    """(3, hh, ww): the crop of `box`, with the patch under `mask` (the box's crop mask, its bounding
    box grown by the blur's reach) taken from normal material elsewhere in `image`: of DONOR_TRIES
    patches of that size that do not overlap the defect's own, the one whose grain is most like the
    material under the mask, the same level (a part's material, not a plain backdrop) and no stronger
    structure (no edge of the part, which would show through the defect). When none fits, the
    source's own grain stays."""
    y0, x0, y1, x1 = box
    h, w = image.shape[:2]
    hh, ww = min(y1, h) - y0, min(x1, w) - x0
    here = torch.from_numpy(np.ascontiguousarray(image[y0:y0 + hh, x0:x0 + ww])).permute(2, 0, 1).float()
    inside = mask[:hh, :ww]
    ys, xs = torch.nonzero(inside, as_tuple=True)
    if len(ys) == 0:
        return here
    reach = math.ceil(3 * sigma) + 1
    py0, px0 = max(int(ys.min()) - reach, 0), max(int(xs.min()) - reach, 0)
    py1, px1 = min(int(ys.max()) + 1 + reach, hh), min(int(xs.max()) + 1 + reach, ww)
    ph, pw = py1 - py0, px1 - px0
    level, peak = _grain_stats(here, sigma, inside)
    gy0, gx0 = y0 + py0, x0 + px0  # the defect's own patch, image px
    best, best_gap = None, math.inf
    for _ in range(DONOR_TRIES if ph <= h and pw <= w else 0):
        dy = int(torch.randint(0, h - ph + 1, (1,), generator=generator))
        dx = int(torch.randint(0, w - pw + 1, (1,), generator=generator))
        if dy < gy0 + ph and dy + ph > gy0 and dx < gx0 + pw and dx + pw > gx0:
            continue  # overlaps the defect's own patch
        patch = torch.from_numpy(np.ascontiguousarray(image[dy:dy + ph, dx:dx + pw])).permute(2, 0, 1).float()
        c_level, c_peak = _grain_stats(patch, sigma)
        gap = abs(math.log(c_level / level)) + max(0.0, math.log(c_peak / peak))
        if gap < best_gap:
            best, best_gap = patch, gap
    out = here.clone()
    if best is not None:
        out[:, py0:py1, px0:px1] = best
    return out


def _fit(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Pad (replicate) or cut (3, h, w) to (3, *shape): crops near the border can be short."""
    ph, pw = shape[0] - x.shape[1], shape[1] - x.shape[2]
    if ph > 0 or pw > 0:
        x = F.pad(x[None], (0, max(pw, 0), 0, max(ph, 0)), mode="replicate")[0]
    return x[:, :shape[0], :shape[1]]


def grain_composite(decoded: torch.Tensor, decoded_old: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                    grain: Grain, sigma: float, donor: torch.Tensor | None = None) -> torch.Tensor:
    """(3, h, w) crops at source resolution: the decode of the new and of the old codes, the source;
    mask (h, w) bool, sigma in source px -> (3, h, w) in [0, 1]:

        decoded - fine(decoded_old) + gain * fine(real),   fine(x) = x - blur(x, sigma)

    the new decode whole (its low frequencies and the fine detail the new codes drew), less the
    grain the decoder imitates, plus the real grain: the source's, the donor's inside the mask of a
    material-removing defect, at the family's gain inside the mask and whole outside it."""
    shape = tuple(source.shape[-2:])
    decoded, decoded_old, source = decoded.float(), decoded_old.float(), source.float()
    inside = gaussian_blur(mask.float()[None], max(sigma, 0.5))[0].clamp(0, 1)  # soft: no step in the grain
    fine = lambda x: x - gaussian_blur(x, sigma)  # noqa: E731
    real = fine(source)
    if grain.donor and donor is not None:
        real = real + inside * (fine(_fit(donor.float(), shape)) - real)
    gain = 1.0 + (grain.gain - 1.0) * inside
    return (decoded - fine(decoded_old) + gain * real).clamp(0, 1)
