"""VQ autoencoder (downsampling factor 8) that turns images into a grid of discrete codes.

Part of ARAS (Qian et al., "Quality-Aware Language-Conditioned Local Auto-Regressive Anomaly
Synthesis and Detection", arXiv 2508.03539): the prior re-samples these codes under a mask.
The quantizer looks codes up by cosine similarity (l2-normalised encoder outputs and codebook,
as in ViT-VQGAN / LlamaGen), which keeps codebook usage high; `restart_dead_codes` re-seeds
unused entries from encoder outputs. Losses other than the VQ terms (L1, perceptual, GAN) belong
to the training loop. No file I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 8  # GroupNorm groups (channels must be divisible by it)
NORM_EPS = 1e-6  # eps of F.normalize on codes and codebook


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

    @property
    def factor(self) -> int:
        return 2 ** len(self.channels)


@dataclass
class Quantized:
    codes: torch.Tensor  # (B, h, w) long
    z_q: torch.Tensor  # (B, code_dim, h, w) unit codebook vectors, straight-through gradient to z_e
    loss: torch.Tensor  # scalar: codebook + beta * commitment
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
        layers: list[nn.Module] = [nn.Conv2d(3, chs[0], 3, stride=2, padding=1)]
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1)  # [0, 1] -> [-1, 1]


class Decoder(nn.Module):
    """Mirror of the encoder: extra capacity sits at the token resolution (cheap per parameter);
    each x2 upsampling conv also halves the width; a light head works at full resolution."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        chs = config.channels
        c = chs[-1]
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, c, 3, padding=1)]
        layers += [ResBlock(c, c) for _ in range(3)]
        for i in reversed(range(len(chs))):
            layers += [ResBlock(c, c) for _ in range(config.res_blocks)]
            out = chs[i - 1] if i > 0 else max(chs[0] // 2, NORM_GROUPS)
            layers += [nn.GroupNorm(NORM_GROUPS, c), nn.SiLU()] if i == 0 else []
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, padding=1)]
            c = out
        layers += [nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(z_q))


class VQTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.codebook = nn.Embedding(config.codebook_size, config.code_dim)
        nn.init.normal_(self.codebook.weight)

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=1, eps=NORM_EPS)  # (K, code_dim)

    def encode_continuous(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], H and W divisible by 8 -> z_e (B, code_dim, H/8, W/8), unit length."""
        f = self.config.factor
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"expected images (B, 3, H, W) with H, W divisible by {f}, got {tuple(images.shape)}")
        return F.normalize(self.encoder(images), dim=1, eps=NORM_EPS)

    def encode(self, images: torch.Tensor) -> Quantized:
        """images (B, 3, H, W) in [0, 1] -> nearest codes by cosine similarity (see encode_continuous)."""
        z_e = self.encode_continuous(images)  # (B, D, h, w)
        B, D, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D)
        codebook = self.normalized_codebook()
        codes = (flat @ codebook.t()).argmax(dim=1)  # max cosine == min l2 on unit vectors
        z_q = codebook[codes].view(B, h, w, D).permute(0, 3, 1, 2)  # (B, D, h, w)
        codebook_loss = F.mse_loss(z_q, z_e.detach())
        commitment = F.mse_loss(z_e, z_q.detach())
        usage = torch.bincount(codes, minlength=self.config.codebook_size).float() / codes.numel()
        perplexity = torch.exp(-(usage * torch.log(usage.clamp_min(1e-10))).sum())
        return Quantized(codes=codes.view(B, h, w), z_q=z_e + (z_q - z_e).detach(),
                         loss=codebook_loss + self.config.beta * commitment,
                         perplexity=perplexity, z_e=z_e)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, code_dim, h, w) -> images (B, 3, 8h, 8w) in [0, 1]."""
        return self.decoder(z_q)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long -> (B, code_dim, h, w) unit codebook vectors."""
        return self.normalized_codebook()[codes].permute(0, 3, 1, 2)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(self.codes_to_latents(codes))

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        q = self.encode(images)
        return TokenizerOutput(recon=self.decode(q.z_q), codes=q.codes, vq_loss=q.loss,
                               perplexity=q.perplexity, z_e=q.z_e)

    def code_usage(self, codes: torch.Tensor) -> torch.Tensor:
        """(K,) long count of each code in `codes` (accumulate across steps for restarts)."""
        return torch.bincount(codes.reshape(-1), minlength=self.config.codebook_size)

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
        return int(dead.numel())
