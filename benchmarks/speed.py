"""Test throughput of PatchCore and the QARAD detector side by side, with the backbone-only ceiling.

    python benchmarks/speed.py [--datasets magnetic_tile/magnetic_tile] [--backbones efficientnet-lite0]
        [--sizes 256 384] [--images 50] [--repeats 7] [--batch 8]

Per dataset, backbone and working size it fits (once, into benchmarks/models/speed/, git-ignored; a
finished run is reused) a PatchCore run and a QARAD detector run with `qarad train`'s defaults, `resize`,
except that the detector's head learns from Perlin negatives only: the scoring path (decode,
views, backbone, search of every patch, head on features + residuals + distances, fusion,
stitching, smoothing) does not depend on where the head's negatives came from, and this way the
benchmark needs no ARAS model. With --reuse, a run folder that already holds a finished run is used
as it is, whatever qarad version fitted it (issue 36 fits them once with the code before its
changes, so that the same runs serve speed.py, stage_profile.py and eval_check.py). It then times, round by round and interleaved so that any load
from elsewhere falls on every entry alike, the same evenly spaced test images through:

  backbone            PatchEmbedder alone (onnxruntime) on the decoded views: the ceiling
  patchcore           PatchCore's scoring path (`score_images`: decode included), IVF search
  patchcore_exact     the same bank searched exactly
  patchcore_eval      `evaluate` on those images, whole: scoring, the metric accumulation at source
                      resolution and the final metrics (what `qarad eval` runs)
  qarad               the detector's scoring path (`score_images`: decode included)
  qarad_eval          as patchcore_eval, for the detector

and inside patchcore and qarad, `eval_loop`: the rate of `evaluate`'s image loop (scoring with the
pixel accumulation overlapped; the `test_images_per_s` that `qarad eval` reports), from the same
calls as the *_eval entries, whose rate also pays the final metrics over all graded pixels.

Each entry is the median images/s over the rounds (each round's rate is kept too). Fit times are
those of the fits this run made (null where a finished run was reused). Writes
benchmarks/results/speed.json and the "speed" section of BENCHMARKS.md. The metric change of the
IVF search against exact is measured by benchmarks/ablation.py (patchcore vs patchcore_exact).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

SIZE = 256
MODELS = common.ROOT / "benchmarks" / "models" / "speed"
ENTRIES = ("backbone", "patchcore", "patchcore_exact", "patchcore_eval", "qarad", "qarad_eval")


def fitted_runs(data: Path, key: str, backbone: str, size: int = SIZE, reuse: bool = False) -> tuple[dict, dict]:
    """Run folders of PatchCore and the detector for (key, backbone, size) -> ({method: path}, {method: fit s}).
    `reuse`: a folder holding a finished run is taken as it is (no config check, no fit)."""
    from qarad import api
    from qarad.data.resolution import ResolutionPolicy
    from qarad.detection.patchcore import PatchCoreConfig
    from qarad.detection.segmenter import SegmenterConfig

    root, cat = common.DATASETS[key]
    configs = {"patchcore": PatchCoreConfig(backbone=backbone),
               "qarad": SegmenterConfig(negatives=("perlin",), backbone=backbone)}
    runs, fit_s = {}, {}
    for method, config in configs.items():
        out = MODELS / key.replace("/", "__") / f"{method}-{backbone}-{size}"
        if reuse and (out / "model.safetensors").is_file():
            runs[method], fit_s[method] = out, None
            print(f"{key} {backbone} {size}: {method} run {out} (reused as found)", flush=True)
            continue
        t0 = time.perf_counter()
        trained = api.train(data / root, cat, out, config, policy=ResolutionPolicy("resize", size),
                            max_train_images=common.TRAIN_LIMIT.get(key))
        runs[method] = out
        fit_s[method] = None if trained.already_trained else time.perf_counter() - t0
        print(f"{key} {backbone} {size}: {method} run {out} ({'reused' if trained.already_trained else 'fitted'})",
              flush=True)
    return runs, fit_s


def spaced(items: list, n: int) -> list:
    """n items evenly spaced over the list (the test split mixes defect types in scan order)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def measure(args, key: str, backbone: str, size: int) -> dict:
    from qarad.data.layouts import scan
    from qarad.data.stream import load
    from qarad.detection.evaluate import evaluate
    from qarad.detection.inference import score_images
    from qarad.detection.knn import NearestNeighbours, SearchConfig
    from qarad.runs import load_detector

    runs, fit_s = fitted_runs(args.data, key, backbone, size, args.reuse)
    root, cat = common.DATASETS[key]
    samples = spaced(scan(args.data / root, cat, "test", "mvtec"), args.images)
    paths = [s.image for s in samples]
    patchcore, qarad = load_detector(runs["patchcore"]), load_detector(runs["qarad"])
    if not args.no_exact:
        exact = load_detector(runs["patchcore"])
        exact.index_ = NearestNeighbours(exact.memory_, exact.memory_source_, SearchConfig("exact"))
    embedder = qarad._embedder()
    with torch.inference_mode():
        views = [load(i, p, qarad.policy).views for i, p in enumerate(paths)]
    loops = {"patchcore": [], "qarad": []}  # evaluate's own image-loop rates, round by round

    def backbone_pass():
        with torch.inference_mode():
            batch = torch.cat(views)
            for start in range(0, len(batch), args.batch):
                embedder(batch[start:start + args.batch])

    def scoring(detector):
        return lambda: sum(1 for _ in score_images(detector, paths, args.batch))

    def evaluation(name, detector):
        return lambda: loops[name].append(evaluate(detector, samples, args.batch).images_per_s)

    passes = {"backbone": backbone_pass, "patchcore": scoring(patchcore),
              **({} if args.no_exact else {"patchcore_exact": scoring(exact)}),
              "patchcore_eval": evaluation("patchcore", patchcore), "qarad": scoring(qarad),
              "qarad_eval": evaluation("qarad", qarad)}
    for run in passes.values():  # warm-up: graphs traced, first-call allocations
        run()
    loops = {name: [] for name in loops}
    rounds = {name: [] for name in passes}
    for r in range(args.repeats):
        for name, run in passes.items():
            t0 = time.perf_counter()
            run()
            rounds[name].append(len(paths) / (time.perf_counter() - t0))
        print(f"{key} {backbone} {size} round {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rounds.items())
              + "".join(f", {n} eval loop {v[-1]:.1f}" for n, v in loops.items()) + " img/s", flush=True)
    out = {name: {"images_per_s": statistics.median(v), "rounds": v} for name, v in rounds.items()}
    for name in ("patchcore", "qarad"):
        out[name]["fit_s"] = fit_s[name]
        out[name]["eval_loop"] = {"images_per_s": statistics.median(loops[name]), "rounds": loops[name]}
    out["patchcore"]["bank_rows"] = int(len(patchcore.memory_))
    out["qarad"]["bank_rows"] = int(len(qarad.memory_))
    out["n_images"], out["n_views"] = len(paths), sum(len(v) for v in views)
    return out


