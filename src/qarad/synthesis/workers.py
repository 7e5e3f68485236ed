"""`qarad synth --workers N`: N single-threaded shard processes (`python -m qarad.synthesis.shard`)
and the merge of their manifests.

Decoding is a long chain of tiny matrix products that a second thread barely speeds up, so the
cores are better spent on separate samples (BENCHMARKS.md, synthesis speed, has the numbers).
Each shard resumes on its own; the merged manifest is in id order whatever the split.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..data.io import discarded_on_failure
from ..progress import bar
from . import jobs

PARENT_PID = "QARAD_PARENT_PID"  # set for synth worker processes: they stop when their parent is gone


def run_shards(request: dict, out: Path, n: int, total: int, fresh: bool) -> int:
    """Run `request` (generate's keyword arguments, as JSON) as `n` shard processes into `out` and
    merge their manifests; -> the samples they made. A failed worker's last line of output is the error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "QARAD_PROGRESS": "0",
           PARENT_PID: str(os.getpid())}
    done = lambda: sum(len(jobs.read_manifest(out / jobs.manifest_name((i, n)))) for i in range(n))  # noqa: E731
    before = done()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(n)]
    procs = [subprocess.Popen([sys.executable, "-m", "qarad.synthesis.shard", json.dumps(request), f"{i}/{n}"],
                              env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(n)]
    with bar(total, f"synth ({n} workers)") as tick:
        seen = 0
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            now = done()
            for _ in range(now - seen):
                tick()
            seen = now
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        logs[failed[0]].seek(0)
        message = (logs[failed[0]].read().strip().splitlines() or ["(no output)"])[-1]
        with discarded_on_failure(out, created=fresh, worth_keeping=lambda: done() > 0):
            raise ValueError(f"synth worker {failed[0]}/{n} failed: {message}")
    made = done() - before
    jobs.merge_manifests(out)
    return made
