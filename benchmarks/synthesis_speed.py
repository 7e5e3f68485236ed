"""Micro speed check of ARAS sampling (not a test): cached masked sampler vs the naive slow path.

Default sizes (prior d=256, 6 layers, 16x16 window; tokenizer defaults at 128x128), random
weights, CFG on (batch [cond, null]). Prints one JSON object; writes no files. Each time is
reported as wall seconds and process CPU seconds: on a shared machine, CPU seconds with
--threads 1 estimate the wall time the same work takes on an idle core.

    python benchmarks/synthesis_speed.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from qarad.synthesis.aras import (SamplerConfig, blend, naive_resample, sample_masked, sample_masked_batch,
                                  token_mask_from_pixels)
from qarad.synthesis.prior import Prior, PriorConfig
from qarad.synthesis.tokenizer import TokenizerConfig, VQTokenizer


def forty_token_mask(grid: int) -> torch.Tensor:
    m = torch.zeros(grid, grid, dtype=torch.bool)
    m[5:10, 4:12] = True  # 5 x 8 = 40 tokens
    return m


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """-> (wall s, process CPU s) per call."""
    if warmup:
        fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def pair(t: tuple[float, float], digits: int = 4) -> dict:
    return {"wall_s": round(t[0], digits), "cpu_s": round(t[1], digits)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-steps", type=int, default=0,
                    help="0 = run naive_resample over the whole window; N = time N of its full forward "
                         "passes and extrapolate (every naive step costs the same)")
    ap.add_argument("--batch", type=int, default=8, help="windows per batched end-to-end call")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = Prior(PriorConfig()).eval()
    tok = VQTokenizer(TokenizerConfig()).eval()
    g = prior.config.grid
    cfg = SamplerConfig()
    codes = torch.randint(prior.config.vocab_size, (g, g))
    text = torch.nn.functional.normalize(torch.randn(prior.config.text_dim), dim=0)
    mask = forty_token_mask(g)
    gen = torch.Generator().manual_seed(0)

    M = int(mask.sum())
    with torch.inference_mode():
        prefill = timed(lambda: prior.prefill(codes[None].expand(2, -1, -1), mask[None].expand(2, -1, -1),
                                              text[None].expand(2, -1), torch.tensor([False, True])), args.repeats)
    cached = timed(lambda: sample_masked(prior, codes, mask, text, cfg, gen), args.repeats)

    # uncached, same 40-token mask: one full forward per generated code (isolates the KV cache gain)
    def uncached_same_mask():
        work = codes.clone()
        with torch.inference_mode():
            for j in range(M):
                prior(work[None].expand(2, -1, -1), mask[None].expand(2, -1, -1), text[None].expand(2, -1),
                      torch.tensor([False, True])).logits[:, j]
    uncached = timed(uncached_same_mask, 1, warmup=False)

    n_tokens = g * g
    if args.naive_steps:
        full = torch.ones(2, g, g, dtype=torch.bool)
        with torch.inference_mode():
            step = timed(lambda: prior(codes[None].expand(2, -1, -1), full, text[None].expand(2, -1),
                                       torch.tensor([False, True])), args.naive_steps)
        naive, naive_kind = (step[0] * n_tokens, step[1] * n_tokens), f"extrapolated from {args.naive_steps} full forwards"
    else:
        naive = timed(lambda: naive_resample(prior, codes, text, cfg, gen), 1, warmup=False)
        naive_kind = "measured"

    # end to end: encode 128x128 windows, token mask, sample, decode, blend
    size = g * tok.config.factor
    pixel_mask = torch.zeros(size, size, dtype=torch.bool)
    pixel_mask[44:76, 36:92] = True  # dilated by 4 px: a 5 x 8 = 40 token block
    tokens = token_mask_from_pixels(pixel_mask, tok.config.factor, cfg.dilate_px)

    def anomalies(n: int):
        images = torch.rand(n, 3, size, size)
        with torch.inference_mode():
            window_codes = tok.encode(images).codes
            sample = sample_masked_batch(prior, window_codes, tokens, text, cfg, gen)
            generated = tok.decode_codes(sample.codes)
            return [blend(images[i], generated[i], pixel_mask, cfg) for i in range(n)]
    e2e = timed(lambda: anomalies(1), args.repeats)
    e2e_batch = timed(lambda: anomalies(args.batch), max(args.repeats // 2, 1))

    print(json.dumps({
        "threads": args.threads, "masked_tokens": M, "window_tokens": n_tokens,
        "prefill_cfg_batch": pair(prefill),
        "cached_sample_masked": pair(cached),
        "uncached_same_mask": pair(uncached, 3),
        "naive_resample": {**pair(naive, 2), "kind": naive_kind},
        "speedup_vs_naive": {"wall": round(naive[0] / cached[0], 1), "cpu": round(naive[1] / cached[1], 1)},
        "kv_cache_speedup_same_mask": {"wall": round(uncached[0] / cached[0], 1), "cpu": round(uncached[1] / cached[1], 1)},
        "end_to_end_one_anomaly": {**pair(e2e), "masked_tokens": int(tokens.sum()),
                                   "anomalies_per_s_wall": round(1 / e2e[0], 2),
                                   "anomalies_per_s_cpu": round(1 / e2e[1], 2)},
        f"end_to_end_batch_{args.batch}": {**pair(e2e_batch), "anomalies_per_s_wall": round(args.batch / e2e_batch[0], 2),
                                           "anomalies_per_s_cpu": round(args.batch / e2e_batch[1], 2)},
    }, indent=1))


if __name__ == "__main__":
    main()
