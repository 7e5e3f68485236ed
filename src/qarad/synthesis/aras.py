"""ARAS masked sampler and blending: small pure functions that take a `torch.Generator`.

Auto-regressive anomaly synthesis after Qian et al., "Quality-Aware Language-Conditioned Local
Auto-Regressive Anomaly Synthesis and Detection", arXiv 2508.03539. Only tokens whose 8x8 cell
touches the dilated pixel mask are re-sampled ("hard gate": frozen codes are copied, never
sampled); all frozen codes are fed in one prefill chunk, so sequential model calls equal the
number of masked tokens. Classifier-free guidance batches [cond, null]; temperature / top-k /
top-p shape each step. The decoded window is blended back with a feathered alpha that is exactly
0 outside the dilated mask, so those pixels stay bit-identical to the input.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .prior import Prior
from .sampler_config import SamplerConfig

TEXT_NORM_EPS = 1e-8  # guard when renormalising an interpolated prompt embedding


@dataclass
class SampleResult:
    codes: torch.Tensor  # (G, G) long
    steps: int  # sequential model calls that each produced one code (prefill + decode_steps)


@dataclass
class BlendResult:
    image: torch.Tensor  # (3, H, W)
    changed: torch.Tensor  # (H, W) bool: pixels whose value differs from the original


# ---- masks -----------------------------------------------------------------------------------
def dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    """(H, W) bool -> (H, W) bool grown by `px` pixels (square / Chebyshev neighbourhood)."""
    if px <= 0:
        return mask.bool().clone()
    m = mask.float()[None, None]  # (H, W) -> (1, 1, H, W)
    return F.max_pool2d(m, 2 * px + 1, stride=1, padding=px)[0, 0] > 0


def token_mask_from_pixels(mask: torch.Tensor, factor: int = 8, dilate_px: int = 0) -> torch.Tensor:
    """(H, W) bool -> (H/factor, W/factor) bool: a token is editable when its cell touches the dilated mask."""
    H, W = mask.shape
    if H % factor or W % factor:
        raise ValueError(f"mask size {H}x{W} is not divisible by the token factor {factor}")
    cells = dilate(mask, dilate_px).float()[None, None]  # (1, 1, H, W)
    return F.max_pool2d(cells, factor)[0, 0] > 0


def feather_alpha(mask: torch.Tensor, dilate_px: int, feather_px: int) -> torch.Tensor:
    """(H, W) float in [0, 1]: 1 within dilate_px - feather_px of the mask, then a linear ramp
    that reaches exactly 0 beyond dilate_px (a mean of nested dilations)."""
    r0 = max(dilate_px - feather_px, 0)
    levels = [dilate(mask, r).float() for r in range(r0, max(dilate_px, 0) + 1)]
    return torch.stack(levels).mean(dim=0)


# ---- logits ----------------------------------------------------------------------------------
def apply_cfg(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance; written so that scale 1 returns exactly `cond_logits`."""
    return cond_logits + (scale - 1.0) * (cond_logits - uncond_logits)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(..., V) -> same, with -inf outside the top-k entries and outside the nucleus: the smallest
    set of most likely entries whose probability mass is >= top_p."""
    out = logits
    V = logits.shape[-1]
    if 0 < top_k < V:
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        out = out.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely entries
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False  # always keep the most likely entry
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_logits(logits: torch.Tensor, config: SamplerConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, V) -> (B,) long codes after temperature, top-k and top-p."""
    if config.temperature <= 0:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p)
    probs = filtered.softmax(dim=-1).to(generator.device)  # a CPU generator also drives a GPU prior
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


def mix_prompts(text: torch.Tensor, text_b: torch.Tensor, mix: float) -> torch.Tensor:
    """Embedding interpolation (1-mix)*text + mix*text_b of two unit embeddings, renormalised to unit
    length. The endpoints are the prompts themselves, bit for bit, so mix 0 (1) draws exactly what
    prompting with `text` (`text_b`) alone draws."""
    if mix == 0.0:
        return text
    if mix == 1.0:
        return text_b
    t = (1.0 - mix) * text + mix * text_b
    return t / t.norm(dim=-1, keepdim=True).clamp_min(TEXT_NORM_EPS)


# ---- sampling --------------------------------------------------------------------------------
@contextmanager
def _eval(prior: Prior):
    was_training = prior.training
    prior.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        prior.train(was_training)


def _conditioning(prior: Prior, text, text_b, mix: float, config: SamplerConfig, rows: int):
    """-> (text (B, D) or None, drop_prompt (B,) or None, guided); B = 2*rows ([cond.., null..]) with CFG."""
    device = prior.null_prompt_tokens.device
    if text is None:
        if text_b is not None:
            raise ValueError("text_b needs text: prompt interpolation mixes two prompts")
        return None, None, False
    text = text.to(device=device, dtype=prior.null_prompt_tokens.dtype)
    if text_b is not None:
        text = mix_prompts(text, text_b.to(text), mix)
    if config.cfg_scale == 1.0:
        return text[None].expand(rows, -1), None, False
    drop = torch.arange(2 * rows, device=device) >= rows
    return text[None].expand(2 * rows, -1), drop, True


