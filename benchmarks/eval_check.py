"""Metrics of fitted runs on their full test splits, for before/after comparisons of scoring changes.

    python benchmarks/eval_check.py --runs RUN [RUN ...] --out benchmarks/results/eval_check_NAME.json
        [--src PATH]  # the qarad source tree to import (default: this checkout's src)
    python benchmarks/eval_check.py --compare benchmarks/results/eval_check_before.json \
        benchmarks/results/eval_check_after.json   # -> eval_check.json and its BENCHMARKS.md section

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


def compare(before: dict, after: dict) -> dict:
    """Per run in both: the largest |after - before| over every metric, overall and per type."""
    out = {}
    for run in before.keys() & after.keys():
        pairs = [(k, before[run]["overall"][k], after[run]["overall"][k]) for k in before[run]["overall"]]
        for t, metrics in before[run]["per_type"].items():
            pairs += [(f"{t}/{k}", v, after[run]["per_type"][t][k]) for k, v in metrics.items()]
        diffs = {k: abs(a - b) for k, b, a in pairs if isinstance(b, float) and b == b}
        worst = max(diffs, key=diffs.get)
        out[run] = {"max_abs_diff": diffs[worst], "at": worst, "metrics": len(diffs),
                    "overall_before": before[run]["overall"], "overall_after": after[run]["overall"],
                    "images_per_s": [before[run]["images_per_s"], after[run]["images_per_s"]],
                    "src": [before[run].get("src"), after[run].get("src")]}
    return out


def markdown(env: dict) -> str:
    srcs = sorted({tuple(r["src"]) for r in env["results"].values() if r.get("src")})
    lines = ["## Metrics before and after the issue-36 changes, on the same fitted runs", "",
             f"Command: `{env['command']}` ({env['date']}, {env['machine']}; results: "
             "`benchmarks/results/eval_check.json`). Each run's full test split evaluated by the code before "
             "and after (source trees before -> after: " + ", ".join(f"`{b}` -> `{a}`" for b, a in srcs)
             + "); the largest absolute difference over every metric, overall and per defect type.", "",
             "| run | metrics compared | max abs difference | at | eval loop img/s before / after |",
             "|---|---|---|---|---|"]
    for run, r in sorted(env["results"].items()):
        lines.append(f"| {Path(run).parent.name}/{Path(run).name} | {r['metrics']} | {r['max_abs_diff']:.2e} | "
                     f"{r['at']} | {r['images_per_s'][0]:.1f} / {r['images_per_s'][1]:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    if args.compare:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import common

        before, after = (json.loads(p.read_text()) for p in args.compare)
        common.publish(common.RESULTS / "eval_check.json", common.envelope(compare(before, after)), "eval_check",
                       markdown)
        return
    if not (args.runs and args.out):
        ap.error("--runs and --out are needed (or --compare)")
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
