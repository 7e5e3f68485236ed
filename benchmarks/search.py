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
import copy
import statistics
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
HNSW_EF = (16, 32, 64)  # HNSW candidates kept per query (links M = 32)
SMALLER_CORESETS = {"coreset0.05_": 0.05}  # a smaller bank, searched as these; errors against the 10% exact
SMALLER_CORESET_SEARCHES = ("exact", "ivf_nprobe16_refine0.03", "hnsw_ef32_refine0.03")


def _split(paths: list[Path], seed: int = 0) -> tuple[list[Path], list[Path]]:
    order = np.random.default_rng(seed).permutation(len(paths))
    n = max(2, int(round(HELD_OUT * len(paths))))
    held = sorted(order[:n].tolist())
    return [p for i, p in enumerate(paths) if i not in set(held)], [paths[i] for i in held][:MAX_QUERY_IMAGES]


def index_bytes(index) -> int:
    """Serialised size of the faiss index (rows, lists, graph or codes): what it holds in memory."""
    from qarad.detection.knn import _faiss

    return int(_faiss().serialize_index(index).nbytes)


def variants(nprobes: list[int]) -> list[tuple[str, object]]:
    """(name, SearchConfig) of every search measured."""
    from qarad.detection.knn import SearchConfig

    out = [("exact", SearchConfig("exact"))]
    out += [(f"ivf_nprobe{n}" + (f"_refine{r:g}" if r else ""), SearchConfig("ivf", n, refine=r))
            for n in nprobes for r in (0.0, REFINE)]
    out += [(f"hnsw_ef{ef}" + (f"_refine{r:g}" if r else ""), SearchConfig("hnsw", ef_search=ef, refine=r))
            for ef in HNSW_EF for r in (0.0, REFINE)]
    return out


def timed_search(index, queries: list[torch.Tensor], repeats: int = 3) -> tuple[float, list[torch.Tensor]]:
    """Median ms per image over `repeats` passes (one image's queries per call), and the distances."""
    index.search(queries[0], per_view=len(queries[0]))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dists = [index.search(q, per_view=len(q))[0] for q in queries]
        times.append(1000 * (time.perf_counter() - t0) / len(queries))
    return statistics.median(times), dists


def errors(dists: list[torch.Tensor], exact: list[torch.Tensor]) -> dict:
    rel = torch.cat([d / e.clamp_min(1e-12) - 1 for d, e in zip(dists, exact)])
    top = torch.tensor([float(d.max() / e.max() - 1) for d, e in zip(dists, exact)])
    return {"mean_rel_err": float(rel.mean()), "mean_abs_rel_err": float(rel.abs().mean()),
            "p99_rel_err": float(rel.abs().quantile(0.99)), "image_max_rel_err": float(top.mean()),
            "image_max_abs_rel_err": float(top.abs().max())}


def fitted_bank(paths: list[Path], ratio: float):
    from qarad.data.resolution import ResolutionPolicy
    from qarad.detection.patchcore import PatchCore, PatchCoreConfig

    return PatchCore(PatchCoreConfig(search="exact", coreset_ratio=ratio, calibration_images=0),
                     ResolutionPolicy("resize", 256)).fit(paths)


