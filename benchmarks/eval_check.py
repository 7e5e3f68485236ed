"""Metrics of fitted runs on their full test splits, for before/after comparisons of scoring changes.

    python benchmarks/eval_check.py --runs RUN [RUN ...] --out benchmarks/results/eval_check_NAME.json
        [--src PATH]  # the qarad source tree to import (default: this checkout's src)

Runs `detection.evaluate.evaluate` (what `qarad eval` runs, pixel metrics at source resolution) on
each run's category test split and writes {run: {overall, per_type, images_per_s}}. Used by issue 36:
the same trained runs evaluated by the code before and after a change must agree within 0.003.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.src.resolve()))
    from qarad import runs as R
    from qarad.data.layouts import scan
    from qarad.detection.evaluate import evaluate

    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run in args.runs:
        cfg = R.read_config(run)
        detector = R.load_detector(run, "cpu")
        test = scan(Path(cfg["data"]["root"]), cfg["data"]["category"], "test", cfg["data"].get("layout", "mvtec"))
        t0 = time.perf_counter()
        ev = evaluate(detector, test, args.batch)
        out[str(run)] = {"overall": ev.overall, "per_type": ev.per_type, "images_per_s": ev.images_per_s,
                         "wall_s": time.perf_counter() - t0, "src": str(args.src)}
        print(run, json.dumps(ev.overall), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
