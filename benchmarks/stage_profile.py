"""Where the time of `qarad eval` and `qarad predict` goes, per stage, for PatchCore and the QARAD detector.

    python benchmarks/stage_profile.py [--dataset magnetic_tile/magnetic_tile] [--sizes 256 384] [--images 50]
        [--repeats 3] [--batch 8] [--batches 1 2 4 16]

Runs the library's own loops (`detection.evaluate.evaluate`, what `qarad eval` runs, and
`api.predict`, what `qarad predict` runs, into a temporary folder) on evenly spaced test images,
with the library's leaf functions wrapped by timers (only the outermost timed call on a thread
counts, so nothing is counted twice):

  load              loading the run, building its search index and its eager backbone (predict: once per call)
  decode            reading and decoding the image file (on the read-ahead thread: overlapped)
  views             resizing to the working size and cutting views
  backbone          PatchEmbedder (onnxruntime)
  search            nearest-neighbour search of every patch in the bank
  head              the detector's head on features + residuals + distances, fusion (QARAD only)
  upsample_smooth   patch grid -> view maps, stitching, Gaussian smoothing
  metrics           map to source resolution, mask reading, pixel accumulators, final metrics
  overlay_write     map to source resolution, heat-map overlay, PNG and CSV writing (predict)
  other             the loop's wall time minus the stages timed on the main thread

Models are the runs benchmarks/speed.py fits (benchmarks/models/speed/, git-ignored; fitted here
when missing). Each loop runs `--repeats` times after one warm-up; per stage the median ms per
image is kept. Writes benchmarks/results/profile.json and the "profile" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

STAGES = ("load", "decode", "views", "backbone", "search", "head", "upsample_smooth", "metrics", "overlay_write")
METHODS = ("patchcore", "qarad")


def optional(module: str, name: str) -> list[tuple[object, str]]:
    """[(module, name)] when the module exists (profiling an older checkout too), else []."""
    import importlib

    try:
        return [(importlib.import_module(module), name)]
    except ImportError:
        return []


def _targets() -> dict[str, list[tuple[object, str]]]:
    """stage -> (owner, attribute) of the functions it times; owners missing an attribute are skipped."""
    from qarad import api, metrics
    from qarad.backbone import Backbone as backbone, PatchEmbedder
    from qarad.data import io, resolution, stream
    from qarad.detection import anomaly_map, evaluate, knn, patchcore, segmenter
    from qarad.report import figures

    from qarad import runs

    return {
        # the eager backbone is built on a detector's first batch (~0.3 s per predict call, its ONNX graph
        # cached per process): counted as loading, not as `other`
        "load": [(runs, "load_detector"), (backbone, "__init__")],
        "decode": [(stream, "read_image"), (io, "read_image")],
        "views": [(resolution.Layout, "views"), (resolution.Layout, "to_work")],
        "backbone": [(PatchEmbedder, "forward")],
        "search": [(knn.NearestNeighbours, "search")],
        "head": [(segmenter.Segmenter, "logits"), (segmenter, "cell_scores")],
        "upsample_smooth": [(patchcore, "upsample"), (segmenter, "cells_to_map"), (segmenter, "fit_view"),
                            (resolution.Layout, "stitch"), (patchcore.PatchCore, "smooth"),
                            (segmenter.Segmenter, "smooth"), (anomaly_map, "gaussian_blur")],
        "metrics": [(evaluate, "graded_pair"), (evaluate, "summary_metrics"), (metrics.ImagePixels, "__init__"),
                    (metrics.PixelMetrics, "add"), (metrics, "curves")],
        # predictions.py binds write_overlay and write_csv by name: wrapped there, or predict's writing
        # would fall into `other` (as it did: overlay_write 0.0)
        "overlay_write": [*optional("qarad.detection.predictions", "write_overlay"),
                          *optional("qarad.detection.predictions", "write_csv"),
                          *optional("qarad.detection.overlay", "write_overlay"), (figures, "overlay"),
                          (api, "write_text")],
    }


class StageTimer:
    """Wraps the target functions; `totals[thread_kind][stage]` sums the outermost calls' seconds."""

    def __init__(self):
        self.totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._local = threading.local()
        self._main = threading.main_thread()

    def _wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            depth = getattr(self._local, "depth", 0)
            if depth:
                return fn(*args, **kwargs)
            self._local.depth = 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._local.depth = 0
                kind = "main" if threading.current_thread() is self._main else "worker"
                self.totals[kind][stage] += time.perf_counter() - t0
        return timed

    @contextmanager
    def installed(self):
        saved = []
        for stage, targets in _targets().items():
            for owner, name in targets:
                if name in vars(owner):
                    saved.append((owner, name, vars(owner)[name]))
                    setattr(owner, name, self._wrap(stage, vars(owner)[name]))
        try:
            yield self
        finally:
            for owner, name, fn in reversed(saved):
                setattr(owner, name, fn)


