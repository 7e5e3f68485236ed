"""`qarad benchmark` on every dataset of ../shared/data: a method trained and evaluated per category.

    python benchmarks/benchmark.py [--data ../shared/data] [--datasets mpdd magnetic_tile deeppcb]
        [--methods patchcore] [--work runs/benchmark] [--size 256]

Each (dataset, method) is one `qarad.benchmark` call (what the verb runs) into WORK/DATASET/METHOD,
which is resumable per category: rerun the same command after a kill and the finished categories
are skipped. DeepPCB trains on the fixed 300-image subset (common.TRAIN_LIMIT). `qarad` here is the
QARAD detector on Perlin negatives alone (no ARAS model). Writes benchmarks/results/benchmark.json,
results[dataset][category][method] with the metric keys of detect.json, and the "benchmark" table
in BENCHMARKS.md. Datasets missing under --data are skipped; with none found nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from qarad.metrics import METRICS  # noqa: E402

DATASETS = ("mpdd", "magnetic_tile", "deeppcb")
METHODS = ("patchcore", "qarad")
LIMITS = {key.split("/")[0]: n for key, n in common.TRAIN_LIMIT.items()}  # dataset -> normal images fitted on
DEFAULT_WORK = common.ROOT / "runs" / "benchmark"
DEFAULT_OUT = common.RESULTS / "benchmark.json"


def detector(method: str, seed: int = 0):
    from qarad.detection.patchcore import PatchCoreConfig
    from qarad.detection.segmenter import SegmenterConfig

    return PatchCoreConfig(seed=seed) if method == "patchcore" else SegmenterConfig(seed=seed, negatives=("perlin",))


def run_dataset(data: Path, dataset: str, method: str, work: Path, size: int) -> dict:
    """{category: row (+ per_type)} of one `qarad benchmark` over the dataset's categories."""
    import qarad

    folder = work / dataset / method
    done = qarad.benchmark(data / dataset, folder, detector(method), policy=qarad.ResolutionPolicy(size=size),
                           max_train_images=LIMITS.get(dataset))
    out = {}
    for category, row in done.rows.items():
        metrics = json.loads((folder / "runs" / category / "metrics.json").read_text())
        out[category] = {**row, "per_type": {t: {m: v[m] for m in METRICS} for t, v in metrics["per_type"].items()}}
    return out


def table(results: dict) -> str:
    head = ("| dataset | category | method | image AUROC | image AP | image F1max | pixel AUROC | pixel AP "
            "| pixel F1max | AUPRO@0.3 | fit s | test img/s |")
    rows = [head, "|" + "---|" * 12]
    for dataset, categories in results.items():
        for category, methods in categories.items():
            for method, r in methods.items():
                cells = [f"{r[m]:.3f}" for m in METRICS] + [f"{r['fit_s']:.0f}", f"{r['test_images_per_s']:.1f}"]
                rows.append(f"| {dataset} | {category} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=["patchcore"])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="benchmark folders (resumable)")
    ap.add_argument("--size", type=int, default=256, help="working size of the resize policy (default 256)")
    ap.add_argument("--out-json", type=Path, default=DEFAULT_OUT,
                    help="results file (BENCHMARKS.md is refreshed only for the default one)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skip: {args.data} not found; nothing to benchmark", file=sys.stderr)
        return
    results: dict = {}
    for dataset in args.datasets:
        if not (args.data / dataset).is_dir():
            print(f"skip {dataset}: not found under {args.data}", file=sys.stderr)
            continue
        for method in args.methods:
            print(f"== {dataset}: {method}", file=sys.stderr, flush=True)
            for category, row in run_dataset(args.data, dataset, method, args.work.resolve(), args.size).items():
                results.setdefault(dataset, {}).setdefault(category, {})[method] = row
    if not results:
        print(f"skip: none of {', '.join(args.datasets)} found under {args.data}; nothing written", file=sys.stderr)
        return
    env = common.envelope(results)
    env["settings"] = {"data": str(args.data.resolve()), "methods": args.methods, "work": str(args.work.resolve()),
                       "policy": {"mode": "resize", "size": args.size}, "max_train_images": LIMITS,
                       "detectors": {m: asdict(detector(m)) for m in args.methods}}
    common.write_json(args.out_json, json.loads(json.dumps(env)))  # tuples as lists
    if args.out_json.resolve() == DEFAULT_OUT.resolve():
        common.update_section("benchmark", table(results))
    print(table(results))


if __name__ == "__main__":
    main()
