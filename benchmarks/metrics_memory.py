"""Peak memory of the pixel metrics, exact vs streaming, and how far apart their numbers are.

    python benchmarks/metrics_memory.py [--data ../shared/data] [--work DIR] [--datasets KEY ...]

For each dataset of ../shared/data (magnetic tile, mpdd and deeppcb under `resize`, deeppcb
under `tile` too) PatchCore is fitted as benchmarks/detect.py fits it (or a fit saved in
WORK/<name>/model.* is reused), the test set is scored once and every graded (map, mask) pair
is saved as .npy into WORK/<name>/maps (never pickle). Two fresh processes then run the pixel
metrics over those same files, one exact and one streaming, each loading one map at a time as
`qarad eval` receives them, and report their peak RSS. Writes
benchmarks/results/metrics_memory.json (`--out`) and the metrics-memory section of BENCHMARKS.md.
Without --work the maps go to a temporary folder that is removed at the end (DeepPCB under
`tile` needs ~2 GB of disk for them); with --work a rerun reuses the fits and the maps.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from detect import MEMORY_LIMIT  # noqa: E402  (the bank caps the detection benchmark uses per policy)
from qarad.metrics import MAX_BINS, PIXEL_METRICS  # noqa: E402

# result name -> (dataset key in common.DATASETS, resolution policy)
CASES = {
    "magnetic_tile/magnetic_tile": ("magnetic_tile/magnetic_tile", "resize"),
    "mpdd/metal_plate": ("mpdd/metal_plate", "resize"),
    "deeppcb/deeppcb": ("deeppcb/deeppcb", "resize"),
    "deeppcb/deeppcb@tile": ("deeppcb/deeppcb", "tile"),
}
INDEX = "index.json"  # in WORK/<name>/maps: the saved pairs, in test-split order


def score_to_npy(data_root: Path, key: str, policy_name: str, folder: Path) -> dict:
    """Fit (or reuse) PatchCore, score the test split once, save every graded pair as .npy."""
    import numpy as np

    from qarad.data.mvtec import scan_mvtec, subsample
    from qarad.data.resolution import ResolutionPolicy
    from qarad.detection.evaluate import graded_pair
    from qarad.detection.inference import score_images
    from qarad.detection.patchcore import PatchCore, PatchCoreConfig

    maps = folder / "maps"
    if (maps / INDEX).is_file():
        return json.loads((maps / INDEX).read_text())
    root, cat = common.DATASETS[key]
    stem = folder / "model"
    if stem.with_suffix(".safetensors").is_file():
        model = PatchCore.load(stem)
    else:
        train = subsample(scan_mvtec(data_root / root, cat, "train"), common.TRAIN_LIMIT.get(key), seed=0)
        model = PatchCore(PatchCoreConfig(memory_limit=MEMORY_LIMIT[policy_name]), ResolutionPolicy(mode=policy_name))
        model.fit([s.image for s in train])
        model.save(stem)
    test = scan_mvtec(data_root / root, cat, "test")
    maps.mkdir(parents=True, exist_ok=True)
    pairs = []
    t0 = time.perf_counter()
    for i, (sample, res) in enumerate(zip(test, score_images(model, [s.image for s in test]))):
        graded, mask = graded_pair(res.layout, res.anomaly_map, sample)
        if mask is None:
            continue
        np.save(maps / f"{i:05d}_map.npy", graded.astype(np.float32))
        np.save(maps / f"{i:05d}_mask.npy", mask.astype(bool))
        pairs.append(f"{i:05d}")
    index = {"pairs": pairs, "policy": policy_name, "score_s": round(time.perf_counter() - t0, 1),
             "n_test": len(test)}
    (maps / INDEX).write_text(json.dumps(index))  # last: its presence means every pair is on disk
    return index


def metrics_over_npy(maps: Path, mode: str, max_bins: int) -> dict:
    """One mode's pixel metrics over the saved pairs, loaded one at a time (run in a fresh process)."""
    import numpy as np

    from qarad.metrics import ImagePixels, PixelMetrics

    pairs = json.loads((maps / INDEX).read_text())["pairs"]
    t0 = time.perf_counter()
    acc = PixelMetrics(streaming=mode == "streaming", max_bins=max_bins)
    for stem in pairs:
        acc.add(ImagePixels(np.load(maps / f"{stem}_map.npy", allow_pickle=False),
                            np.load(maps / f"{stem}_mask.npy", allow_pickle=False)))
    values = acc.metrics()
    return {"metrics": values, "how": acc.describe(), "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(common.peak_rss_mb(), 1)}


def compare(maps: Path, max_bins: int) -> dict:
    exact = common.run_child(["--metrics", str(maps), "exact", str(max_bins)])
    streamed = common.run_child(["--metrics", str(maps), "streaming", str(max_bins)])
    diff = {k: abs(streamed["metrics"][k] - exact["metrics"][k]) for k in PIXEL_METRICS}
    return {"exact_peak_rss_mb": exact["peak_rss_mb"], "streaming_peak_rss_mb": streamed["peak_rss_mb"],
            "max_abs_diff": max(diff.values()), "diff": diff, "exact": exact["metrics"],
            "streaming": streamed["metrics"], "pixels": exact["how"]["pixels"], "streaming_bins": streamed["how"],
            "exact_s": exact["seconds"], "streaming_s": streamed["seconds"]}


def table(results: dict) -> str:
    rows = ["| dataset | graded pixels | exact peak RSS MB | streaming peak RSS MB | max abs diff | "
            + " | ".join(f"{k} diff" for k in PIXEL_METRICS) + " |", "|---|" + "---|" * (4 + len(PIXEL_METRICS))]
    for name, r in results.items():
        rows.append(f"| `{name}` | {r['pixels']} | {r['exact_peak_rss_mb']:.0f} | {r['streaming_peak_rss_mb']:.0f} | "
                    f"{r['max_abs_diff']:.1e} | " + " | ".join(f"{r['diff'][k]:.1e}" for k in PIXEL_METRICS) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--work", type=Path, help="keep fits and maps here (default: a temporary folder, removed)")
    ap.add_argument("--max-bins", type=int, default=MAX_BINS,
                    help="streaming bins (default metrics.MAX_BINS; smaller forces re-binning on small data)")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "metrics_memory.json")
    ap.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md as it is")
    ap.add_argument("--score", nargs=4, metavar=("DATA", "KEY", "POLICY", "FOLDER"), help=argparse.SUPPRESS)
    ap.add_argument("--metrics", nargs=3, metavar=("MAPS", "MODE", "MAX_BINS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score:
        data, key, policy, folder = args.score
        print(json.dumps(score_to_npy(Path(data), key, policy, Path(folder))))
        return
    if args.metrics:
        maps, mode, max_bins = args.metrics
        print(json.dumps(metrics_over_npy(Path(maps), mode, int(max_bins))))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="qarad-metrics-memory-"))
    results: dict = {}
    try:
        for name in args.datasets:
            key, policy = CASES[name]
            if not common.available(args.data, key):
                print(f"skip {name}: not found under {args.data}", file=sys.stderr)
                continue
            folder = work / name.replace("/", "_").replace("@", "_")
            print(f"== {name}: score the test set once ({policy})", file=sys.stderr, flush=True)
            index = common.run_child(["--score", str(args.data), key, policy, str(folder)])
            print(f"== {name}: exact and streaming metrics over {len(index['pairs'])} saved maps", file=sys.stderr,
                  flush=True)
            results[name] = {**compare(folder / "maps", args.max_bins), "policy": policy, "n_maps": len(index["pairs"]),
                             "max_bins": args.max_bins}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if not results:
        print(f"no dataset found under {args.data}: nothing measured, nothing written", file=sys.stderr)
        return
    env = common.envelope(results)
    common.write_json(args.out, env)
    if not args.no_markdown:
        common.update_section("metrics-memory", f"Command: `{env['command']}` ({env['date']}; {env['machine']}).\n\n"
                                                f"{table(results)}\n")
    print(table(results))


if __name__ == "__main__":
    main()
