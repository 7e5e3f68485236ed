"""ARAS on whole images: cut a local window around the mask, re-sample its masked tokens, blend back.

Only the window around the mask is tokenized, so cost does not depend on image size. The
window is sized to the mask (window.py: the mask spans half of it, zoomed in up to `max_zoom`)
at the run's working scale (its resolution policy) and resized to the prior's window; the
generated pixels are resized back and blended at the *source* resolution: every pixel outside
the dilated mask is bit-identical to the input image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.resolution import ResolutionPolicy
from ..defects.prompts import family_of
from ..text import TextEncoder
from . import model
from .aras import SamplerConfig, blend, mix_prompts, sample_masked, token_mask_from_pixels
from .composite import GRAIN, SPLIT_SIGMA_WINDOW, UNKNOWN, donor_crop, grain_composite
from .prior import Prior
from .refiner import Refiner
from .tokenizer import VQTokenizer
from .window import WindowCut, WindowRule, coverage, window_cut


@dataclass
class _GrainSource:
    image: np.ndarray  # the whole source image: donor material comes from elsewhere in it
    prompt: str  # whose family sets the grain's gain (the nearer prompt of a mix)
    seed: int  # draws the donor


@dataclass
class SynthResult:
    image: np.ndarray  # (H, W, 3) float32, the input with the defect written in
    mask: np.ndarray  # (H, W) bool, the pixels that actually changed
    steps: int  # sequential decoding steps (= masked tokens)
    window: tuple[int, int, int, int]  # y0, x0, y1, x1 in source px


class ARAS:
    """A fitted tokenizer + prior (+ refiner, when the model has one) with the run's resolution
    policy; `synthesize` one sample at a time."""

    def __init__(self, tokenizer: VQTokenizer, prior: Prior, policy: ResolutionPolicy, rule: WindowRule,
                 text: TextEncoder | None = None, refiner: Refiner | None = None):
        self.tokenizer, self.prior, self.policy, self.rule = tokenizer.eval(), prior.eval(), policy, rule
        self.refiner = refiner.eval() if refiner is not None else None
        self.text = text or TextEncoder()

    @property
    def window(self) -> int:
        """Window px a side (the prior's window)."""
        return self.rule.side

    @classmethod
    def load(cls, folder: str | Path) -> "ARAS":
        config = model.read_config(folder)
        networks = model.load_networks(folder, config)
        return cls(networks.tokenizer, networks.prior, config.policy, config.fit.window_rule, refiner=networks.refiner)

    def _generated(self, cut: WindowCut, old: torch.Tensor, new: torch.Tensor, config: SamplerConfig,
                   cover: torch.Tensor, text: torch.Tensor, grain: "_GrainSource | None" = None) -> torch.Tensor:
        """The crop as the new codes describe it, at source resolution (3, hh, ww) in [0, 1]; with the
        grain composite, its low frequencies and the grain of real material (composite.py)."""
        residual, both = config.composite == "residual", config.composite in ("residual", "grain")
        source = cut.window[None].expand(2 if both else 1, -1, -1, -1)
        decoded = self.tokenizer.decode_codes(torch.stack([new, old]) if both else new[None], source)
        if residual:  # only what the prior changed, on top of the real pixels
            delta = F.interpolate(decoded[:1] - decoded[1:], size=cut.crop.shape[-2:], mode="bilinear",
                                  align_corners=False)[0]
            return (cut.crop + delta).clamp(0, 1)
        old_decoded = decoded[1:] if both else None
        decoded = decoded[:1]
        if self.refiner is not None and config.refine:
            decoded = self.refiner(decoded, cut.window[None], cover[None], text[None])
        at_source = lambda x: F.interpolate(x, size=cut.crop.shape[-2:], mode="bilinear",  # noqa: E731
                                            align_corners=False)[0].clamp(0, 1)
        if config.composite != "grain":
            return at_source(decoded)
        sigma = SPLIT_SIGMA_WINDOW * (sum(cut.crop.shape[-2:]) / 2) / self.window  # source px
        kind = GRAIN.get(family_of(grain.prompt) or "", UNKNOWN)
        donor = None
        if kind.donor:
            donor = donor_crop(grain.image, cut.box, cut.crop_mask, sigma, torch.Generator().manual_seed(grain.seed))
        return grain_composite(at_source(decoded), at_source(old_decoded), cut.crop, cut.crop_mask, kind, sigma, donor)

    @torch.inference_mode()
    def synthesize(self, image: np.ndarray, mask: np.ndarray, prompt: str, seed: int,
                   config: SamplerConfig = SamplerConfig(), prompt_b: str | None = None, mix: float = 0.0) -> SynthResult:
        """Write `prompt` into `image` inside `mask`; with `prompt_b`, the prompt embedding is
        interpolated towards it by `mix` in [0, 1] (aras.mix_prompts; mix 0 is `prompt` alone)."""
        if prompt_b is None and mix != 0.0:
            raise ValueError(f"mix {mix:g} needs prompt_b: the mix interpolates from the prompt towards it")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix:g}")
        h, w = image.shape[:2]
        cut = window_cut(image, mask, self.policy, self.rule)
        s = self.window
        cover = coverage(cut.crop_mask, s)
        m = cover > 0
        # blend dilates by dilate_px *source* px; re-sample every token that blending can reach
        grow = s / min(cut.crop.shape[-2:])  # window px per source px
        tokens = token_mask_from_pixels(m, 8, math.ceil(config.dilate_px * max(grow, 1.0)))
        codes = self.tokenizer.encode(cut.window[None], cut.window[None]).codes[0]  # the source is the window
        # one prompt per call: an embedding never depends on which other prompt shared its batch
        text = self.text.encode([prompt])[0]
        text_b = self.text.encode([prompt_b])[0] if prompt_b is not None else None
        g = torch.Generator().manual_seed(seed)
        res = sample_masked(self.prior, codes, tokens, text, config, g, text_b=text_b, mix=mix)
        gen = self._generated(cut, codes, res.codes, config, cover,
                              text if text_b is None else mix_prompts(text, text_b, mix),
                              _GrainSource(image, prompt if prompt_b is None or mix < 0.5 else prompt_b, seed))
        out = blend(cut.crop, gen, cut.crop_mask, config)
        result = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).clone()
        changed = torch.zeros(h, w, dtype=torch.bool)
        y0, x0, y1, x1 = cut.box
        y1, x1 = min(y1, h), min(x1, w)
        result[:, y0:y1, x0:x1] = out.image[:, : y1 - y0, : x1 - x0]
        changed[y0:y1, x0:x1] = out.changed[: y1 - y0, : x1 - x0]
        return SynthResult(result.permute(1, 2, 0).numpy(), changed.numpy(), res.steps, cut.box)
