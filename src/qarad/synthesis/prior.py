"""Text-conditioned transformer prior over a local code window, with context from all sides.

Part of ARAS (Qian et al., "Quality-Aware Language-Conditioned Local Auto-Regressive Anomaly
Synthesis and Detection", arXiv 2508.03539). A purely raster-causal model would only see frozen
codes above/left of the mask; here the whole window is a bidirectional prefix:

    [P prompt tokens] [G*G context tokens, masked positions blanked] [M generated tokens]

prompt: a projection of the 384-d MiniLM embedding, or learned null tokens (classifier-free
guidance). context: code embedding + 2-D position, or [MASK] + position where the code is to be
generated. Generated token j (raster order over masked positions) is BOS (j = 0) or
code + position of the code generated at step j-1, plus a "target position" embedding of the
position it predicts. Prompt + context attend bidirectionally (prefix-LM); generated tokens see
the whole prefix and earlier generated tokens. So all frozen codes go in one prefill chunk and
sampling takes exactly M sequential model calls (the prefill, which yields code 0, then M-1
`decode_step`s), each reusing an explicit, preallocated `KVCache` (LlamaGen style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02  # GPT-2 / nanoGPT initialisation


@dataclass(frozen=True)
class PriorConfig:
    vocab_size: int = 128  # = the tokenizer's codebook size
    grid: int = 8  # window side in tokens (FitConfig.window / 8)
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    text_dim: int = 384
    n_prompt_tokens: int = 4
    dropout: float = 0.0


@dataclass
class PriorOutput:
    logits: torch.Tensor  # (B, M_max, vocab): step j predicts the code at positions[:, j]
    target: torch.Tensor  # (B, M_max) long: true codes (0 where not valid)
    valid: torch.Tensor  # (B, M_max) bool: j < number of masked tokens of that sample
    positions: torch.Tensor  # (B, M_max) long: flat raster index predicted at step j


@dataclass
class KVCache:
    """Preallocated keys/values per layer, (B, n_heads, capacity, head_dim); `length` filled."""
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]


def masked_positions(token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) bool -> positions (B, M_max) long in raster order, valid (B, M_max) bool.

    Invalid (padding) slots hold unmasked positions; they are ignored through `valid`.
    """
    B, N = token_mask.shape
    idx = torch.arange(N, device=token_mask.device).expand(B, N)
    order = torch.argsort(torch.where(token_mask, idx, idx + N), dim=1)  # masked first, in raster order
    counts = token_mask.sum(dim=1)
    m_max = int(counts.max()) if B else 0
    positions = order[:, :m_max]
    valid = torch.arange(m_max, device=token_mask.device)[None] < counts[:, None]
    return positions, valid


def attention_mask(prefix: int, total: int, device=None) -> torch.Tensor:
    """(total, total) bool, True = may attend: bidirectional prefix, causal afterwards."""
    q = torch.arange(total, device=device)[:, None]
    k = torch.arange(total, device=device)[None, :]
    return (k < prefix) | (k <= q)


class SelfAttention(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model {config.d_model} is not divisible by n_heads {config.n_heads}")
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        return tuple(t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, hs = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_heads * hs))  # (B, nh, T, hs) -> (B, T, C)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self._merge(y)

    def forward_cached(self, x: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, start: int,
                       mask: torch.Tensor | None) -> torch.Tensor:
        """Write this chunk's keys/values at [start, start+T) and attend over [0, start+T)."""
        q, k, v = self._split(x)
        end = start + x.shape[1]
        k_buf[:, :, start:end] = k
        v_buf[:, :, start:end] = v
        y = F.scaled_dot_product_attention(q, k_buf[:, :, :end], v_buf[:, :, :end], attn_mask=mask)
        return self._merge(y)


class Block(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        d = config.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(config.dropout))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.mlp(self.ln2(x))

    def forward_cached(self, x, k_buf, v_buf, start: int, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln1(x), k_buf, v_buf, start, mask)
        return x + self.mlp(self.ln2(x))


