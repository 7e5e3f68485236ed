"""VQ autoencoder (downsampling factor 8) that turns images into a grid of discrete codes.

Part of ARAS (Qian et al., "Quality-Aware Language-Conditioned Local Auto-Regressive Anomaly
Synthesis and Detection", arXiv 2508.03539): the prior re-samples these codes under a mask.
The quantizer looks codes up by cosine similarity (l2-normalised encoder outputs and codebook,
as in ViT-VQGAN / LlamaGen), which keeps codebook usage high; `restart_dead_codes` re-seeds
unused entries from encoder outputs. Losses other than the VQ terms (L1, perceptual, GAN) belong
to the training loop. No file I/O here.

EMA codebook (`TokenizerConfig.ema_decay` > 0, opt-in): instead of a codebook loss, each code
follows an exponential moving average of the (unit) encoder outputs assigned to it, with
Laplace-smoothed counts (van den Oord et al., "Neural Discrete Representation Learning",
arXiv 1711.00937, appendix A.1; Razavi et al., VQ-VAE-2, arXiv 1906.00446). The trainer calls
`ema_update` after each optimizer step; the running sums are buffers, saved with the weights.

Source-conditioned (`TokenizerConfig.source_conditioned`, this project's addition): ARAS always
writes into a known normal image, so the encoder sees the window and its change from the normal
`source` window, and the decoder draws the change on top of the source (a residual in logit
space, with the source's features fed in at every resolution). The codes then carry the defect,
not the material's texture, which the decoder takes from the real pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 8  # GroupNorm groups (channels must be divisible by it)
NORM_EPS = 1e-6  # eps of F.normalize on codes and codebook
SOURCE_EPS = 1e-3  # the source is clamped to [eps, 1 - eps] before its logit (0 and 1 have none)
EMA_EPS = 1e-5  # Laplace smoothing of the EMA code counts (a code nobody picks keeps a finite vector)


@dataclass(frozen=True)
class TokenizerConfig:
    # 128 codes: on magnetic tile the prior then reaches the tokenizer's own ceiling (language
    # control 0.51 vs ceiling 0.48), where with 512 codes, mostly spent on material texture, it
    # stopped short of it (0.48 vs 0.55) and drew less realistic defects (KID 1.17 vs 0.99), with
    # the same sampler. The ceiling itself hardly moves (0.49 vs 0.49 at 2000 steps). BENCHMARKS.md.
    codebook_size: int = 128
    code_dim: int = 32
    channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 stage per entry: 3 stages => factor 8
    res_blocks: int = 1
    beta: float = 0.25  # commitment weight
    # encode the change from a normal source window and decode on top of it (module docstring);
    # `qarad fit --source-conditioned`. Off by default: realistic after a full fit (magnetic tile
    # KID 0.67 vs 1.05) yet a worse detector trained on it (AUPRO 0.46 vs 0.56), near-invisible
    # defects after a short one (the demo; BENCHMARKS.md)
    source_conditioned: bool = False
    # 0: the codebook is trained by gradient (codebook loss). > 0, e.g. 0.99: each code is the EMA
    # of the encoder outputs assigned to it (module docstring); `qarad fit --tokenizer-ema DECAY`.
    # Opt-in, not yet measured against the default
    ema_decay: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @property
    def factor(self) -> int:
        return 2 ** len(self.channels)


@dataclass
class Quantized:
    codes: torch.Tensor  # (B, h, w) long
    z_q: torch.Tensor  # (B, code_dim, h, w) unit codebook vectors, straight-through gradient to z_e
    loss: torch.Tensor  # scalar: codebook + beta * commitment (beta * commitment alone with an EMA codebook)
    perplexity: torch.Tensor  # scalar: exp(entropy of code usage in this batch)
    z_e: torch.Tensor  # (B, code_dim, h, w) l2-normalised encoder output (samples for dead-code restarts)


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, 3, H, W) in [0, 1]
    codes: torch.Tensor  # (B, h, w) long
    vq_loss: torch.Tensor  # scalar
    perplexity: torch.Tensor  # scalar
    z_e: torch.Tensor  # (B, code_dim, h, w)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Stride-2 stem, then res blocks per stage with a stride-2 conv between stages (factor 2**stages).

    Nothing heavy runs at full resolution: that keeps a 2.7M-parameter model cheap on CPU.
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        chs = config.channels
        c_in = 6 if config.source_conditioned else 3  # the window, and its change from the source
        layers: list[nn.Module] = [nn.Conv2d(c_in, chs[0], 3, stride=2, padding=1)]
        c = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(c, ch))
                c = ch
            if i < len(chs) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c), ResBlock(c, c), nn.GroupNorm(NORM_GROUPS, c), nn.SiLU(),
                   nn.Conv2d(c, config.code_dim, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        x = images if source is None else torch.cat([images, images - source], dim=1)
        return self.body(x * 2 - 1)  # [0, 1] -> [-1, 1]


def _decoder_widths(config: TokenizerConfig) -> list[int]:
    """Decoder channels at the token resolution, then after each x2 upsampling."""
    chs = config.channels
    return [chs[-1]] + [chs[i - 1] if i > 0 else max(chs[0] // 2, NORM_GROUPS) for i in reversed(range(len(chs)))]


class SourcePyramid(nn.Module):
    """Features of the normal source window at every decoder resolution, finest first, each
    projected to the decoder's width there by a zero-initialised 1x1 conv (they join the
    decoder gradually as it learns)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        widths = _decoder_widths(config)[::-1]  # full resolution first
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.proj = nn.ModuleList(nn.Conv2d(w, w, 1) for w in widths)
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, source: torch.Tensor) -> list[torch.Tensor]:
        h = F.silu(self.stem(source * 2 - 1))
        feats = [h]
        for down in self.down:
            h = F.silu(down(h))
            feats.append(h)
        return [p(f) for p, f in zip(self.proj, feats)]


