"""Text-conditioned detail decoder: restores, inside the mask, the detail the tokenizer drops.

A factor-8 code grid with a small codebook keeps a defect's layout (where, how large, dark or
bright) but loses what tells defect types apart at the pixel level: a stain's tide line, a dent's
light-dark shading, a fray's fibres come back as plain blobs and strokes (BENCHMARKS.md, the
tokenizer's ceiling), and the material's own texture under the mask comes back smoothed. Like
the text-conditioned super-resolution stage of Muse (Chang et al. 2023), this small U-Net takes
the decoded window, the window as it was before synthesis, the mask and the prompt embedding and
adds a residual; it is fitted on the corpus to map encode/decode of a render back to the render.
It sees only the window; blending outside the mask is left to `aras.blend`. Optional (`qarad fit
--refiner-steps`): its samples are more realistic, but a detector learned less from them on the
demo (README, Architecture). No file I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 8


@dataclass(frozen=True)
class RefinerConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # per resolution level; one stride-2 step between
    text_dim: int = 384


class FiLMBlock(nn.Module):
    """Residual conv block whose normalised activations are scaled and shifted by the prompt."""

    def __init__(self, c_in: int, c_out: int, text_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.GroupNorm(NORM_GROUPS, c_out)
        self.film = nn.Linear(text_dim, 2 * c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(text)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(self.conv1(F.silu(x))) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Refiner(nn.Module):
    def __init__(self, config: RefinerConfig = RefinerConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        self.stem = nn.Conv2d(7, c[0], 3, padding=1)  # decoded RGB + source RGB + mask coverage
        self.down = nn.ModuleList(FiLMBlock(c[max(i - 1, 0)], c[i], config.text_dim) for i in range(len(c)))
        self.up = nn.ModuleList(FiLMBlock(c[i + 1] + c[i], c[i], config.text_dim) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # starts as the identity: decoded pixels pass unchanged
        nn.init.zeros_(self.head.bias)

    def forward(self, decoded: torch.Tensor, source: torch.Tensor, cover: torch.Tensor, text: torch.Tensor
                ) -> torch.Tensor:
        """decoded (B, 3, S, S) in [0, 1]: the window as the new codes draw it; source (B, 3, S, S):
        the window before synthesis (the material's own texture under the mask); cover (B, S, S)
        mask coverage; text (B, text_dim) -> (B, 3, S, S): decoded plus the predicted detail (not
        clamped: the loss sees it raw)."""
        if decoded.shape[-1] % 2 ** (len(self.config.channels) - 1):
            raise ValueError(f"window side {decoded.shape[-1]} must be divisible by "
                             f"{2 ** (len(self.config.channels) - 1)}")
        h = self.stem(torch.cat([decoded * 2 - 1, source * 2 - 1, cover[:, None] * 2 - 1], dim=1))
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.avg_pool2d(h, 2)
            h = block(h, text)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = block(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skip], dim=1), text)
        return decoded + self.head(F.silu(h))
