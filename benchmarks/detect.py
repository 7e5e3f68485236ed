"""PatchCore baseline on every dataset of ../shared/data, under each resolution policy.

    python benchmarks/detect.py [--data ../shared/data] [--policies resize keep-aspect tile]

Each (dataset, policy) runs in its own process so that peak RSS is its own; finished runs are
kept in benchmarks/results/detect.partial.json, so an interrupted benchmark resumes. Writes
benchmarks/results/detect.json and refreshes the detection table in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from qarad.metrics import METRICS  # noqa: E402

# Policies whose cost grows with image size get a capped bank so scoring stays affordable on
# 2 cores; `resize` keeps the reference setting (10% coreset, uncapped).
MEMORY_LIMIT = {"resize": None, "keep-aspect": 16384, "tile": 16384}


def run_one(data_root: Path, key: str, policy_name: str, memory_limit: int | None, size: int = 256,
            scale: float = 1.0) -> dict:
    from qarad.data.layouts import scan
    from qarad.data.mvtec import subsample
    from qarad.data.resolution import ResolutionPolicy
    from qarad.detection.evaluate import evaluate
    from qarad.detection.patchcore import PatchCore, PatchCoreConfig

    root, cat = common.DATASETS[key]
    train = subsample(scan(data_root / root, cat, "train", "mvtec"), common.TRAIN_LIMIT.get(key), seed=0)
    test = scan(data_root / root, cat, "test", "mvtec")
    policy = ResolutionPolicy(mode=policy_name, size=size, scale=scale)
    model = PatchCore(PatchCoreConfig(memory_limit=memory_limit), policy)
    t0 = time.perf_counter()
    model.fit([s.image for s in train])
    fit_s = time.perf_counter() - t0
    ev = evaluate(model, test)
    out = {m: ev.overall[m] for m in METRICS}
    out.update(fit_s=round(fit_s, 1), test_images_per_s=round(ev.images_per_s, 2), peak_rss_mb=round(common.peak_rss_mb()),
               n_train=len(train), n_test=len(test), memory_rows=int(len(model.memory_)),
               per_type={t: {m: v[m] for m in METRICS} for t, v in ev.per_type.items()})
    return out


def table(results: dict) -> str:
    head = ("| dataset | method | image AUROC | image AP | image F1max | pixel AUROC | pixel AP | pixel F1max "
            "| AUPRO@0.3 | fit s | test img/s | peak RSS MB |")
    rows = [head, "|" + "---|" * 12]
    for key, methods in results.items():
        for name, r in methods.items():
            if name == "patchcore":
                continue  # alias of patchcore@resize
            cells = [f"{r[m]:.3f}" for m in METRICS] + [f"{r['fit_s']:.0f}", f"{r['test_images_per_s']:.1f}",
                                                        f"{r['peak_rss_mb']:.0f}"]
            rows.append(f"| `{key}` | {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    ap.add_argument("--datasets", nargs="*", default=list(common.DATASETS))
    ap.add_argument("--policies", nargs="*", default=["resize", "keep-aspect", "tile"])
    ap.add_argument("--fresh", action="store_true", help="ignore results of an interrupted earlier run")
    ap.add_argument("--memory-limit", type=int, default=None,
                    help="one bank cap for every policy (a separate study: writes detect_cap.json and the "
                         "'detect-cap' section instead of detect.json)")
    ap.add_argument("--size", type=int, default=256,
                    help="working size (a study like --memory-limit when not 256: writes detect_cap.json)")
    ap.add_argument("--scale", type=float, nargs="+", default=[1.0],
                    help="tile scales (a separate study when not just 1.0: writes detect_scale.json and the "
                         "'detect-scale' section)")
    ap.add_argument("--one", nargs="+", metavar="DATASET POLICY CAP [SIZE [SCALE]]", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        key, policy, cap, size, scale = [*args.one, *["256", "1.0"][len(args.one) - 3:]]
        print(json.dumps(run_one(args.data, key, policy, None if cap == "none" else int(cap), int(size), float(scale))))
        return
    scale_study = args.scale != [1.0]
    if scale_study and args.policies != ["tile"]:
        ap.error("--scale applies to the tile policy only: add --policies tile")
    study = ("detect_scale" if scale_study else
             "detect" if args.memory_limit is None and args.size == 256 else "detect_cap")
    partial_path = common.RESULTS / f"{study}.partial.json"
    partial = {} if args.fresh or not partial_path.exists() else json.loads(partial_path.read_text())
    results: dict = {}
    for key in args.datasets:
        if not common.available(args.data, key):
            print(f"skip {key}: not found under {args.data}", file=sys.stderr)
            continue
        for policy, scale in [(p, s) for p in args.policies for s in (args.scale if p == "tile" else [1.0])]:
            cap = MEMORY_LIMIT[policy] if args.memory_limit is None else args.memory_limit
            tag = f"{key}|{policy}|{cap}|{args.size}" + ("" if scale == 1.0 else f"|{scale}")
            if tag not in partial:
                print(f"== {key} @ {policy} (bank cap {cap}, size {args.size})", file=sys.stderr, flush=True)
                partial[tag] = common.run_child(["--data", str(args.data), "--one", key, policy, str(cap).lower(),
                                                 str(args.size), str(scale)])
                common.write_json(partial_path, partial)
            suffix = (("" if args.memory_limit is None else f" cap {cap}") + ("" if args.size == 256 else f" size {args.size}")
                      + ("" if scale == 1.0 else f" scale {scale}"))
            results.setdefault(key, {})[f"patchcore@{policy}{suffix}"] = partial[tag]
        if "patchcore@resize" in results.get(key, {}):
            results[key]["patchcore"] = results[key]["patchcore@resize"]
    common.write_json(common.RESULTS / f"{study}.json", common.envelope(results))
    common.update_section(study.replace("_", "-"), table(results))
    partial_path.unlink(missing_ok=True)
    print(table(results))


if __name__ == "__main__":
    main()
