"""Shared helpers for benchmark scripts: the results envelope, data discovery, child runs."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path

from qarad.heap import MMAP_THRESHOLD

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
# dataset key (path under the data root) -> (MVTec root, category)
DATASETS = {
    "magnetic_tile/magnetic_tile": ("magnetic_tile", "magnetic_tile"),
    "mpdd/metal_plate": ("mpdd", "metal_plate"),
    "deeppcb/deeppcb": ("deeppcb", "deeppcb"),
}
# DeepPCB has 1000 normal templates; the foundation issue allows fitting on a fixed 300.
TRAIN_LIMIT = {"deeppcb/deeppcb": 300}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def envelope(results: dict) -> dict:
    return {"command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "results": results}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# glibc's malloc raises its mmap threshold after large frees, so the freed float32 batches of a long
# feature-caching run stay in the heap between the cached float16 views: on DeepPCB under `tile` the
# ablation's detectors process grew to ~3x its live tensors and was killed at 23.6 GB of 24. A fixed
# threshold returns every large block to the system when it is freed (measured: 2.9x -> 1.2x).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}  # qarad.heap: what the `qarad` CLI sets in-process


def run_child(args: list[str]) -> dict:
    """Run this script again in a fresh process (isolated peak RSS); it prints one JSON line last."""
    proc = subprocess.run([sys.executable, sys.argv[0], *args], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, **CHILD_ENV})
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available(data_root: Path, key: str) -> bool:
    root, cat = DATASETS[key]
    return (data_root / root / cat / "train" / "good").is_dir()


def measure_available(data_root: Path, keys: list[str], measure) -> dict:
    """{key: measure(key)} for the dataset keys found under `data_root`; the others are skipped, saying so."""
    out = {}
    for key in keys:
        if not available(data_root, key):
            print(f"skip {key}: not under {data_root}")
            continue
        out[key] = measure(key)
    return out


def update_section(name: str, body: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace the text between <!-- name:begin --> and <!-- name:end --> in BENCHMARKS.md."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)


def publish(out_json: Path, env: dict, section: str, markdown, update_markdown: bool = True) -> None:
    """Write a benchmark's results envelope, refresh its BENCHMARKS.md section from `markdown(env)`
    (unless told not to) and print that section."""
    write_json(out_json, env)
    md = markdown(env)
    if update_markdown:
        update_section(section, md)
    print(md)
