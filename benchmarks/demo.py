"""`make demo` from a fresh clone, timed end to end (install included), then a headless-Chromium
screenshot of the report.

    python benchmarks/demo.py [--keep]

Clones the committed HEAD into a temporary folder, runs `make demo` there with the machine's
`python3`, and writes benchmarks/results/demo.json, benchmarks/results/demo_report.png (the
screenshot) and a BENCHMARKS.md section. Needs the Debian `chromium` package for the screenshot
(`apt-get install chromium`); without it the timing is still recorded and the screenshot is
reported as missing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SCREENSHOT = common.RESULTS / "demo_report.png"
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


def fresh_clone(dest: Path) -> None:
    subprocess.run(["git", "clone", "--quiet", str(common.ROOT), str(dest)], check=True)


def make_demo(clone: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["make", "demo"], cwd=clone, check=True)
    return (time.perf_counter() - start) / 60


def screenshot(report: Path, out: Path) -> bool:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found (apt-get install chromium): no screenshot", file=sys.stderr)
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={out}", "--window-size=1280,2600", report.resolve().as_uri()],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return out.is_file()


def table(results: dict) -> str:
    lines = ["| category | method | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for category, methods in results["metrics"].items():
        for method in ("qarad", "patchcore"):
            lines.append(f"| {category} | {method} | " + " | ".join(f"{methods[method][k]:.3f}" for k in METRICS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone (its path is printed)")
    ap.add_argument("--no-markdown", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qarad-demo-"))
    clone = work / "qarad"
    fresh_clone(clone)
    minutes = make_demo(clone)
    report = clone / "runs" / "demo" / "report.html"
    summary = json.loads((clone / "runs" / "demo" / "summary.json").read_text())
    shot = screenshot(report, SCREENSHOT)
    results = {"wall_minutes": round(minutes, 2), "report": str(report.relative_to(clone)),  # inside the clone
               "screenshot": str(SCREENSHOT.relative_to(common.ROOT)) if shot else None,
               "metrics": {c: {m: v for m, v in s.items() if m in ("qarad", "patchcore")}
                           for c, s in summary.items() if isinstance(s, dict)},
               "synth_per_s": {c: s["synth_per_s"] for c, s in summary.items() if isinstance(s, dict)}}
    env = common.envelope(results)
    common.write_json(common.RESULTS / "demo.json", env)
    body = (f"Command: `{env['command']}` ({env['date']}; {env['machine']}).\n\n"
            f"`make demo` on a fresh clone, install included: **{minutes:.1f} min**. "
            f"Screenshot: `{results['screenshot']}`.\n\n{table(results)}\n")
    if not args.no_markdown:
        common.update_section("demo", body)
    print(body)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"clone kept at {clone}")


if __name__ == "__main__":
    main()