def _next_codes(logits: torch.Tensor, rows: int, guided: bool, config: SamplerConfig, generator) -> torch.Tensor:
    """(B, V) logits of a [cond.., null..] or plain batch -> (rows,) sampled codes."""
    if guided:
        logits = apply_cfg(logits[:rows], logits[rows:], config.cfg_scale)
    return sample_logits(logits, config, generator)


def sample_masked(prior: Prior, codes: torch.Tensor, token_mask: torch.Tensor, text: torch.Tensor | None,
                  config: SamplerConfig, generator: torch.Generator, text_b: torch.Tensor | None = None,
                  mix: float = 0.0) -> SampleResult:
    """Re-sample the codes under token_mask (G, G) bool, raster order, with the KV cache.

    codes (G, G) long; text (text_dim,) unit embedding or None (unconditional).
    Frozen codes are copied to the output; only masked positions are ever written.
    """
    result = sample_masked_batch(prior, codes[None], token_mask, text, config, generator, text_b, mix)
    return SampleResult(codes=result.codes[0], steps=result.steps)


def sample_masked_batch(prior: Prior, codes: torch.Tensor, token_mask: torch.Tensor, text: torch.Tensor | None,
                        config: SamplerConfig, generator: torch.Generator, text_b: torch.Tensor | None = None,
                        mix: float = 0.0) -> SampleResult:
    """`sample_masked` for S windows (or S copies of one window) sharing one mask and prompt.

    codes (S, G, G) -> SampleResult(codes (S, G, G), steps). Decoding is bound by reading the
    weights, so S rows cost little more than one. With S > 1, row 0 need not be the draw a
    single-window call with the same generator makes.
    """
    device = prior.null_prompt_tokens.device
    S = codes.shape[0]
    out = codes.clone(memory_format=torch.contiguous_format)
    positions = torch.nonzero(token_mask.reshape(-1)).flatten().tolist()  # raster order
    if not positions:
        return SampleResult(codes=out, steps=0)
    with _eval(prior):
        cond, drop, guided = _conditioning(prior, text, text_b, mix, config, S)
        reps = 2 if guided else 1
        codes_b = codes.to(device).repeat(reps, 1, 1)  # (S, G, G) -> (B, G, G)
        mask_b = token_mask.to(device)[None].expand(reps * S, -1, -1)
        logits, cache = prior.prefill(codes_b, mask_b, cond, drop)
        flat = out.view(S, -1)
        for j, pos in enumerate(positions):
            step_codes = _next_codes(logits, S, guided, config, generator)  # (S,)
            flat[:, pos] = step_codes.to(flat.device)
            if j + 1 < len(positions):
                logits, cache = prior.decode_step(step_codes.to(device).repeat(reps), pos, positions[j + 1], cache)
    return SampleResult(codes=out, steps=len(positions))


def naive_resample(prior: Prior, codes: torch.Tensor, text: torch.Tensor | None, config: SamplerConfig,
                   generator: torch.Generator) -> SampleResult:
    """Reference slow path: the whole grid masked, one full uncached forward pass per code."""
    device = prior.null_prompt_tokens.device
    g = prior.config.grid
    work = codes.to(device).clone()
    mask = torch.ones(g, g, dtype=torch.bool, device=device)
    with _eval(prior):
        cond, drop, guided = _conditioning(prior, text, None, 0.0, config, 1)
        B = 2 if guided else 1
        flat = work.view(-1)
        for j in range(g * g):  # positions are the raster indices 0..N-1
            output = prior(work[None].expand(B, -1, -1), mask[None].expand(B, -1, -1), cond, drop)
            flat[j] = _next_codes(output.logits[:, j], 1, guided, config, generator)[0]
    return SampleResult(codes=work.to(codes.device), steps=g * g)


# ---- blending --------------------------------------------------------------------------------
def blend(original: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor, config: SamplerConfig) -> BlendResult:
    """Paste `generated` into `original` (both (3, H, W)) under the feathered, dilated mask.

    alpha = feather(dilate(mask)) * strength is exactly 0 outside the dilated mask and those
    pixels are taken from `original` by selection, not arithmetic, so they are bit-identical.
    """
    alpha = (feather_alpha(mask, config.dilate_px, config.feather_px) * config.strength).to(original.dtype)
    mixed = alpha * generated.to(original.dtype) + (1 - alpha) * original
    image = torch.where(alpha > 0, mixed, original)
    return BlendResult(image=image, changed=(image != original).any(dim=0))