class Prior(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        d, g = config.d_model, config.grid
        self.prompt_proj = nn.Linear(config.text_dim, config.n_prompt_tokens * d)
        self.null_prompt_tokens = nn.Parameter(torch.randn(config.n_prompt_tokens, d) * INIT_STD)
        self.code_emb = nn.Embedding(config.vocab_size, d)
        self.row_emb = nn.Embedding(g, d)  # 2-D position of a context / previously generated code
        self.col_emb = nn.Embedding(g, d)
        self.target_row_emb = nn.Embedding(g, d)  # position a generated token predicts
        self.target_col_emb = nn.Embedding(g, d)
        self.mask_emb = nn.Parameter(torch.randn(d) * INIT_STD)
        self.bos_emb = nn.Parameter(torch.randn(d) * INIT_STD)
        self.stream_emb = nn.Parameter(torch.randn(d) * INIT_STD)  # marks the generated stream
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled residual projections (GPT-2)
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, INIT_STD / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def prefix_len(self) -> int:
        return self.config.n_prompt_tokens + self.config.grid ** 2

    # ---- embeddings -------------------------------------------------------------------------
    def null_prompt(self, batch: int = 1) -> torch.Tensor:
        """(batch, P, d) learned unconditional prompt tokens."""
        return self.null_prompt_tokens.unsqueeze(0).expand(batch, -1, -1)

    def _prompt(self, text: torch.Tensor | None, drop_prompt: torch.Tensor | None, batch: int) -> torch.Tensor:
        null = self.null_prompt(batch)
        if text is None:
            return null
        cond = self.prompt_proj(text).view(batch, self.config.n_prompt_tokens, -1)  # (B, P*d) -> (B, P, d)
        if drop_prompt is None:
            return cond
        return torch.where(drop_prompt.view(batch, 1, 1), null, cond)

    def _pos(self, flat: torch.Tensor) -> torch.Tensor:
        g = self.config.grid
        return self.row_emb(flat // g) + self.col_emb(flat % g)

    def _target_pos(self, flat: torch.Tensor) -> torch.Tensor:
        g = self.config.grid
        return self.target_row_emb(flat // g) + self.target_col_emb(flat % g)

    def _prefix(self, codes, token_mask, text, drop_prompt) -> torch.Tensor:
        """(B, P + N, d): prompt tokens then context tokens (masked codes blanked)."""
        B, N = codes.shape[0], self.config.grid ** 2
        flat_codes, flat_mask = codes.reshape(B, N), token_mask.reshape(B, N)
        pos = torch.arange(N, device=codes.device)
        context = torch.where(flat_mask[..., None], self.mask_emb, self.code_emb(flat_codes)) + self._pos(pos)
        return torch.cat([self._prompt(text, drop_prompt, B), context], dim=1)

    def _bos(self, target_pos: torch.Tensor) -> torch.Tensor:
        """target_pos (B, 1) -> (B, 1, d) first generated-stream input."""
        return self.bos_emb + self._target_pos(target_pos) + self.stream_emb

    def _step(self, prev_code: torch.Tensor, prev_pos: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
        """(B, T) each -> (B, T, d) generated-stream inputs after the first."""
        return self.code_emb(prev_code) + self._pos(prev_pos) + self._target_pos(target_pos) + self.stream_emb

    def _check(self, codes: torch.Tensor, token_mask: torch.Tensor) -> None:
        g = self.config.grid
        if codes.shape[1:] != (g, g) or token_mask.shape != codes.shape:
            raise ValueError(f"expected codes and token_mask of shape (B, {g}, {g}), "
                             f"got {tuple(codes.shape)} and {tuple(token_mask.shape)}")

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(h))

    # ---- teacher-forced training pass --------------------------------------------------------
    def forward(self, codes: torch.Tensor, token_mask: torch.Tensor, text: torch.Tensor | None = None,
                drop_prompt: torch.Tensor | None = None) -> PriorOutput:
        """codes (B, G, G) long, token_mask (B, G, G) bool (True = to generate), text (B, text_dim)
        or None (all-null prompt), drop_prompt (B,) bool (use the null prompt for those rows)."""
        self._check(codes, token_mask)
        B, N = codes.shape[0], self.config.grid ** 2
        positions, valid = masked_positions(token_mask.reshape(B, N))  # (B, M)
        target = torch.where(valid, codes.reshape(B, N).gather(1, positions), 0)
        M = positions.shape[1]
        if M == 0:
            return PriorOutput(self.null_prompt_tokens.new_zeros(B, 0, self.config.vocab_size), target, valid, positions)
        stream = torch.cat([self._bos(positions[:, :1]),
                            self._step(target[:, :-1], positions[:, :-1], positions[:, 1:])], dim=1)
        x = self.drop(torch.cat([self._prefix(codes, token_mask, text, drop_prompt), stream], dim=1))
        mask = attention_mask(self.prefix_len, x.shape[1], device=x.device)
        for block in self.blocks:
            x = block(x, mask)
        return PriorOutput(self._logits(x[:, self.prefix_len:]), target, valid, positions)

    # ---- cached sampling ---------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int, device=None, dtype=None) -> KVCache:
        c = self.config
        ref = self.null_prompt_tokens  # a plain Parameter in every variant (also int8-quantized Linears)
        shape = (batch, c.n_heads, capacity, c.d_model // c.n_heads)
        make = lambda: torch.empty(shape, device=device or ref.device, dtype=dtype or ref.dtype)  # noqa: E731
        return KVCache(k=[make() for _ in range(c.n_layers)], v=[make() for _ in range(c.n_layers)])

    def prefill(self, codes: torch.Tensor, token_mask: torch.Tensor, text: torch.Tensor | None = None,
                drop_prompt: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """Run prompt + context + BOS as one chunk -> (logits (B, vocab) for generated step 0, cache).

        Every row must have the same number M >= 1 of masked tokens; the cache holds room for
        the M - 1 `decode_step`s that follow.
        """
        self._check(codes, token_mask)
        B, N = codes.shape[0], self.config.grid ** 2
        positions, valid = masked_positions(token_mask.reshape(B, N))
        if positions.shape[1] == 0 or not bool(valid.all()):
            raise ValueError("prefill needs the same, non-zero number of masked tokens in every row")
        x = torch.cat([self._prefix(codes, token_mask, text, drop_prompt), self._bos(positions[:, :1])], dim=1)
        cache = self.new_cache(B, self.prefix_len + positions.shape[1], device=x.device, dtype=x.dtype)
        mask = attention_mask(self.prefix_len, x.shape[1], device=x.device)
        for block, k_buf, v_buf in zip(self.blocks, cache.k, cache.v):
            x = block.forward_cached(x, k_buf, v_buf, 0, mask)
        cache.length = x.shape[1]
        return self._logits(x[:, -1]), cache

    def decode_step(self, prev_code: torch.Tensor, prev_pos, target_pos, cache: KVCache
                    ) -> tuple[torch.Tensor, KVCache]:
        """Feed the code sampled at the previous step -> (logits (B, vocab) for target_pos, cache).

        prev_code (B,) long; prev_pos / target_pos flat raster indices (int or (B,) long).
        """
        if cache.length >= cache.capacity:
            raise ValueError(f"KV cache is full ({cache.capacity} tokens)")
        B = prev_code.shape[0]
        as_col = lambda p: torch.as_tensor(p, device=prev_code.device).expand(B).reshape(B, 1)  # noqa: E731
        x = self._step(prev_code.reshape(B, 1), as_col(prev_pos), as_col(target_pos))  # (B, 1, d)
        for block, k_buf, v_buf in zip(self.blocks, cache.k, cache.v):
            x = block.forward_cached(x, k_buf, v_buf, cache.length, None)
        cache.length += 1
        return self._logits(x[:, -1]), cache


def loss_terms(output: PriorOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the batch's valid generated tokens, their count): a data-parallel
    fit divides the sum by the count over every process's slice (distributed.global_mean)."""
    B, M, V = output.logits.shape
    ce = F.cross_entropy(output.logits.reshape(B * M, V), output.target.reshape(B * M), reduction="none")
    valid = output.valid.reshape(B * M).to(ce.dtype)
    return (ce * valid).sum(), valid.sum()


def loss(output: PriorOutput) -> torch.Tensor:
    """Scalar mean cross-entropy over all valid generated tokens of the batch."""
    total, count = loss_terms(output)
    return total / count.clamp_min(1)
