"""Peak memory of `qarad predict` on one huge image (a generated 10000 x 10000 RGB PNG) under `resize`.

    python benchmarks/huge_predict.py [--run RUN] [--side 10000] [--src src [OLD/src ...]]

Draws a compressible 10000 x 10000 RGB PNG (grey, a fan of lines, a dark blob: ~0.7 MB, 100 Mpx,
under data/io.MAX_PIXELS) into a temporary folder and runs `qarad predict RUN IMAGE` once under
`/usr/bin/time -v` with each qarad source tree of `--src` (an older checkout, e.g. `git archive
COMMIT src | tar -x -C OLD`, is measured the same way, side by side). Writes benchmarks/results/huge_predict.json (peak RSS, wall time, the image) and the
"huge_predict" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# the PatchCore run benchmarks/speed.py fits (any trained run will do: the image dominates the memory)
RUN = common.ROOT / "benchmarks/models/speed/magnetic_tile__magnetic_tile/patchcore-efficientnet-lite0-256"


def draw(path: Path, side: int) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), (128, 120, 110))
    pen = ImageDraw.Draw(image)
    for i in range(0, side, side // 20):
        pen.line([(i, 0), (side - i, side)], fill=(200, 190, 180), width=9)
    pen.ellipse([side * 2 // 5, side * 2 // 5, side * 23 // 50, side * 47 // 100], fill=(30, 30, 30))
    image.save(path)


def predict_peak(run: Path, image: Path, out: Path, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "qarad.cli", "predict", str(run), str(image),
                           "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"qarad predict failed:\n{proc.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    return {"peak_rss_mb": peak_kb / 1024, "wall": wall}


def markdown(env: dict) -> str:
    r = env["results"]
    return "\n".join([
        "## Memory of `qarad predict` on a huge image", "",
        f"Command: `{env['command']}` ({env['date']}, {env['machine']}; results: "
        "`benchmarks/results/huge_predict.json`). One generated "
        f"{r['side']} x {r['side']} RGB PNG ({r['png_mb']:.1f} MB on disk), run `{r['run']}` (`resize`), "
        "peak RSS from `/usr/bin/time -v`, one process per source tree.", "",
        "| source tree | peak RSS MB | wall |", "|---|---|---|",
        *[f"| {src} | {m['peak_rss_mb']:.0f} | {m['wall']} |" for src, m in r["by_src"].items()]])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=RUN)
    ap.add_argument("--side", type=int, default=10000)
    ap.add_argument("--src", type=Path, nargs="+", default=[common.ROOT / "src"])
    ap.add_argument("--out", type=Path, default=common.RESULTS / "huge_predict.json")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qarad-huge-") as tmp:
        image = Path(tmp) / "huge.png"
        draw(image, args.side)
        result = {"side": args.side, "png_mb": image.stat().st_size / 2**20, "run": str(args.run),
                  "by_src": {str(src): predict_peak(args.run, image, Path(tmp) / f"predictions{i}", src)
                             for i, src in enumerate(args.src)}}
    common.publish(args.out, common.envelope(result), "huge_predict", markdown, not args.no_markdown)


if __name__ == "__main__":
    main()