class Decoder(nn.Module):
    """Mirror of the encoder: extra capacity sits at the token resolution (cheap per parameter);
    each x2 upsampling conv also halves the width; a light head works at full resolution.

    With a source, its features are added at the token resolution and after every upsampling,
    and the output is the source plus a residual in logit space."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        chs = config.channels
        c = chs[-1]
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, c, 3, padding=1)]
        self._taps = [0]  # layer indices after which the source features of the next resolution join
        layers += [ResBlock(c, c) for _ in range(3)]
        for i in reversed(range(len(chs))):
            layers += [ResBlock(c, c) for _ in range(config.res_blocks)]
            out = chs[i - 1] if i > 0 else max(chs[0] // 2, NORM_GROUPS)
            layers += [nn.GroupNorm(NORM_GROUPS, c), nn.SiLU()] if i == 0 else []
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, padding=1)]
            self._taps.append(len(layers) - 1)
            c = out
        layers += [nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.body = nn.Sequential(*layers)  # one Sequential: the parameter names of older models
        self.source = None
        if config.source_conditioned:
            self.source = SourcePyramid(config)
            nn.init.zeros_(layers[-1].weight)  # no change drawn yet: the output starts as the source
            nn.init.zeros_(layers[-1].bias)

    def forward(self, z_q: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        if self.source is None:
            return torch.sigmoid(self.body(z_q))
        skips = self.source(source)[::-1]  # coarsest first, as the decoder meets them
        h, taps = z_q, dict(zip(self._taps, skips))
        for i, layer in enumerate(self.body):
            h = layer(h)
            if i in taps:
                h = h + taps[i]
        # the source's logit plus the change: zero change reproduces the source (up to SOURCE_EPS)
        return torch.sigmoid(torch.logit(source, eps=SOURCE_EPS) + h)


class VQTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.codebook = nn.Embedding(config.codebook_size, config.code_dim)
        nn.init.normal_(self.codebook.weight)
        if config.ema_decay:  # only then: tokenizers without an EMA codebook keep their state_dict
            self.codebook.weight.requires_grad_(False)  # moved by ema_update alone (DDP skips it)
            # (K,) counts and (K, D) sums of the unit encoder outputs assigned to each code, as EMAs;
            # each code starts as having seen its own unit vector once
            self.register_buffer("ema_cluster_size", torch.ones(config.codebook_size))
            self.register_buffer("ema_embed_sum", self.normalized_codebook().detach().clone())

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=1, eps=NORM_EPS)  # (K, code_dim)

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) unit encoder outputs -> (B, h, w) long: the nearest code of each by cosine."""
        B, D, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D)
        return (flat @ self.normalized_codebook().t()).argmax(dim=1).view(B, h, w)  # max cosine == min l2

    def _source(self, source: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The source windows a source-conditioned tokenizer needs, checked against the images'
        (B, 3, H, W) `shape`; None for an unconditioned one (it ignores any source handed in)."""
        if not self.config.source_conditioned:
            return None
        if source is None:
            raise ValueError("this tokenizer is source-conditioned: pass the normal source window(s) as `source`")
        if tuple(source.shape) != tuple(shape):
            raise ValueError(f"source {tuple(source.shape)} must have the images' shape {tuple(shape)}")
        return source

    def encode_continuous(self, images: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], H and W divisible by 8 (and, for a source-conditioned
        tokenizer, the normal `source` windows of the same shape) -> z_e (B, code_dim, H/8, W/8), unit length."""
        f = self.config.factor
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"expected images (B, 3, H, W) with H, W divisible by {f}, got {tuple(images.shape)}")
        return F.normalize(self.encoder(images, self._source(source, images.shape)), dim=1, eps=NORM_EPS)

    def encode(self, images: torch.Tensor, source: torch.Tensor | None = None) -> Quantized:
        """images (B, 3, H, W) in [0, 1] -> nearest codes by cosine similarity (see encode_continuous)."""
        z_e = self.encode_continuous(images, source)  # (B, D, h, w)
        codes = self.nearest_codes(z_e)  # (B, h, w)
        z_q = self.codes_to_latents(codes)  # (B, D, h, w)
        commitment = self.config.beta * F.mse_loss(z_e, z_q.detach())
        # an EMA codebook follows the encoder outputs (ema_update) and takes no codebook loss
        loss = commitment if self.config.ema_decay else F.mse_loss(z_q, z_e.detach()) + commitment
        usage = torch.bincount(codes.flatten(), minlength=self.config.codebook_size).float() / codes.numel()
        perplexity = torch.exp(-(usage * torch.log(usage.clamp_min(1e-10))).sum())
        return Quantized(codes=codes, z_q=z_e + (z_q - z_e).detach(), loss=loss, perplexity=perplexity, z_e=z_e)

    def decode(self, z_q: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """(B, code_dim, h, w) [+ source (B, 3, 8h, 8w)] -> images (B, 3, 8h, 8w) in [0, 1]."""
        f = self.config.factor
        return self.decoder(z_q, self._source(source, (z_q.shape[0], 3, z_q.shape[2] * f, z_q.shape[3] * f)))

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long -> (B, code_dim, h, w) unit codebook vectors."""
        return self.normalized_codebook()[codes].permute(0, 3, 1, 2)

    def decode_codes(self, codes: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.codes_to_latents(codes), source)

    def encode_edited(self, images: torch.Tensor, source: torch.Tensor | None = None,
                      edit: torch.Tensor | None = None) -> Quantized:
        """`encode`, but with `edit` (B, h, w) bool on a source-conditioned tokenizer: the images'
        codes where True and the source's own codes elsewhere, as synthesis has them (it
        re-samples only the masked tokens). Without it, the encoder spreads a defect over every
        code whose receptive field sees it, and codes kept from the source would cut part of it
        away. Loss, perplexity and z_e stay those of the images' own encoding."""
        q = self.encode(images, source)
        if edit is None or not self.config.source_conditioned:
            return q
        with torch.no_grad():
            kept = self.encode(source, source)
        return replace(q, z_q=torch.where(edit[:, None], q.z_q, kept.z_q), codes=torch.where(edit, q.codes, kept.codes))

    def forward(self, images: torch.Tensor, source: torch.Tensor | None = None,
                edit: torch.Tensor | None = None) -> TokenizerOutput:
        """Encode (`encode_edited`) and decode."""
        q = self.encode_edited(images, source, edit)
        return TokenizerOutput(recon=self.decode(q.z_q, source), codes=q.codes, vq_loss=q.loss,
                               perplexity=q.perplexity, z_e=q.z_e)

    def code_usage(self, codes: torch.Tensor) -> torch.Tensor:
        """(K,) long count of each code in `codes` (accumulate across steps for restarts)."""
        return torch.bincount(codes.reshape(-1), minlength=self.config.codebook_size)

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, codes: torch.Tensor,
                   all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """Move an EMA codebook (`ema_decay` > 0) towards the unit encoder outputs `z_e`
        (B, code_dim, h, w) assigned to `codes` (B, h, w): the trainer calls it after each optimizer
        step. `all_sum` sums the batch's per-code counts and sums over data-parallel processes
        (distributed.all_sum), so that every process keeps the same codebook."""
        if not self.config.ema_decay:
            raise ValueError("ema_update needs an EMA codebook (TokenizerConfig.ema_decay > 0)")
        K, D, decay = self.config.codebook_size, self.config.code_dim, self.config.ema_decay
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, D).float()  # (N, D)
        onehot = F.one_hot(codes.reshape(-1), K).to(flat)  # (N, K); a matmul, not a scatter: deterministic
        stats = all_sum(torch.cat([onehot.sum(0)[:, None], onehot.t() @ flat], dim=1))  # (K, 1 + D)
        self.ema_cluster_size.mul_(decay).add_(stats[:, 0].to(self.ema_cluster_size), alpha=1 - decay)
        self.ema_embed_sum.mul_(decay).add_(stats[:, 1:].to(self.ema_embed_sum), alpha=1 - decay)
        n = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + EMA_EPS) / (n + K * EMA_EPS) * n  # Laplace: no count is 0
        self.codebook.weight.copy_(self.ema_embed_sum / smoothed[:, None])  # the lookup normalises it

    @torch.no_grad()
    def restart_dead_codes(self, z_e_samples: torch.Tensor, usage_counts: torch.Tensor,
                           threshold: int = 1, generator: torch.Generator | None = None) -> int:
        """Re-seed codes used fewer than `threshold` times with random encoder outputs.

        z_e_samples: (N, code_dim) or (B, code_dim, h, w) encoder outputs; usage_counts: (K,).
        Returns the number of codes restarted. The caller resets its usage counts afterwards.
        """
        if z_e_samples.dim() == 4:
            z_e_samples = z_e_samples.permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)  # (N, D)
        dead = torch.nonzero(usage_counts.to(self.codebook.weight.device) < threshold).flatten()
        if dead.numel() == 0 or z_e_samples.shape[0] == 0:
            return 0
        pick = torch.randint(z_e_samples.shape[0], (dead.numel(),), generator=generator,
                             device=generator.device if generator is not None else "cpu")
        samples = F.normalize(z_e_samples.detach().float(), dim=1, eps=NORM_EPS)[pick.to(z_e_samples.device)]
        self.codebook.weight[dead] = samples.to(self.codebook.weight)
        if self.config.ema_decay:  # a restarted code's EMA starts over from its new vector, seen once
            self.ema_embed_sum[dead] = samples.to(self.ema_embed_sum)
            self.ema_cluster_size[dead] = 1.0
        return int(dead.numel())