def measure(data_root: Path, key: str, nprobes: list[int]) -> dict:
    from qarad.data.mvtec import scan_mvtec
    from qarad.data.stream import load
    from qarad.detection.knn import NearestNeighbours

    root, cat = common.DATASETS[key]
    paths = [s.image for s in scan_mvtec(data_root / root, cat, "train")]
    if key in common.TRAIN_LIMIT:
        keep = np.random.RandomState(0).choice(len(paths), common.TRAIN_LIMIT[key], replace=False)
        paths = [paths[i] for i in sorted(keep)]
    bank_paths, query_paths = _split(paths)
    model = fitted_bank(bank_paths, 0.1)
    with torch.inference_mode():
        queries = [model.embedder(load(i, p, model.policy).views).permute(0, 2, 3, 1).reshape(-1, model.embedder.channels)
                   .contiguous() for i, p in enumerate(query_paths)]
    out = {"bank_rows": len(model.memory_), "n_query_images": len(queries)}
    exact = None
    banks = {"": model.memory_}
    for prefix, ratio in SMALLER_CORESETS.items():
        banks[prefix] = fitted_bank(bank_paths, ratio).memory_
        out[f"{prefix}bank_rows"] = len(banks[prefix])
    runs = [("", name, v) for name, v in variants(nprobes)]
    runs += [(prefix, name, v) for prefix in SMALLER_CORESETS for name, v in variants(nprobes)
             if name in SMALLER_CORESET_SEARCHES]
    built: dict = {}  # (bank, mode) -> (index, build s): one graph or one k-means per bank, its knobs varied
    for prefix, name, variant in runs:
        memory = banks[prefix]
        if (prefix, variant.mode) in built:
            first, build_s = built[prefix, variant.mode]
            index = copy.copy(first)  # shares the faiss index; only the query-time knobs change
            index.config = variant
            if not index.approximate:  # a bank too small for either: exact whatever the mode
                pass
            elif variant.mode == "ivf":
                index.index.nprobe = min(variant.nprobe, index.index.nlist)
            elif variant.mode == "hnsw":
                index.index.hnsw.efSearch = variant.ef_search
        else:
            t0 = time.perf_counter()
            index = NearestNeighbours(memory, config=variant)
            build_s = time.perf_counter() - t0
            built[prefix, variant.mode] = (index, build_s)
        ms, dists = timed_search(index, queries)
        if exact is None:
            exact = dists
        out[prefix + name] = {"ms_per_image": ms, "build_s": build_s, "index_mb": index_bytes(index.index) / 2**20,
                              **errors(dists, exact)}
        r = out[prefix + name]
        print(f"{key} {prefix + name:34s} {ms:7.1f} ms/img  build {build_s:5.1f} s  {r['index_mb']:6.1f} MB  "
              f"mean err {r['mean_rel_err']:.4%}  p99 {r['p99_rel_err']:.3%}  image max {r['image_max_rel_err']:.3%}",
              flush=True)
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
    lines = ["## Nearest-neighbour search: time, memory and distance error on held-out normals", "",
             f"Command: `{env['command']}` ({env['date']}, {env['machine']}; results: "
             "`benchmarks/results/search.json`). PatchCore bank (10% coreset, `resize` 256; `coreset0.05_`: a 5% "
             f"one) of the training normals minus a seeded {HELD_OUT:.0%}; queries: the held-out normals' patches "
             "(no test image is used). Error: searched distance / exact distance on the 10% bank - 1 (IVF and "
             "HNSW never find a nearer row; a smaller bank can). ms / image: median of 3 passes, one "
             "image's 1024 queries per call. build s: index made when a run is loaded. index MB: the faiss "
             "index serialised (the bank itself, rows x 4 bytes x channels, is held besides).", "",
             "| dataset | bank rows | search | ms / image | build s | index MB | mean error | 99th pct abs error "
             "| image-max error (mean) | image-max abs error (worst) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, res in env["results"].items():
        for name, r in res.items():
            if isinstance(r, dict):
                rows = res.get(name.split("_")[0] + "_bank_rows", res["bank_rows"]) if name.startswith("coreset") \
                    else res["bank_rows"]
                lines.append(f"| {key} | {rows} | {name} | {r['ms_per_image']:.1f} | {r.get('build_s', 0):.1f} | "
                             f"{r.get('index_mb', 0):.1f} | {r['mean_rel_err']:.3%} | {r['p99_rel_err']:.2%} | "
                             f"{r['image_max_rel_err']:.3%} | {r.get('image_max_abs_rel_err', 0):.3%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
