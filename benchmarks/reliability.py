"""Reliability: how the real `qarad` command handles bad inputs, and its peak memory vs data size.

Every case runs `python -m qarad.cli ...` in its own process inside a temporary folder and
records the exit code, the last line of stderr, whether a traceback was printed, and whether the
command left partial output behind (any file or folder in the case's folder created or changed by
a command that failed). Peak RSS is read with os.wait4 on each child, so it is that one process's
own maximum resident set, not a cumulative maximum over earlier children.

Children run with OMP_NUM_THREADS=1 by default (--threads): on a shared 2-core machine torch's
default of one OpenMP thread per core spin-waits against the other load and runs many times slower.

    python benchmarks/reliability.py                      # everything (about 10 minutes on 2 cores)
    python benchmarks/reliability.py --sizes 100 --skip-bad   # a quick look at memory only

Writes benchmarks/results/reliability.json and the "reliability" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, envelope, update_section, write_json  # noqa: E402

from qarad.testing import make_mvtec_tree, make_tiny_aras, texture  # noqa: E402

CATEGORY = "widget"
SIZE = 64
PROMPT = "a thin dark scratch"


# --- running the command -------------------------------------------------------------------------

@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float
    killed: bool = False

    @property
    def message(self) -> str:
        lines = [ln.strip() for ln in self.stderr.replace("\r", "\n").splitlines() if ln.strip()]
        if not lines:
            lines = [ln.strip() for ln in self.stdout.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({"TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "PYTHONWARNINGS": "ignore"})
    return env


def qarad(argv: list[str], cwd: Path, env: dict, timeout: float = 600.0) -> Result:
    """Run `python -m qarad.cli ARGV`; peak RSS of exactly this child via os.wait4."""
    cwd.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "qarad.cli", *argv], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                killed = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return Result(proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024.0, seconds, killed)


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> content hash (files) or 'dir', for everything under `folder`."""
    if not folder.exists():
        return {}
    state = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        state[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "other"
    return state


# --- bad files ---------------------------------------------------------------------------------

def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(list(tag.encode()))


def write_png(path: Path, tag: str = "png") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(texture(_rng(tag), (SIZE, SIZE))).save(path)
    return path


def truncated_png(path: Path) -> Path:
    write_png(path, "trunc")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(texture(_rng("jpeg"), (SIZE, SIZE))).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def zero_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def text_as_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file, not an image\n")
    return path


HUGE = 30_000


def huge_header_png(path: Path) -> Path:
    """A 64x64 PNG whose IHDR (with a valid CRC) claims HUGE x HUGE pixels: 900 Mpx, tiny on disk."""
    write_png(path, "huge")
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", HUGE, HUGE)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


BAD_IMAGES = {  # case name -> (file name, writer)
    "truncated PNG": ("bad.png", truncated_png),
    "truncated JPEG": ("bad.jpg", truncated_jpeg),
    "zero-byte file": ("bad.png", zero_bytes),
    "text file named .png": ("bad.png", text_as_png),
    f"PNG header claiming {HUGE}x{HUGE} (900 Mpx)": ("bad.png", huge_header_png),
}


class Payload:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- cases ---------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str | None  # "error", "ok", or None (observation only)
    note: str = ""
    extra: dict = field(default_factory=dict)


class Bench:
    def __init__(self, work: Path, env: dict):
        self.work, self.env = work, env
        self.good = make_mvtec_tree(work / "fixtures" / "mvtec", size=(SIZE, SIZE), n_train=4)
        self.aras = make_tiny_aras(work / "fixtures" / "aras")
        self.images = work / "fixtures" / "images"
        self.images.mkdir()
        for name in ("000.png", "001.png"):
            shutil.copy(self.good / CATEGORY / "train" / "good" / name, self.images / name)
        self.run = work / "fixtures" / "run"
        res = qarad(["train", "--method", "patchcore", "--data", str(self.good), "--category", CATEGORY,
                     "--out", str(self.run), "--size", str(SIZE)], work / "fixtures", env)
        if res.exit_code != 0:
            raise RuntimeError(f"could not train the fixture run:\n{res.stderr}")
        self.n = 0

    def case_dir(self) -> Path:
        self.n += 1
        d = self.work / "cases" / f"{self.n:02d}"
        d.mkdir(parents=True)
        return d

    def tree(self, d: Path) -> Path:
        return Path(shutil.copytree(self.good, d / "data"))

    def run_copy(self, d: Path) -> Path:
        return Path(shutil.copytree(self.run, d / "run"))

    def aras_copy(self, d: Path) -> Path:
        return Path(shutil.copytree(self.aras, d / "aras"))

    def train_argv(self, data: Path, out: Path, *extra: str, category: str = CATEGORY) -> list[str]:
        return ["train", "--method", "patchcore", "--data", str(data), "--category", category, "--out", str(out),
                "--size", str(SIZE), *extra]

    def synth_argv(self, model: Path, images: list[Path], out: Path, prompt: str = PROMPT, *extra: str) -> list[str]:
        return ["synth", str(model), "--images", *map(str, images), "--prompts", prompt, "--n", "1",
                "--out", str(out), *extra]

    def cases(self):
        """Yield (case dir, Case); files each case needs are written just before it is yielded."""
        # Bad image files, through each verb that reads images.
        for name, (fname, writer) in BAD_IMAGES.items():
            d = self.case_dir()
            data = self.tree(d)
            writer(data / CATEGORY / "train" / "good" / fname)
            yield d, Case(f"{name} in train/good", self.train_argv(data, d / "out"), "error")
            d = self.case_dir()
            bad = writer(d / fname)
            yield d, Case(f"{name} given to predict", ["predict", str(self.run), str(bad), "--out", str(d / "out")],
                          "error")
            d = self.case_dir()
            bad = writer(d / fname)
            yield d, Case(f"{name} given to synth", self.synth_argv(self.aras, [bad], d / "out", PROMPT,
                                                                     "--auto-masks"), "error")

        # Masks (eval reads ground truth; synth reads user masks).
        gt = Path(CATEGORY) / "ground_truth" / "crack" / "000_mask.png"
        for name, mask, expect in [
            ("mask/image size mismatch (32x32 mask, 64x64 image)", np.full((32, 32), 255, np.uint8), "error"),
            ("all-zero mask on a defect image (legal)", np.zeros((SIZE, SIZE), np.uint8), "ok"),
            ("mask with values 0/128/255", np.tile(np.array([0, 128, 255], np.uint8), (SIZE, SIZE // 3 + 1))[:, :SIZE],
             "error"),
        ]:
            d = self.case_dir()
            data = self.tree(d)
            Image.fromarray(mask).save(data / gt)
            yield d, Case(f"{name} (eval)", ["eval", str(self.run_copy(d)), "--data", str(data)], expect)
        d = self.case_dir()
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(d / "mask.png")
        yield d, Case("mask/image size mismatch (synth --masks)",
                      self.synth_argv(self.aras, [self.images / "000.png"], d / "out", PROMPT,
                                      "--masks", str(d / "mask.png")), "error")

        # Dataset layout.
        d = self.case_dir()
        data = self.tree(d)
        (data / "empty").mkdir()
        yield d, Case("empty category folder", self.train_argv(data, d / "out", category="empty"), "error")
        d = self.case_dir()
        data = self.tree(d)
        shutil.rmtree(data / CATEGORY / "train" / "good")
        yield d, Case("missing train/good", self.train_argv(data, d / "out"), "error")

        # Prompts.
        for name, prompt, expect in [("prompt empty", "", "error"), ("prompt whitespace only", " \t  ", "error"),
                                     ("prompt of 10,000 characters", "x" * 10_000, "error"),
                                     ("prompt with a control character (ESC)", "a dark\x1b[31m scratch", "error"),
                                     ("prompt non-ASCII (legal)", "Kratzer, länglich und dunkel — 傷", "ok")]:
            d = self.case_dir()
            yield d, Case(name, self.synth_argv(self.aras, [self.images], d / "out", prompt, "--auto-masks"), expect)

        # Output folders.
        d = self.case_dir()
        locked = d / "locked"
        locked.mkdir()
        os.chmod(locked, 0o500)
        probe = locked / ".probe"
        try:
            probe.write_text("x")
            probe.unlink()
            bites = False
        except PermissionError:
            bites = True
        note = "" if bites else (f"running as uid {os.geteuid()}: permission bits are not enforced, so the "
                                 "0500 folder is writable; this case says nothing here (see the next rows)")
        yield d, Case("output under a chmod 0500 folder", self.train_argv(self.good, locked / "out"),
                      "error" if bites else None, note)
        os.chmod(locked, 0o700)
        for verb in ("train", "predict", "synth", "fit"):
            d = self.case_dir()
            (d / "file.txt").write_text("a regular file\n")
            out = d / "file.txt" / "sub"
            argv = {"train": self.train_argv(self.good, out),
                    "predict": ["predict", str(self.run), str(self.images), "--out", str(out)],
                    "synth": self.synth_argv(self.aras, [self.images], out, PROMPT, "--auto-masks"),
                    "fit": ["fit", "--data", str(self.good), "--category", CATEGORY, "--out", str(out), "--size",
                            str(SIZE), "--corpus-size", "8", "--tokenizer-steps", "2", "--prior-steps", "2",
                            "--qaw-steps", "2"]}[verb]
            yield d, Case(f"--out below a regular file ({verb})", argv, "error")
        d = self.case_dir()
        yield d, Case("output folder holds a different run (train --coreset-ratio 0.2)",
                      self.train_argv(self.good, self.run_copy(d), "--coreset-ratio", "0.2"), "error")
        d = self.case_dir()
        out = d / "out"
        pre = qarad(self.synth_argv(self.aras, [self.images], out, PROMPT, "--auto-masks"), d, self.env)
        assert pre.exit_code == 0, pre.stderr
        yield d, Case("output folder holds a different synth run (other prompt)",
                      self.synth_argv(self.aras, [self.images], out, "a round hole", "--auto-masks"), "error")
        d = self.case_dir()
        (d / "out").mkdir()
        (d / "out" / "notes.txt").write_text("someone else's file\n")
        yield d, Case("predict --out into a folder holding other files",
                      ["predict", str(self.run), str(self.images), "--out", str(d / "out")], "error")

        # Model files.
        import torch
        from safetensors.torch import load_file, save_file

        d = self.case_dir()
        run = self.run_copy(d)
        marker = d / "PICKLE_WAS_EXECUTED"
        torch.save({"memory": torch.zeros(4, 152), "payload": Payload(str(marker))}, run / "model.safetensors")
        yield d, Case("pickle renamed to model.safetensors (eval)", ["eval", str(run)], "error",
                      extra={"marker": marker})
        d = self.case_dir()
        run = self.run_copy(d)
        cfg = json.loads((run / "model.json").read_text())
        cfg["patchcore"]["bogus_key"] = 1
        (run / "model.json").write_text(json.dumps(cfg))
        yield d, Case("model.json with an unknown key (eval)", ["eval", str(run)], "error")
        d = self.case_dir()
        model = self.aras_copy(d)
        cfg = json.loads((model / "tokenizer.json").read_text())
        cfg["bogus_key"] = 1
        (model / "tokenizer.json").write_text(json.dumps(cfg))
        yield d, Case("ARAS tokenizer.json with an unknown key (synth)",
                      self.synth_argv(model, [self.images], d / "out", PROMPT, "--auto-masks"), "error")
        d = self.case_dir()
        run = self.run_copy(d)
        cfg = json.loads((run / "config.json").read_text())
        cfg["bogus_key"] = 1
        (run / "config.json").write_text(json.dumps(cfg))
        yield d, Case("run config.json with an unknown top-level key (eval)", ["eval", str(run)], "error")
        d = self.case_dir()
        run = self.run_copy(d)
        t = load_file(str(run / "model.safetensors"))
        save_file({"memory": torch.zeros(len(t["memory"]), 100), "memory_source": t["memory_source"]},
                  str(run / "model.safetensors"))
        yield d, Case("weights with wrong shapes (PatchCore memory 100 channels, not 152)", ["eval", str(run)],
                      "error")
        d = self.case_dir()
        model = self.aras_copy(d)
        t = load_file(str(model / "prior.safetensors"))
        t["head.weight"] = torch.zeros(t["head.weight"].shape[0] + 3, t["head.weight"].shape[1])
        save_file(t, str(model / "prior.safetensors"))
        yield d, Case("weights with wrong shapes (ARAS prior head.weight)",
                      self.synth_argv(model, [self.images], d / "out", PROMPT, "--auto-masks"), "error")


def scrub(text: str, work: Path) -> str:
    return text.replace(str(work / "fixtures"), "FIX").replace(str(work / "cases"), "CASE")


def display(argv: list[str], work: Path) -> str:
    """The command as a copyable line; long or non-printable arguments are shown as Python literals."""
    shown = []
    for a in argv:
        a = scrub(a, work)
        if len(a) > 60 and len(set(a)) == 1:
            shown.append(f"{a[0]!r}*{len(a)}")
        elif len(a) > 60:
            shown.append(f"<{len(a)} chars: {a[:20]!r}...>")
        elif not a.isprintable():
            shown.append(repr(a))
        else:
            shown.append(shlex.quote(a))
    return "qarad " + " ".join(shown)


def run_bad_inputs(work: Path, env: dict) -> list[dict]:
    bench = Bench(work, env)
    rows = []
    for d, case in bench.cases():
        before = snapshot(d)
        res = qarad(case.argv, d, env, timeout=300)
        after = snapshot(d)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        partial = res.exit_code != 0 and bool(changed)
        row = {"case": case.name, "command": display(case.argv, work), "exit_code": res.exit_code,
               "message": scrub(res.message, work),
               "partial_output": partial, "expected": case.expect, "traceback": res.traceback,
               "peak_rss_mb": round(res.peak_rss_mb, 1), "seconds": round(res.seconds, 1)}
        if partial:
            row["left_behind"] = changed[:8]
        if case.note:
            row["note"] = case.note
        if "marker" in case.extra:
            row["pickle_executed"] = Path(case.extra["marker"]).exists()
        ok = {"error": res.exit_code == 2 and not res.traceback and not partial,
              "ok": res.exit_code == 0, None: None}[case.expect]
        if row.get("pickle_executed"):
            ok = False
        row["as_expected"] = ok
        rows.append(row)
        flag = {True: "ok ", False: "BAD", None: "-- "}[ok]
        print(f"[{flag}] {case.name}: exit {res.exit_code}, {res.seconds:.1f} s, {res.peak_rss_mb:.0f} MB"
              f"{', partial output ' + str(changed[:3]) if partial else ''}\n      {row['message'][:200]}",
              flush=True)
    return rows


# --- peak memory vs number of images -------------------------------------------------------------

def make_images(root: Path, n: int) -> Path:
    folder = root / CATEGORY / "train" / "good"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(n)
    base = texture(rng, (256, 256))  # cut windows from one texture: distinct images, fast to make
    for i in range(n):
        y, x = rng.integers(0, 256 - SIZE, 2)
        Image.fromarray(base[y:y + SIZE, x:x + SIZE]).save(folder / f"{i:05d}.png", compress_level=1)
    return root


def run_rss(work: Path, env: dict, sizes: list[int], synth_cap: float) -> tuple[dict, dict, dict]:
    aras = make_tiny_aras(work / "rss" / "aras")
    rss = {"train": {}, "synth": {}, "fit": {}}
    secs = {"train": {}, "synth": {}, "fit": {}}
    notes: dict[str, dict] = {"train": {}, "synth": {}, "fit": {}}
    for n in sizes:
        t0 = time.perf_counter()
        data = make_images(work / "rss" / f"data{n}", n)
        print(f"{n} images written in {time.perf_counter() - t0:.1f} s", flush=True)
        good = data / CATEGORY / "train" / "good"
        d = work / "rss" / f"out{n}"
        commands = {
            "train": ["train", "--method", "patchcore", "--data", str(data), "--category", CATEGORY,
                      "--out", str(d / "train"), "--size", str(SIZE)],
            "synth": ["synth", str(aras), "--images", str(good), "--prompts", PROMPT, "--auto-masks",
                      "--n", str(n), "--out", str(d / "synth")],
            "fit": ["fit", "--data", str(data), "--category", CATEGORY, "--out", str(d / "fit"), "--size", str(SIZE),
                    "--corpus-size", "64", "--tokenizer-steps", "2", "--prior-steps", "2", "--qaw-steps", "2"],
        }
        for verb, argv in commands.items():
            res = qarad(argv, d, env, timeout=synth_cap if verb == "synth" else 900)
            rss[verb][str(n)] = round(res.peak_rss_mb, 1)
            secs[verb][str(n)] = round(res.seconds, 1)
            if res.killed:
                done = len((d / "synth" / "manifest.jsonl").read_text().splitlines()) \
                    if (d / "synth" / "manifest.jsonl").is_file() else 0
                notes[verb][str(n)] = f"stopped at the {synth_cap:.0f} s cap after {done}/{n} samples"
            elif res.exit_code != 0:
                notes[verb][str(n)] = f"failed (exit {res.exit_code}): {res.message}"
            print(f"{verb} {n}: {res.peak_rss_mb:.0f} MB, {res.seconds:.1f} s, exit {res.exit_code}"
                  f"{' (' + notes[verb][str(n)] + ')' if str(n) in notes[verb] else ''}", flush=True)
        shutil.rmtree(data)
    return rss, secs, notes


# --- report ------------------------------------------------------------------------------------

def _cell(text: str, limit: int = 170) -> str:
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|").replace("\n", " ")


def tables(results: dict, threads: int) -> str:
    out = ["## Reliability: bad inputs and peak memory", "",
           "Command: `python benchmarks/reliability.py` (results: `benchmarks/results/reliability.json`). "
           "Each row is the real `qarad` command in its own process in a temporary folder (FIX = shared fixtures: a "
           "tiny 64x64 MVTec tree, a PatchCore run trained on it at `--size 64`, a tiny random ARAS model; CASE = "
           "the case's own folder). *message* is the last stderr line; *partial output* means the failed command "
           "created or changed files in the case's folder; *as expected*: refused with exit code 2, a clean "
           "message and no partial output (or, for legal inputs, exit code 0).", ""]
    rows = results.get("bad_inputs")
    if rows:
        out += ["| case | command | exit code | message | partial output | as expected |", "|---|---|---|---|---|---|"]
        for r in rows:
            partial = "yes: " + ", ".join(r.get("left_behind", [])) if r["partial_output"] else "no"
            verdict = {True: "yes", False: "**no**", None: "n/a"}[r["as_expected"]]
            if r.get("traceback"):
                verdict += " (traceback)"
            if r.get("note"):
                verdict += f" ({r['note']})"
            out.append(f"| {_cell(r['case'])} | `{_cell(r['command'], 200)}` | {r['exit_code']} | "
                       f"{_cell(r['message'])} | {_cell(partial, 120)} | {_cell(verdict, 240)} |")
        huge = [r for r in rows if "900 Mpx" in r["case"]]
        if huge:
            out += ["", "Peak RSS of the 900 Mpx header cases: " + ", ".join(
                f"{r['case'].split(' ')[-1]} {r['peak_rss_mb']:.0f} MB" for r in huge)
                + " (decoding it would need 900 Mpx x 12 bytes = 10.8 GB of float RGB)."]
    rss = results.get("peak_rss_mb")
    if rss:
        secs, notes = results.get("seconds", {}), results.get("notes", {})
        sizes = sorted({int(n) for v in rss.values() for n in v})
        out += ["", f"Peak RSS (MB, with wall seconds) of one `qarad` process vs the number of 64x64 images, "
                    f"OMP_NUM_THREADS={threads}. train: `qarad train --method patchcore --size 64` on N normal "
                    "images; synth: `qarad synth TINY_ARAS --images FOLDER_OF_N --auto-masks --n N`; fit: "
                    "`qarad fit --size 64 --corpus-size 64 --tokenizer-steps 2 --prior-steps 2 --qaw-steps 2` on "
                    "N normal images (default model sizes; the corpus has a fixed size).", "",
                "| command | " + " | ".join(f"{n} images" for n in sizes) + " |",
                "|---|" + "---:|" * len(sizes)]
        for verb, per in rss.items():
            cells = []
            for n in sizes:
                k = str(n)
                if k not in per:
                    cells.append("not run")
                    continue
                cell = f"{per[k]:.0f} ({secs.get(verb, {}).get(k, float('nan')):.0f} s)"
                if k in notes.get(verb, {}):
                    cell += f" ({notes[verb][k]})"
                cells.append(_cell(cell))
            out.append(f"| {verb} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--synth-cap", type=float, default=420.0, help="seconds allowed to one synth run (default 420)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the children (default 1)")
    ap.add_argument("--skip-bad", action="store_true", help="only measure memory")
    ap.add_argument("--skip-rss", action="store_true", help="only run the bad-input cases")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = ap.parse_args()
    env = child_env(args.threads)
    work = Path(tempfile.mkdtemp(prefix="qarad-reliability-"))
    print(f"working in {work}", flush=True)
    path = RESULTS / "reliability.json"
    old = json.loads(path.read_text())["results"] if path.is_file() else {}
    results = {}
    try:
        start = time.perf_counter()
        results["bad_inputs"] = run_bad_inputs(work, env) if not args.skip_bad else old.get("bad_inputs", [])
        if not args.skip_rss:
            rss, secs, notes = run_rss(work, env, args.sizes, args.synth_cap)
            results.update({"peak_rss_mb": rss, "seconds": secs, "notes": notes})
        else:
            results.update({k: old[k] for k in ("peak_rss_mb", "seconds", "notes") if k in old})
        results["child_threads"] = args.threads
        print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            for p in work.rglob("*"):  # undo any chmod so the tree can be removed
                if p.is_dir() and not p.is_symlink():
                    os.chmod(p, 0o700)
            shutil.rmtree(work, ignore_errors=True)
    write_json(path, envelope(results))
    update_section("reliability", tables(results, args.threads))
    bad = [r for r in results["bad_inputs"] if r["as_expected"] is False]
    print(f"wrote {path}; {len(bad)} case(s) not as expected" + "".join(f"\n  - {r['case']}" for r in bad))


if __name__ == "__main__":
    main()