def markdown(env: dict) -> str:
    st = env["settings"]
    lines = ["## Test throughput: PatchCore and the QARAD detector beside the backbone", "",
             f"Command: `{env['command']}` ({env['date']}, {env['machine']}; results: "
             f"`benchmarks/results/speed.json`). `resize` at each size, batch {st['batch']}, {st['images']} evenly "
             f"spaced test images per round, median of {st['repeats']} interleaved rounds (img/s, decode "
             "included except for the backbone row). Scoring: `score_images`; eval loop: `evaluate`'s image loop "
             "(the `test_images_per_s` of `qarad eval`); eval whole: the `evaluate` call, final metrics over all "
             "graded pixels included. Entries: see the docstring of benchmarks/speed.py.", "",
             "| dataset | backbone | size | bank rows | backbone only | PatchCore scoring | PatchCore (exact search) "
             "| PatchCore eval loop | eval whole | PatchCore / backbone | loop / scoring | QARAD scoring "
             "| QARAD eval loop | eval whole | QARAD / backbone | loop / scoring |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, per_backbone in env["results"].items():
        for backbone, per_size in per_backbone.items():
            for size, r in per_size.items():
                rate = {n: r[n]["images_per_s"] if n in r else float("nan") for n in ENTRIES}  # nan: not run
                exact = "not run" if "patchcore_exact" not in r else f"{rate['patchcore_exact']:.1f}"
                loop = {n: r[n]["eval_loop"]["images_per_s"] for n in ("patchcore", "qarad")}
                lines.append(
                    f"| {key} | {backbone} | {size} | {r['patchcore']['bank_rows']} | {rate['backbone']:.1f} | {rate['patchcore']:.1f} | "
                    f"{exact} | {loop['patchcore']:.1f} | {rate['patchcore_eval']:.1f} | "
                    f"{rate['patchcore'] / rate['backbone']:.2f} | {loop['patchcore'] / rate['patchcore']:.2f} | "
                    f"{rate['qarad']:.1f} | {loop['qarad']:.1f} | {rate['qarad_eval']:.1f} | "
                    f"{rate['qarad'] / rate['backbone']:.2f} | {loop['qarad'] / rate['qarad']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="+", default=["magnetic_tile/magnetic_tile"], choices=list(common.DATASETS))
    ap.add_argument("--backbones", nargs="+", default=["efficientnet-lite0"],
                    choices=["efficientnet-lite0", "efficientnet-lite2"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 384], help="`resize` working sizes")
    ap.add_argument("--images", type=int, default=50, help="test images per round")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (the median is reported)")
    ap.add_argument("--batch", type=int, default=8, help="views per backbone batch (as qarad eval)")
    ap.add_argument("--no-exact", action="store_true",
                    help="leave out patchcore_exact (the slowest entry; its metric change is the ablation's)")
    ap.add_argument("--reuse", action="store_true",
                    help="use a finished run found in benchmarks/models/speed/ as it is (any qarad version fitted it)")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    results = common.measure_available(args.data, args.datasets,
                                       lambda key: {b: {str(size): measure(args, key, b, size) for size in args.sizes}
                                                                for b in args.backbones})
    if not results:
        print("nothing to do: no dataset found")
        return
    env = {**common.envelope(results), "settings": {
        "datasets": args.datasets, "backbones": args.backbones, "images": args.images, "repeats": args.repeats,
        "batch": args.batch, "sizes": args.sizes, "reuse": args.reuse, "no_exact": args.no_exact, "threads": torch.get_num_threads()}}
    common.publish(common.RESULTS / "speed.json", env, "speed", markdown, not args.no_markdown)


if __name__ == "__main__":
    main()
