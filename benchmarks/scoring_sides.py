"""The scoring path of the same fitted runs under two qarad source trees, side by side (issue 36).

    python benchmarks/scoring_sides.py --runs RUN [RUN ...] --src OLD/src src [--images 30] [--repeats 5]

For each source tree a fresh process imports that tree's qarad, loads each run, and times
`score_images` (decode included; what `qarad eval` and `qarad predict` build on) on the same evenly
spaced test images of the run's category: one warm-up, then `--repeats` rounds, median img/s.
The trees are measured one after the other on the same runs, so a change of speed between two
commits is seen on one machine (speed.py times one tree only). Writes
benchmarks/results/scoring_sides.json; no BENCHMARKS.md section of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def spaced(items: list, n: int) -> list:
    """n items evenly spaced over the list, as speed.py picks them (not imported: it puts this
    checkout's src first on the path)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def child(src: Path, runs: list[Path], images: int, repeats: int, batch: int) -> dict:
    """In a process that imported `src`: {"qarad": the package file imported, "runs": {run: {images_per_s, rounds}}}."""
    import qarad
    from qarad import runs as R
    from qarad.data.layouts import scan
    from qarad.detection.inference import score_images

    out = {}
    for run in runs:
        cfg = R.read_config(run)
        detector = R.load_detector(run, "cpu")
        test = scan(Path(cfg["data"]["root"]), cfg["data"]["category"], "test", cfg["data"].get("layout", "mvtec"))
        paths = [s.image for s in spaced(test, images)]
        sum(1 for _ in score_images(detector, paths, batch))  # warm-up: graphs traced, first-call allocations
        rounds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sum(1 for _ in score_images(detector, paths, batch))
            rounds.append(len(paths) / (time.perf_counter() - t0))
        out[str(run)] = {"images_per_s": statistics.median(rounds), "rounds": rounds, "n_images": len(paths)}
    return {"qarad": qarad.__file__, "runs": out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--src", nargs="+", type=Path, help="qarad source trees, measured in this order")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the source tree this process imported
    ap.add_argument("--out", type=Path, default=common.RESULTS / "scoring_sides.json")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.runs, args.images, args.repeats, args.batch)))
        return
    if not args.src:
        ap.error("--src is needed")
    results = {}
    for src in args.src:
        cmd = [sys.executable, "-c", "import sys, runpy; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')", str(src.resolve()), __file__,
               "--child", str(src), "--runs", *map(str, args.runs), "--images", str(args.images),
               "--repeats", str(args.repeats), "--batch", str(args.batch)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **common.CHILD_ENV})
        if proc.returncode != 0:
            raise SystemExit(f"{src}: child failed with exit code {proc.returncode}")
        results[str(src)] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(src, json.dumps({Path(r).name: round(v["images_per_s"], 1) for r, v in results[str(src)]["runs"].items()}),
              flush=True)
    env = {**common.envelope(results), "settings": {"images": args.images, "repeats": args.repeats,
                                                   "batch": args.batch}}
    common.write_json(args.out, env)


if __name__ == "__main__":
    main()
