"""Backbone-only throughput of each detector backbone: PatchEmbedder (stride 8 + 16 features, what
PatchCore and the QARAD detector embed with) on random views, through its onnxruntime path.

    python benchmarks/backbone_speed.py [--backbones efficientnet-lite0 efficientnet-lite2] [--size 256]
        [--batches 1 8] [--threads 2] [--rounds 5] [--seconds 3]

No data set: random views of SIZE x SIZE. Each backbone's graph is traced once (untimed but
reported), then every (backbone, batch) pair is timed for SECONDS per round, the pairs interleaved
round by round so that load from other jobs on shared cores falls on all of them alike; the
result is the median over rounds. Writes benchmarks/results/backbone_speed.json:
results[backbone] = {feature_channels, parameters, gflops_per_view, trace_s, batches: {B: {images_per_s (median),
rounds (images/s of each round), ms_per_batch}}}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _images_per_s(embedder, views: torch.Tensor, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        embedder(views)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return n * len(views) / elapsed


def gflops(embedder, size: int) -> float:
    """Floating-point operations of one SIZE x SIZE view through the eager graph (load-independent)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        embedder.features(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def measure(args) -> dict:
    from qarad.backbone import Backbone, BackboneConfig, PatchEmbedder

    generator = torch.Generator().manual_seed(0)
    views = {b: torch.rand(b, 3, args.size, args.size, generator=generator) for b in args.batches}
    embedders, out = {}, {}
    with torch.inference_mode():
        for name in args.backbones:
            embedder = PatchEmbedder(Backbone(BackboneConfig(name, strides=(8, 16))), runtime=args.runtime)
            if not embedder._onnx_applies(views[args.batches[0]]) and args.runtime == "onnxruntime":
                raise RuntimeError("the onnxruntime path does not apply here")
            t0 = time.perf_counter()
            embedder(views[args.batches[0]])  # traces the graph (onnxruntime) and warms up
            trace_s = time.perf_counter() - t0
            embedders[name] = embedder
            out[name] = {"feature_channels": embedder.channels, "trace_s": trace_s,
                         "parameters": sum(p.numel() for p in embedder.parameters()),  # blocks up to the last tap
                         "gflops_per_view": gflops(embedder, args.size),
                         "batches": {b: {"rounds": []} for b in args.batches}}
        for _ in range(args.rounds):
            for name, embedder in embedders.items():
                for b in args.batches:
                    out[name]["batches"][b]["rounds"].append(_images_per_s(embedder, views[b], args.seconds))
    for name in out:
        for b, r in out[name]["batches"].items():
            r["images_per_s"] = float(np.median(r["rounds"]))
            r["ms_per_batch"] = 1000.0 * b / r["images_per_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    from qarad.backbone import RUNTIMES
    from qarad.backbone_config import BACKBONES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    ap.add_argument("--size", type=int, default=256, help="view side in px (a multiple of 32)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the graph's intra-op threads)")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per (backbone, batch) and round")
    ap.add_argument("--out-json", type=Path, default=common.RESULTS / "backbone_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = measure(args)
    env = common.envelope(results)
    env["settings"] = {"size": args.size, "batches": args.batches, "threads": args.threads, "runtime": args.runtime,
                       "rounds": args.rounds, "seconds": args.seconds}
    common.write_json(args.out_json, env)
    for name, r in results.items():
        cells = ", ".join(f"batch {b}: {x['images_per_s']:.1f} img/s" for b, x in r["batches"].items())
        print(f"{name} ({r['feature_channels']} ch, {r['parameters'] / 1e6:.2f} M params, "
              f"{r['gflops_per_view']:.2f} GFLOP per view): {cells}")


if __name__ == "__main__":
    main()