def run_paths(key: str, size: int, backbone: str) -> dict[str, Path]:
    return {m: common.ROOT / "benchmarks" / "models" / "speed" / key.replace("/", "__") / f"{m}-{backbone}-{size}"
            for m in METHODS}


def profile_loop(loop, n_images: int, repeats: int) -> dict:
    """Median ms per image of every stage and of the loop's wall time over `repeats` timed runs."""
    loop()  # warm-up: graphs traced, first-call allocations
    per_run = []
    for _ in range(repeats):
        timer = StageTimer()
        with timer.installed():
            t0 = time.perf_counter()
            loop()
            wall = time.perf_counter() - t0
        main, worker = timer.totals["main"], timer.totals["worker"]
        row = {s: 1e3 * (main[s] + worker[s]) / n_images for s in STAGES}
        row["other"] = 1e3 * (wall - sum(main.values())) / n_images
        row["overlapped"] = 1e3 * sum(worker.values()) / n_images  # of the stages, ms on the read-ahead thread
        row["wall"] = 1e3 * wall / n_images
        per_run.append(row)
    out = {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}
    out["images_per_s"] = 1e3 / out["wall"]
    return out


def measure(args, size: int) -> dict:
    from qarad import api
    from qarad.data.layouts import scan
    from qarad.detection.evaluate import evaluate
    from qarad.detection.inference import score_images
    from qarad.runs import load_detector

    import speed

    runs = args.runs or speed.fitted_runs(args.data, args.dataset, args.backbone, size, args.reuse)[0]
    root, cat = common.DATASETS.get(args.dataset, (".", args.dataset))
    samples = speed.spaced(scan(args.data / root, cat, "test", "mvtec"), args.images)
    paths = [s.image for s in samples]
    out = {}
    with tempfile.TemporaryDirectory(prefix="qarad-profile-") as tmp:
        for method in METHODS:
            detector = load_detector(runs[method])
            loops = {
                "scoring": lambda: sum(1 for _ in score_images(detector, paths, args.batch)),
                "eval": lambda: evaluate(detector, samples, args.batch),
                "predict": lambda: api.predict(runs[method], paths, Path(tmp) / method, args.batch),
            }
            for b in args.batches:  # scoring at other batch sizes: the batch chosen by measurement
                if b != args.batch:
                    loops[f"scoring_batch{b}"] = lambda b=b: sum(1 for _ in score_images(detector, paths, b))
            out[method] = {name: profile_loop(loop, len(paths), args.repeats) for name, loop in loops.items()}
            print(f"{args.dataset} {size} {method}: " + ", ".join(
                f"{n} {r['images_per_s']:.1f} img/s" for n, r in out[method].items()), flush=True)
    out["n_images"] = len(paths)
    return out


def markdown(env: dict) -> str:
    st = env["settings"]
    lines = ["## Where the time goes: eval and predict per stage", "",
             f"Command: `{env['command']}` ({env['date']}, {env['machine']}; results: "
             f"`benchmarks/results/profile.json`). {st['dataset']}, `resize`, batch {st['batch']}, {st['images']} "
             f"evenly spaced test images, median of {st['repeats']} runs after a warm-up; ms per image. "
             "`scoring` is `score_images` alone (the scoring path), `eval` the loop of `qarad eval`, `predict` "
             "that of `qarad predict`. decode runs on the read-ahead thread (overlapped; `overlapped` = ms of "
             "stages on that thread); `other` = wall minus the stages timed on the main thread. "
             "Stages: docstring of benchmarks/stage_profile.py.", "",
             "| size | method | loop | " + " | ".join(STAGES) + " | other | overlapped | wall | img/s |",
             "|---" * (len(STAGES) + 8) + "|"]
    for size, per_method in env["results"].items():
        for method in METHODS:
            for loop, r in per_method[method].items():
                lines.append(f"| {size} | {method} | {loop} | " + " | ".join(f"{r[s]:.1f}" for s in STAGES)
                             + f" | {r['other']:.1f} | {r['overlapped']:.1f} | {r['wall']:.1f} "
                             f"| {r['images_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--dataset", default="magnetic_tile/magnetic_tile")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 384])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 2, 4, 16],
                    help="scoring alone also at these batch sizes (views per backbone call)")
    ap.add_argument("--runs", nargs=2, type=Path, metavar=("PATCHCORE_RUN", "QARAD_RUN"),
                    help="profile these runs (one size) instead of benchmarks/models/speed/")
    ap.add_argument("--reuse", action="store_true", help="as speed.py --reuse: finished runs taken as found")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "profile.json")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.runs:
        args.runs = dict(zip(METHODS, args.runs))
    results = {str(size): measure(args, size) for size in args.sizes}
    env = {**common.envelope(results), "settings": {
        "dataset": args.dataset, "backbone": args.backbone, "sizes": args.sizes, "images": args.images,
        "repeats": args.repeats, "batch": args.batch, "batches": args.batches, "threads": torch.get_num_threads()}}
    common.publish(args.out, env, "profile", markdown, not args.no_markdown)


if __name__ == "__main__":
    main()
