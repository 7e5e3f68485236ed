"""Nearest-neighbour search of the memory bank: time per image and distance error against exact.

    python benchmarks/search.py [--datasets KEY ...] [--nprobe 4 8 16 32]

Label-free by construction (rule: no setting is chosen on test images): per dataset the PatchCore
bank (10% coreset, resize 256) is fitted on the training normals minus a held-out 10% (seeded),
and the held-out normals' patch features are the queries. For the exact search and for the IVF
search at each nprobe it reports ms per image (one image's 1024 queries per call, as `qarad eval`
searches), with and without refinement of the 3% largest distances per image, and the distance
error relative to exact: mean over patches, 99th percentile, and the
error of each image's largest distance (what the image score reads). The default nprobe is the
largest whose search fits the throughput budget (PatchCore at 15 img/s on 2 cores leaves ~50 ms
of search per 256-px image once the backbone, decode and blur are paid): nprobe 16. Its metric
change on the test sets is reported, not chosen on, by benchmarks/ablation.py (patchcore vs
patchcore_exact).

Writes benchmarks/results/search.json (results[dataset][mode] = {ms_per_image, mean_rel_err,
p99_rel_err, image_max_rel_err}).
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

HELD_OUT = 0.1
REFINE = 0.03  # PatchCoreConfig.refine: each nprobe also runs with this share searched again exactly
MAX_QUERY_IMAGES = 40


def _split(paths: list[Path], seed: int = 0) -> tuple[list[Path], list[Path]]:
    order = np.random.default_rng(seed).permutation(len(paths))
    n = max(2, int(round(HELD_OUT * len(paths))))
    held = sorted(order[:n].tolist())
    return [p for i, p in enumerate(paths) if i not in set(held)], [paths[i] for i in held][:MAX_QUERY_IMAGES]


def measure(data_root: Path, key: str, nprobes: list[int]) -> dict:
    from qarad.data.mvtec import scan_mvtec
    from qarad.data.resolution import ResolutionPolicy
    from qarad.data.stream import load
    from qarad.detection.knn import NearestNeighbours, SearchConfig
    from qarad.detection.patchcore import PatchCore, PatchCoreConfig

    root, cat = common.DATASETS[key]
    paths = [s.image for s in scan_mvtec(data_root / root, cat, "train")]
    if key in common.TRAIN_LIMIT:
        keep = np.random.RandomState(0).choice(len(paths), common.TRAIN_LIMIT[key], replace=False)
        paths = [paths[i] for i in sorted(keep)]
    bank_paths, query_paths = _split(paths)
    model = PatchCore(PatchCoreConfig(search="exact"), ResolutionPolicy("resize", 256))
    model.fit(bank_paths)
    with torch.inference_mode():
        queries = [model.embedder(load(i, p, model.policy).views).permute(0, 2, 3, 1).reshape(-1, model.embedder.channels)
                   .contiguous() for i, p in enumerate(query_paths)]
    out = {"bank_rows": len(model.memory_), "n_query_images": len(queries)}
    exact = None
    variants = [("exact", 1, 0.0)] + [("ivf", n, r) for n in nprobes for r in (0.0, REFINE)]
    for mode, nprobe, refine in variants:
        index = NearestNeighbours(model.memory_, config=SearchConfig(mode, nprobe, refine=refine))
        index.search(queries[0], per_view=len(queries[0]))
        t0 = time.perf_counter()
        dists = [index.search(q, per_view=len(q))[0] for q in queries]
        ms = 1000 * (time.perf_counter() - t0) / len(queries)
        if exact is None:
            exact = dists
        rel = torch.cat([d / e.clamp_min(1e-12) - 1 for d, e in zip(dists, exact)])
        top = torch.tensor([float(d.max() / e.max() - 1) for d, e in zip(dists, exact)])
        name = "exact" if mode == "exact" else f"ivf_nprobe{nprobe}" + (f"_refine{refine:g}" if refine else "")
        out[name] = {"ms_per_image": ms, "mean_rel_err": float(rel.mean()), "p99_rel_err": float(rel.quantile(0.99)),
                     "image_max_rel_err": float(top.mean())}
        print(f"{key} {name:14s} {ms:7.1f} ms/img  mean err {rel.mean():.4%}  p99 {rel.quantile(.99):.3%}  "
              f"image max {top.mean():.3%}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="+", default=list(common.DATASETS))
    ap.add_argument("--nprobe", nargs="+", type=int, default=[8, 16, 32])
    args = ap.parse_args(argv)
    results = common.measure_available(args.data, args.datasets, lambda key: measure(args.data, key, args.nprobe))
    if results:
        env = {**common.envelope(results), "settings": {
            "datasets": args.datasets, "nprobe": args.nprobe, "held_out": HELD_OUT,
            "max_query_images": MAX_QUERY_IMAGES, "threads": torch.get_num_threads()}}
        common.write_json(common.RESULTS / "search.json", env)
        common.update_section("search", markdown(env))


def markdown(env: dict) -> str:
    lines = ["## Nearest-neighbour search: time and distance error on held-out normals", "",
             f"Command: `{env['command']}` ({env['date']}, {env['machine']}; results: "
             "`benchmarks/results/search.json`). PatchCore bank (10% coreset, `resize` 256) of the training "
             f"normals minus a seeded {HELD_OUT:.0%}; queries: the held-out normals' patches (no test image is "
             "used). Error: searched distance / exact distance - 1 (IVF never finds a nearer row).", "",
             "| dataset | bank rows | search | ms / image | mean error | 99th pct error | image-max error |",
             "|---|---|---|---|---|---|---|"]
    for key, res in env["results"].items():
        for name, r in res.items():
            if isinstance(r, dict):
                lines.append(f"| {key} | {res['bank_rows']} | {name} | {r['ms_per_image']:.1f} | "
                             f"{r['mean_rel_err']:.3%} | {r['p99_rel_err']:.2%} | {r['image_max_rel_err']:.3%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
