"""The cases of benchmarks/reliability.py: how to run `qarad` as a careless or hostile user would,
the small data each case plants, and what each case counts as a silently wrong result.

A case is one `qarad` command (or, for races and interrupts, a `runner` of several) run in its own
folder CASE/NNN. The judge (reliability.py) hashes that folder before and after: whatever existed
before and is not a qarad folder the case names in `owns` must be there unchanged afterwards, and
nothing may appear outside `out` (default: the command's --out) and `owns`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from qarad.testing import make_mvtec_tree, make_tiny_aras, make_visa_tree, texture

CATEGORY = "widget"
SIZE = 64
PROMPT = "a thin dark scratch"
TIMEOUT = 120.0  # seconds a case may run; a case killed at it counts as a hang
FLAG_TIMEOUT = 60.0  # a refused flag takes seconds; --batch-size 0 used to spin forever
TINY_FIT = ("--size", str(SIZE), "--corpus-size", "8", "--tokenizer-steps", "2", "--prior-steps", "2",
            "--qaw-steps", "2")
TINY_QARAD = ("--method", "qarad", "--negatives", "perlin", "--perlin-samples", "4", "--steps", "5",
              "--max-normal-views", "20")
NOTICE_WORDS = ("unfinished", "incomplete", "not finished", "missing", "of 200", "only")


# --- running the command -------------------------------------------------------------------------

@dataclass
class Result:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float
    killed: bool = False  # stopped at its time limit: a hang

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
    """A user's shell: warnings shown as Python shows them (no PYTHONWARNINGS), single-threaded
    torch (on a shared 2-core machine one OpenMP thread per core spin-waits against other load)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


class Running:
    """One `python -m qarad.cli ARGV` in its own session (so its workers can be found and ended);
    stdout/stderr go to files under LOGS that can be read while it runs."""

    def __init__(self, argv: list[str], cwd: Path, env: dict, logs: Path):
        cwd.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.iterdir()))
        self.argv, self.out_path, self.err_path = argv, logs / f"{n:05d}.out", logs / f"{n:05d}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.start = time.perf_counter()
            self.proc = subprocess.Popen([sys.executable, "-m", "qarad.cli", *argv], cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        self.status = self.usage = None

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def poll(self) -> bool:
        """Whether it has ended (reaped here, so its own peak RSS is read with os.wait4)."""
        if self.status is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.status, self.usage = status, usage
        return self.status is not None

    def signal(self, sig: int) -> None:
        if not self.poll():
            os.kill(self.proc.pid, sig)

    def group_alive(self) -> list[int]:
        """Live (not zombie) processes of its process group: workers that outlived it."""
        alive = []
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                alive.append(int(stat_file.parent.name))
        return alive

    def end_group(self) -> bool:
        """SIGKILL whatever is left of its process group (workers); True when something was left."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def finish(self, timeout: float = TIMEOUT, end_group: bool = True) -> Result:
        killed = False
        while not self.poll():
            if time.perf_counter() - self.start > timeout:
                self.end_group()
                killed = True
                _, self.status, self.usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - self.start
        if end_group:
            self.end_group()  # workers a finished command left behind must not touch the next case
        self.proc.returncode = os.waitstatus_to_exitcode(self.status)
        return Result(self.argv, self.proc.returncode, self.out_path.read_text(errors="replace"), self.stderr(),
                      self.usage.ru_maxrss / 1024.0, seconds, killed)


# --- cases ---------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    argv: list[str] | None  # one qarad command (None: `runner` runs several)
    expect: str | None  # "error" (exit 2, one line naming `names`), "ok" (exit 0), "either", "any", None
    issue: str = ""  # the numbered item of issue 32 it reproduces ("" for the earlier bad-input cases)
    names: str | tuple | None = None  # what the error line must name (a flag or a file; a tuple: one of them)
    cwd: Path | None = None  # default: the case folder
    out: Path | None = None  # where it may create things (default: --out's value)
    owns: tuple = ()  # qarad folders it may rewrite (eval's run, score's synth folder, ...)
    keep: tuple = ()  # planted files that must survive even inside `out` or `owns`
    check: Callable | None = None  # (results, case folder) -> what is silently wrong, or None
    runner: Callable | None = None  # () -> list[Result], for races and interrupts
    timeout: float = TIMEOUT
    note: str = ""
    extra: dict = field(default_factory=dict)


class SetupError(RuntimeError):
    """A fixture command failed: the group's cases cannot run (counted, never hidden)."""


# --- planted files ---------------------------------------------------------------------------------

def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(list(tag.encode()))


def write_png(path: Path, tag: str = "png", size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(texture(_rng(tag), size)).save(path)
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


def user_files(folder: Path, *names: str) -> Path:
    """A user's folder holding files of these names (and notes.txt), each with its own content."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("notes.txt", *names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            write_png(path, f"user {name}")
        else:
            path.write_text(f"the user's own {name}, not qarad's\n")
    return folder


def edit_json(path: Path, change: Callable[[object], object]) -> Path:
    """Rewrite a JSON file by hand, NaN allowed (a hand edit need not be strict JSON)."""
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return path


def set_key(keys: tuple, value) -> Callable:
    def change(obj):
        node = obj
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return obj
    return change


DEEP = "[" * 100_000 + "]" * 100_000  # 100k-deep nesting: json's recursive decoder overflows


def manifest_of(folder: Path) -> Path:
    """The folder's manifest: the merged one, else its (first) shard manifest."""
    if (folder / "manifest.jsonl").is_file():
        return folder / "manifest.jsonl"
    return sorted(folder.glob("manifest*.jsonl"))[0]


def edit_manifest(folder: Path, change: Callable[[list[dict]], list]) -> None:
    """Rewrite a synth folder's manifest lines by hand (`change` may return raw strings)."""
    path = manifest_of(folder)
    entries = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in change(entries)))


def manifest_ids(folder: Path) -> tuple[list, int]:
    """(ids of the parseable lines, number of lines) of the folder's manifest.jsonl."""
    path = folder / "manifest.jsonl"
    if not path.is_file():
        return [], 0
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    ids = []
    for ln in lines:
        try:
            ids.append(json.loads(ln)["id"])
        except (ValueError, KeyError, TypeError):
            pass
    return ids, len(lines)


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def read_scores(folder: Path) -> list[dict]:
    import csv

    path = folder / "scores.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def exif_rotated(src: Path, dst: Path) -> Path:
    """`src` stored turned 90 degrees counter-clockwise with EXIF orientation 6 ("turn 90 clockwise to
    show"), as a camera held on its side writes it: shown upright, it is `src` again."""
    img = Image.open(src)
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    dst.parent.mkdir(parents=True, exist_ok=True)
    stored.save(dst, exif=exif.tobytes())
    return dst


def make_train_images(root: Path, n: int, size: int = SIZE, seed: int = 0) -> Path:
    """An MVTec tree of n normal training images cut from one texture (fast to write) plus the tiny
    test split of make_mvtec_tree."""
    make_mvtec_tree(root, size=(size, size), n_train=1)
    folder = root / CATEGORY / "train" / "good"
    rng = np.random.default_rng(seed)
    base = texture(rng, (4 * size, 4 * size))
    for i in range(n):
        y, x = rng.integers(0, 3 * size, 2)
        Image.fromarray(base[y:y + size, x:x + size]).save(folder / f"{i:03d}.png", compress_level=1)
    return root


def make_large_tree(root: Path, side: int = 1024, n_train: int = 10, n_good: int = 2, n_defect: int = 2) -> Path:
    """A grayscale MVTec tree of side x side PNGs (large enough that decoding one overlaps the
    backbone's ONNX export: issue 32, item 7)."""
    rng = np.random.default_rng(side)
    cat = root / CATEGORY
    for folder, n in (("train/good", n_train), ("test/good", n_good)):
        (cat / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(texture(rng, (side, side))[..., 0]).save(cat / folder / f"{i:03d}.png")
    (cat / "test" / "crack").mkdir(parents=True)
    (cat / "ground_truth" / "crack").mkdir(parents=True)
    for i in range(n_defect):
        image = texture(rng, (side, side))[..., 0]
        mask = np.zeros((side, side), np.uint8)
        y, x = rng.integers(0, side - side // 6, 2)
        image[y:y + side // 6, x:x + side // 6] = 255
        mask[y:y + side // 6, x:x + side // 6] = 255
        Image.fromarray(image).save(cat / "test" / "crack" / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


# --- what a case may find silently wrong -----------------------------------------------------------

def distinct_overlays(n_inputs: int, out: str = "out") -> Callable:
    def check(results, d):
        if results[-1].exit_code != 0:
            return None
        rows = read_scores(d / out)
        overlays = [r.get("overlay") for r in rows]
        if len(rows) != n_inputs:
            return f"scores.csv has {len(rows)} rows for {n_inputs} inputs"
        if len(set(overlays)) != len(overlays):
            return f"two inputs share one overlay name ({sorted(overlays)})"
        missing = [o for o in overlays if not (d / out / o).is_file()]
        return f"overlay files missing: {missing}" if missing else None
    return check


def accepted(what: str) -> Callable:
    """A case whose exit 0 is itself the silent wrong result (e.g. a NaN threshold used)."""
    def check(results, d):
        return what if results[-1].exit_code == 0 else None
    return check


def no_silence(results, d) -> str | None:
    """score/train on an unfinished synth folder must refuse it or say so."""
    r = results[-1]
    said = (r.stdout + r.stderr).lower()
    if r.exit_code == 0 and not any(w in said for w in NOTICE_WORDS):
        return "took an unfinished synth folder (a few of 200 samples) without a word"
    return None


def pixel_auroc(run: Path) -> float | None:
    path = run / "metrics.json"
    try:
        return float(json.loads(path.read_text())["overall"]["pixel_auroc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def same_pixel_auroc(reference: Callable[[], float | None], run: str, tol: float = 0.05) -> Callable:
    def check(results, d):
        if results[-1].exit_code != 0:
            return None
        ref, got = reference(), pixel_auroc(d / run)
        if ref is None or got is None:
            return f"no pixel AUROC to compare (reference {ref}, this run {got})"
        if abs(ref - got) > tol:
            return f"pixel AUROC {got:.3f} on the EXIF-turned copy vs {ref:.3f} upright: masks misaligned"
        return None
    return check


def same_scores(tol: float = 0.05) -> Callable:
    """predict of [reference PNG, the same pixels in another encoding]: both scores alike."""
    def check(results, d):
        if results[-1].exit_code != 0:
            return None
        rows = read_scores(d / "out")
        if len(rows) != 2:
            return f"scores.csv has {len(rows)} rows, expected 2"
        a, b = (float(r["score"]) for r in rows)
        if abs(a - b) > tol * max(abs(a), 1e-6):
            return f"score {b:.3f} for the float TIFF vs {a:.3f} for the same pixels as PNG"
        return None
    return check


def records_settings(run: str, **want) -> Callable:
    """A finished run records these detector settings in config.json and model.json."""
    def check(results, d):
        if results[-1].exit_code != 0:
            return None
        try:
            cfg = json.loads((d / run / "config.json").read_text())["detector"]
            model = json.loads((d / run / "model.json").read_text())
        except (OSError, ValueError, KeyError) as exc:
            return f"cannot read the run's settings ({exc})"
        part = model.get("segmenter") or model.get("patchcore") or {}
        wrong = {k: (cfg.get(k, "absent"), part.get(k, "absent")) for k, v in want.items()
                 if cfg.get(k, "absent") != v or part.get(k, "absent") != v}
        return f"flags dropped: (config.json, model.json) hold {wrong}" if wrong else None
    return check


def says_already_trained(results, d) -> str | None:
    r = results[-1]
    if r.exit_code == 0 and "already trained" in r.stdout:
        return "said 'already trained' for a run with another --coreset-ratio"
    return None


# --- fixtures and cases ------------------------------------------------------------------------------

class Bench:
    """Shared fixtures (made on first use) and the case groups; each group is a generator of
    (case folder, Case) whose files are planted just before the case is yielded."""

    def __init__(self, work: Path, env: dict):
        self.work, self.env = work, env
        self.fix = work / "fixtures"
        self.logs = work / "logs"
        self.good = make_mvtec_tree(self.fix / "mvtec", size=(SIZE, SIZE), n_train=4)
        self.aras = make_tiny_aras(self.fix / "aras")
        self.images = self.fix / "images"
        self.images.mkdir()
        for name in ("000.png", "001.png"):
            shutil.copy(self.good / CATEGORY / "train" / "good" / name, self.images / name)
        self.n = 0

    # running
    def spawn(self, argv: list, cwd: Path | None = None) -> Running:
        return Running([str(a) for a in argv], cwd or self.fix, self.env, self.logs)

    def qarad(self, argv: list, cwd: Path | None = None, timeout: float = TIMEOUT) -> Result:
        return self.spawn(argv, cwd).finish(timeout)

    def must(self, argv: list, cwd: Path | None = None, tries: int = 1) -> Result:
        for _ in range(tries):
            res = self.qarad(argv, cwd, timeout=300)
            if res.exit_code == 0:
                return res
        raise SetupError(f"fixture command failed (exit {res.exit_code}): qarad {' '.join(map(str, argv))}: "
                         f"{res.message}")

    def case_dir(self) -> Path:
        self.n += 1
        d = self.work / "cases" / f"{self.n:03d}"
        d.mkdir(parents=True)
        return d

    # argv builders
    def train_argv(self, data: Path, out: Path, *extra: str, category: str = CATEGORY) -> list[str]:
        return ["train", "--method", "patchcore", "--data", str(data), "--category", category, "--out", str(out),
                "--size", str(SIZE), *extra]

    def synth_argv(self, model: Path, images: list[Path], out: Path, prompt: str = PROMPT, *extra: str) -> list[str]:
        return ["synth", str(model), "--images", *map(str, images), "--prompts", prompt, "--n", "1",
                "--out", str(out), *extra]

    def fit_argv(self, data: Path, out: Path, *extra: str) -> list[str]:
        return ["fit", "--data", str(data), "--category", CATEGORY, "--out", str(out), *TINY_FIT, *extra]

    def predict_argv(self, run: Path, images: list[Path], out: Path | None, *extra: str) -> list[str]:
        return ["predict", str(run), *map(str, images), *(["--out", str(out)] if out else []), *extra]

    # fixtures
    def tree(self, d: Path, name: str = "data") -> Path:
        return Path(shutil.copytree(self.good, d / name))

    @cached_property
    def run(self) -> Path:
        run = self.fix / "run"
        self.must(self.train_argv(self.good, run))
        return run

    def run_copy(self, d: Path, name: str = "run") -> Path:
        return Path(shutil.copytree(self.run, d / name, symlinks=True))

    @cached_property
    def evaluated(self) -> Path:
        run = Path(shutil.copytree(self.run, self.fix / "evaluated"))
        self.must(["eval", run])
        return run

    def evaluated_copy(self, d: Path, name: str = "run") -> Path:
        return Path(shutil.copytree(self.evaluated, d / name, symlinks=True))

    @cached_property
    def plain_pixel_auroc(self) -> float | None:
        return pixel_auroc(self.evaluated)

    def aras_copy(self, d: Path) -> Path:
        return Path(shutil.copytree(self.aras, d / "aras"))

    @cached_property
    def synth(self) -> Path:
        out = self.fix / "synth"
        self.must(self.synth_argv(self.aras, [self.images], out, PROMPT, "--auto-masks", "--n", "4"))
        return out

    @cached_property
    def scored(self) -> Path:
        out = Path(shutil.copytree(self.synth, self.fix / "scored"))
        self.must(["score", out])
        return out

    @cached_property
    def shards(self) -> list[Path]:
        outs = [self.fix / "shards" / f"s{i}" for i in range(2)]
        for i, out in enumerate(outs):
            self.must(self.synth_argv(self.aras, [self.images], out, PROMPT, "--auto-masks", "--n", "4",
                                      "--shard", f"{i}/2"))
        return outs

    def shard_copies(self, into: Path) -> list[Path]:
        return [Path(shutil.copytree(s, into / s.name, symlinks=True)) for s in self.shards]

    @cached_property
    def fitted(self) -> Path:
        out = self.fix / "fitted"
        self.must(self.fit_argv(self.good, out))
        return out

    @cached_property
    def large(self) -> tuple[Path, Path]:
        data = make_large_tree(self.fix / "large")
        run = self.fix / "large_run"
        self.must(self.train_argv(data, run), tries=3)  # the warnings race may hit the fixture too
        return data, run

    @cached_property
    def slow_tree(self) -> Path:
        """300 normal images at 128 px: a train that lasts a few seconds, long enough to interrupt."""
        return make_train_images(self.fix / "slow", 300, size=128)

    def killed_synth(self, d: Path) -> Path:
        """A synth folder whose run was SIGKILLed after its first samples: unfinished."""
        out = d / "unfinished"
        run = self.spawn(self.synth_argv(self.aras, [self.images], out, PROMPT, "--auto-masks", "--n", "200"))
        deadline = time.perf_counter() + 90
        while time.perf_counter() < deadline and not run.poll():
            if len(manifest_ids(out)[0]) >= 2 or len(list((out / "images").glob("*.png"))) >= 2:
                break
            time.sleep(0.05)
        run.signal(signal.SIGKILL)
        run.finish()
        if not (out / "synth.json").is_file():
            raise SetupError("the synth run to kill wrote nothing in 90 s")
        return out

    def groups(self) -> list[Callable]:
        return [self.bad_images, self.masks_layout_prompts, self.output_folders, self.model_files,
                self.predict_out, self.fit_overwrite, self.demo_out, self.merge_paths, self.benchmark_paths,
                self.concurrency, self.warnings_race, self.batch_sizes, self.devices, self.train_flags,
                self.synth_flags, self.fit_flags, self.hand_edited_json, self.qarad_flags, self.interrupted,
                self.exif_tiff, self.synth_source_cwd, self.unfinished_synth, self.bank_threshold,
                self.metrics_json, self.permissions, self.variations]

    # --- the earlier 40 bad-input cases ---------------------------------------------------------
    def bad_images(self):
        for name, (fname, writer) in BAD_IMAGES.items():
            d = self.case_dir()
            data = self.tree(d)
            writer(data / CATEGORY / "train" / "good" / fname)
            yield d, Case(f"{name} in train/good", self.train_argv(data, d / "out"), "error", names=fname)
            d = self.case_dir()
            bad = writer(d / fname)
            yield d, Case(f"{name} given to predict", self.predict_argv(self.run, [bad], d / "out"), "error",
                          names=fname)
            d = self.case_dir()
            bad = writer(d / fname)
            yield d, Case(f"{name} given to synth", self.synth_argv(self.aras, [bad], d / "out", PROMPT,
                                                                     "--auto-masks"), "error", names=fname)

    def masks_layout_prompts(self):
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
            run = self.run_copy(d)
            yield d, Case(f"{name} (eval)", ["eval", str(run), "--data", str(data)], expect, owns=(run,),
                          names="000_mask.png" if expect == "error" else None)
        d = self.case_dir()
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(d / "mask.png")
        yield d, Case("mask/image size mismatch (synth --masks)",
                      self.synth_argv(self.aras, [self.images / "000.png"], d / "out", PROMPT,
                                      "--masks", str(d / "mask.png")), "error", names="mask.png")
        d = self.case_dir()
        data = self.tree(d)
        (data / "empty").mkdir()
        yield d, Case("empty category folder", self.train_argv(data, d / "out", category="empty"), "error",
                      names="empty")
        d = self.case_dir()
        data = self.tree(d)
        shutil.rmtree(data / CATEGORY / "train" / "good")
        yield d, Case("missing train/good", self.train_argv(data, d / "out"), "error", names="good")
        for name, prompt, expect in [("prompt empty", "", "error"), ("prompt whitespace only", " \t  ", "error"),
                                     ("prompt of 10,000 characters", "x" * 10_000, "error"),
                                     ("prompt with a control character (ESC)", "a dark\x1b[31m scratch", "error"),
                                     ("prompt non-ASCII (legal)", "Kratzer, länglich und dunkel — 傷", "ok")]:
            d = self.case_dir()
            yield d, Case(name, self.synth_argv(self.aras, [self.images], d / "out", prompt, "--auto-masks"), expect,
                          names="prompt" if expect == "error" else None)

    def output_folders(self):
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
                      "error" if bites else None, note=note)
        os.chmod(locked, 0o700)
        for verb in ("train", "predict", "synth", "fit"):
            d = self.case_dir()
            (d / "file.txt").write_text("a regular file\n")
            out = d / "file.txt" / "sub"
            argv = {"train": self.train_argv(self.good, out),
                    "predict": self.predict_argv(self.run, [self.images], out),
                    "synth": self.synth_argv(self.aras, [self.images], out, PROMPT, "--auto-masks"),
                    "fit": self.fit_argv(self.good, out)}[verb]
            yield d, Case(f"--out below a regular file ({verb})", argv, "error", names="file.txt")
        d = self.case_dir()
        run = self.run_copy(d)
        yield d, Case("output folder holds a different run (train --coreset-ratio 0.2)",
                      self.train_argv(self.good, run, "--coreset-ratio", "0.2"), "error", names="run")
        d = self.case_dir()
        out = d / "out"
        self.must(self.synth_argv(self.aras, [self.images], out, PROMPT, "--auto-masks"), d)
        yield d, Case("output folder holds a different synth run (other prompt)",
                      self.synth_argv(self.aras, [self.images], out, "a round hole", "--auto-masks"), "error",
                      names="out")
        d = self.case_dir()
        user_files(d / "out")
        yield d, Case("predict --out into a folder holding other files",
                      self.predict_argv(self.run, [self.images], d / "out"), "error", names="out")

    def model_files(self):
        import torch
        from safetensors.torch import load_file, save_file

        d = self.case_dir()
        run = self.run_copy(d)
        marker = d / "PICKLE_WAS_EXECUTED"
        torch.save({"memory": torch.zeros(4, 152), "payload": Payload(str(marker))}, run / "model.safetensors")
        yield d, Case("pickle renamed to model.safetensors (eval)", ["eval", str(run)], "error", owns=(run,),
                      names="model.safetensors", check=lambda res, d: "a pickle was executed" if marker.exists()
                      else None)
        d = self.case_dir()
        run = self.run_copy(d)
        edit_json(run / "model.json", set_key(("patchcore", "bogus_key"), 1))
        yield d, Case("model.json with an unknown key (eval)", ["eval", str(run)], "error", owns=(run,),
                      names="model.json")
        d = self.case_dir()
        model = self.aras_copy(d)
        edit_json(model / "tokenizer.json", set_key(("bogus_key",), 1))
        yield d, Case("ARAS tokenizer.json with an unknown key (synth)",
                      self.synth_argv(model, [self.images], d / "out", PROMPT, "--auto-masks"), "error",
                      names="tokenizer.json")
        d = self.case_dir()
        run = self.run_copy(d)
        edit_json(run / "config.json", set_key(("bogus_key",), 1))
        yield d, Case("run config.json with an unknown top-level key (eval)", ["eval", str(run)], "error",
                      owns=(run,), names="config.json")
        d = self.case_dir()
        run = self.run_copy(d)
        t = load_file(str(run / "model.safetensors"))
        save_file({"memory": torch.zeros(len(t["memory"]), 100), "memory_source": t["memory_source"]},
                  str(run / "model.safetensors"))
        yield d, Case("weights with wrong shapes (PatchCore memory 100 channels, not 152)", ["eval", str(run)],
                      "error", owns=(run,), names="model")
        d = self.case_dir()
        model = self.aras_copy(d)
        t = load_file(str(model / "prior.safetensors"))
        t["head.weight"] = torch.zeros(t["head.weight"].shape[0] + 3, t["head.weight"].shape[1])
        save_file(t, str(model / "prior.safetensors"))
        yield d, Case("weights with wrong shapes (ARAS prior head.weight)",
                      self.synth_argv(model, [self.images], d / "out", PROMPT, "--auto-masks"), "error",
                      names="prior")

    # --- issue 32, item 1: predict --out -------------------------------------------------------
    def predict_out(self):
        d = self.case_dir()
        run = self.evaluated_copy(d)
        yield d, Case("predict --out the run folder itself (after eval: it holds scores.csv)",
                      self.predict_argv(run, [self.images], run), "error", "1", names="run")
        d = self.case_dir()
        photos = user_files(d / "photos", "a.png", "b.png", "scores.csv")
        yield d, Case("predict --out the user's image folder that holds a scores.csv",
                      self.predict_argv(self.run, [photos], photos), "error", "1", names="photos")
        d = self.case_dir()
        home = user_files(d / "home", "scores.csv", "thesis.tex", "sub/data.txt")
        yield d, Case("predict --out . in a folder holding the user's files and a scores.csv",
                      self.predict_argv(self.run, [self.images], Path(".")), "error", "1", cwd=home, out=home)
        d = self.case_dir()
        home = user_files(d / "home", "thesis.tex")
        yield d, Case("predict --out . in a folder holding the user's files (no scores.csv)",
                      self.predict_argv(self.run, [self.images], Path(".")), "error", "1", cwd=home, out=home)
        d = self.case_dir()
        self.must(self.predict_argv(self.run, [self.images], d / "preds"), d)
        yield d, Case("predict --out an earlier predictions folder (qarad's own: replaced)",
                      self.predict_argv(self.run, [self.images], d / "preds"), "ok", "1", owns=(d / "preds",))
        d = self.case_dir()
        self.must(self.predict_argv(self.run, [self.images], d / "preds"), d)
        (d / "preds" / "notes.txt").write_text("the user's notes beside the predictions\n")
        yield d, Case("predict --out earlier predictions to which the user added notes.txt",
                      self.predict_argv(self.run, [self.images], d / "preds"), "either", "1", owns=(d / "preds",),
                      keep=(d / "preds" / "notes.txt",))
        d = self.case_dir()
        run = self.evaluated_copy(d)
        self.must(self.predict_argv(run, [self.images], None), d)
        yield d, Case("predict twice into the default RUN/predictions (the run's other files untouched)",
                      self.predict_argv(run, [self.images], None), "ok", "1", owns=(run / "predictions",))
        d = self.case_dir()
        imgs = Path(shutil.copytree(self.images, d / "imgs"))
        yield d, Case("predict --out the input image folder itself",
                      self.predict_argv(self.run, [imgs], imgs), "error", "1", names="imgs")
        d = self.case_dir()
        target = user_files(d / "mine", "a.png")
        (d / "link").symlink_to(target, target_is_directory=True)
        yield d, Case("predict --out a symlink to the user's folder of files",
                      self.predict_argv(self.run, [self.images], d / "link"), "error", "1", names=("link", "mine"))
        d = self.case_dir()
        for sub in ("a", "c"):
            write_png(d / sub / "dup.png", f"dup {sub}")
        yield d, Case("predict a/dup.png c/dup.png: two overlay names",
                      self.predict_argv(self.run, [d / "a" / "dup.png", d / "c" / "dup.png"], d / "out"), "ok", "14",
                      check=distinct_overlays(2))
        d = self.case_dir()
        for sub, name in (("a", "dup.png"), ("b", "dup.png"), ("c", "dup_1.png")):
            write_png(d / sub / name, f"dup {sub}")
        yield d, Case("predict a/dup.png b/dup.png c/dup_1.png: three overlay names",
                      self.predict_argv(self.run, [d / "a" / "dup.png", d / "b" / "dup.png", d / "c" / "dup_1.png"],
                                        d / "out"), "ok", "14", check=distinct_overlays(3))
        d = self.case_dir()
        run = self.run_copy(d)
        (run / "predictions").write_text("the user's file named predictions\n")
        yield d, Case("predict into the default RUN/predictions when that is a user's file",
                      self.predict_argv(run, [self.images], None), "error", "1", names="predictions",
                      out=run / "predictions")
        d = self.case_dir()
        pics = d / "Bilder mit Leerzeichen ü"
        shutil.copytree(self.images, pics)
        yield d, Case("predict images and --out in paths with spaces and unicode",
                      self.predict_argv(self.run, [pics], d / "Vorhersagen é ü"), "ok", "", check=distinct_overlays(
                          2, "Vorhersagen é ü"))
        d = self.case_dir()
        (d / "link.png").symlink_to(self.images / "000.png")
        yield d, Case("predict an image given as a symlink", self.predict_argv(self.run, [d / "link.png"], d / "out"),
                      "ok", "", check=distinct_overlays(1))
        d = self.case_dir()
        run = self.run_copy(d)
        (d / "runlink").symlink_to(run, target_is_directory=True)
        yield d, Case("predict with the run given as a symlink",
                      self.predict_argv(d / "runlink", [self.images], d / "out"), "ok", "", check=distinct_overlays(2))

    # --- item 2: fit --overwrite; fit into foreign folders -----------------------------------------
    def fit_overwrite(self):
        d = self.case_dir()
        model = Path(shutil.copytree(self.fitted, d / "model"))
        user_files(model, "sub/data.txt")
        yield d, Case("fit --overwrite into a model folder holding the user's notes and a sub-folder",
                      self.fit_argv(self.good, model, "--seed", "1", "--overwrite"), "either", "2", owns=(model,),
                      keep=(model / "notes.txt", model / "sub" / "data.txt"))
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png", "sub/data.txt")
        yield d, Case("fit --overwrite --out a user's folder (no model in it)",
                      self.fit_argv(self.good, mine, "--overwrite"), "error", "2", names="mine")
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png")
        yield d, Case("fit --out a user's folder of files", self.fit_argv(self.good, mine), "error", "2", names="mine")

    # --- item 3: demo --out ----------------------------------------------------------------------------
    def demo_out(self):
        d = self.case_dir()
        mine = user_files(d / "mine", "report.html", "summary.json")
        (mine / "summary.json").write_text('{"the user": "summary"}\n')
        yield d, Case("demo --out a folder holding the user's report.html and summary.json",
                      ["demo", "--quick", "--out", str(mine)], "error", "3", names="mine")
        d = self.case_dir()
        mine = user_files(d / "mine")
        yield d, Case("demo --out a folder holding the user's notes.txt", ["demo", "--quick", "--out", str(mine)],
                      "error", "3", names="mine")
        d = self.case_dir()
        (d / "file").write_text("a file\n")
        yield d, Case("demo --out a regular file", ["demo", "--quick", "--out", str(d / "file")], "error", "3",
                      names="file")

    # --- item 4: merge reads paths from shard manifests -----------------------------------------------
    def _shards_in(self, d: Path) -> list[Path]:
        """The two shard folders at CASE/sh/x/s0, s1: deeper than --out CASE/m/out, so a manifest path
        climbing out of a shard lands on a different file than the same path climbing out of --out."""
        return self.shard_copies(d / "sh" / "x")

    def merge_paths(self):
        def merge(d, shards, out=None):
            return ["merge", *map(str, shards), "--out", str(out or d / "m" / "out")]

        d = self.case_dir()
        shards = self._shards_in(d)
        write_png(d / "sh" / "x" / "decoy.png", "attacker")
        write_png(d / "m" / "decoy.png", "the user's decoy")
        edit_manifest(shards[0], lambda es: [{**es[0], "image": "../decoy.png"}, *es[1:]])
        yield d, Case('merge: a shard manifest line with "image": "../decoy.png"', merge(d, shards), "error", "4",
                      names="decoy.png")
        d = self.case_dir()
        shards = self._shards_in(d)
        write_png(d / "sh" / "t.png", "attacker")
        write_png(d / "t.png", "the user's t.png")
        edit_manifest(shards[0], lambda es: [{**es[0], "mask": "../../t.png"}, *es[1:]])
        yield d, Case('merge: a shard manifest line with "mask": "../../t.png"', merge(d, shards), "error", "4",
                      names="t.png")
        d = self.case_dir()
        shards = self._shards_in(d)
        decoy = write_png(d / "abs_decoy.png", "the user's absolute decoy")
        edit_manifest(shards[0], lambda es: [{**es[0], "image": str(decoy)}, *es[1:]])
        yield d, Case("merge: a shard manifest line with an absolute image path", merge(d, shards), "error", "4",
                      names="abs_decoy.png")
        d = self.case_dir()
        shards = self._shards_in(d)
        secret = d / "etc" / "secret.conf"
        secret.parent.mkdir()
        secret.write_text("root:x:0:0:a system file outside every synth folder\n")
        first = json.loads(manifest_of(shards[0]).read_text().splitlines()[0])["image"]
        (shards[0] / first).unlink()
        (shards[0] / first).symlink_to(secret)

        def no_secret(results, d, secret=secret):
            digest = secret.read_bytes()
            hits = [str(p.relative_to(d)) for p in (d / "m").rglob("*") if p.is_file() and not p.is_symlink()
                    and p.read_bytes() == digest]
            return f"copied the content of a symlink's target outside the shard into {hits}" if hits else None
        yield d, Case("merge: a shard image that is a symlink to a system file", merge(d, shards), "either", "4",
                      check=no_secret)
        d = self.case_dir()
        shards = self._shards_in(d)
        edit_manifest(shards[0], lambda es: [{**es[0], "id": "x"}, *es[1:]])
        yield d, Case('merge: a shard manifest line with "id": "x"', merge(d, shards), "error", "4",
                      names="manifest")
        d = self.case_dir()
        shards = self._shards_in(d)
        first = json.loads(manifest_of(shards[0]).read_text().splitlines()[0])
        edit_manifest(shards[1], lambda es: [*es, {**first, "seed": first["seed"] + 1}])
        yield d, Case("merge: one sample id made differently in two shards", merge(d, shards), "error", "4",
                      names="0")
        d = self.case_dir()
        shards = self._shards_in(d)
        edit_manifest(shards[0], lambda es: [*es, DEEP])
        yield d, Case("merge: a shard manifest line nested 100k deep", merge(d, shards), "either", "4")
        d = self.case_dir()
        shards = self._shards_in(d)
        edit_manifest(shards[0], lambda es: [json.dumps(es[0])[:40], *es[1:]])
        yield d, Case("merge: a torn line at the top of a shard manifest", merge(d, shards), "either", "4")
        d = self.case_dir()
        shards = self._shards_in(d)
        (shards[0] / "synth.json").write_text("[1, 2, 3]\n")
        yield d, Case("merge: a shard whose synth.json is a list", merge(d, shards), "error", "4",
                      names="synth.json")
        d = self.case_dir()
        shards = self._shards_in(d)
        mine = user_files(d / "mine", "a.png")
        yield d, Case("merge --out a user's folder of files", merge(d, shards, mine), "error", "4", names="mine")
        d = self.case_dir()
        shards = self._shards_in(d)
        yield d, Case("merge two shards (legal)", merge(d, shards), "ok", "4",
                      check=lambda res, d: None if sorted(manifest_ids(d / "m" / "out")[0]) == [0, 1, 2, 3]
                      else f"merged ids {manifest_ids(d / 'm' / 'out')[0]}, expected 0..3")
        d = self.case_dir()
        shards = self._shards_in(d)
        yield d, Case("merge --out one of the shards (legal)", merge(d, shards, shards[0]), "ok", "4",
                      owns=(shards[0],))
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png")
        yield d, Case("merge a folder that is not a synth output", merge(d, [mine]), "error", "4", names="mine")

    # --- item 5: benchmark reads categories from a VisA csv ---------------------------------------------
    def benchmark_paths(self):
        def visa(d, change=None):
            root = make_visa_tree(d / "visa", size=(SIZE, SIZE), n_train=4)
            if change:
                csv = root / "split_csv" / "1cls.csv"
                lines = csv.read_text().splitlines()
                csv.write_text("\n".join([lines[0], *(change(i, ln) for i, ln in enumerate(lines[1:]))]) + "\n")
            return root

        def bench(data, out, *extra):
            return ["benchmark", "--data", str(data), "--method", "patchcore", "--size", str(SIZE), "--out", str(out),
                    *extra]

        d = self.case_dir()
        root = visa(d, lambda i, ln: ",".join(["../../x", *ln.split(",")[1:]]))
        yield d, Case("benchmark on a VisA tree whose csv object is ../../x", bench(root, d / "b" / "o" / "out"),
                      "error", "5", names="../../x")
        d = self.case_dir()
        write_png(d / "decoy.JPG", "decoy")
        root = visa(d, lambda i, ln: ln.replace(ln.split(",")[3], "../decoy.JPG") if i == 0 else ln)
        yield d, Case("benchmark on a VisA csv whose first image is ../decoy.JPG (outside the root)",
                      bench(root, d / "out"), "error", "5", names="decoy.JPG")
        d = self.case_dir()
        decoy = write_png(d / "abs.JPG", "decoy")
        root = visa(d, lambda i, ln: ln.replace(ln.split(",")[3], str(decoy)) if i == 0 else ln)
        yield d, Case("benchmark on a VisA csv naming an absolute image path", bench(root, d / "out"), "error", "5",
                      names="abs.JPG")
        d = self.case_dir()
        data = self.tree(d)
        yield d, Case("benchmark --categories ../../x on an MVTec tree",
                      bench(data, d / "b" / "o" / "out", "--categories", "../../x"), "error", "5", names="../../x")
        d = self.case_dir()
        data = self.tree(d)
        yield d, Case("benchmark on an MVTec tree (legal)", bench(data, d / "out"), "ok", "5")
        for flag, value in (("--batch-size", "0"), ("--batch-size", "-1"), ("--device", "banana"),
                            ("--device", "cuda")):
            d = self.case_dir()
            yield d, Case(f"benchmark {flag} {value}", bench(self.good, d / "out", flag, value), "error",
                          "8" if flag == "--batch-size" else "9", names=flag if flag == "--batch-size" else value,
                          timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png")
        yield d, Case("benchmark --out a user's folder of files", bench(self.good, mine), "error", "5", names="mine")

    # --- item 6: two processes on one folder -------------------------------------------------------------
    def _wait_for(self, cond: Callable[[], bool], run: Running, limit: float = 90.0) -> None:
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline and not run.poll() and not cond():
            time.sleep(0.05)

    def concurrency(self):
        d = self.case_dir()
        syn = d / "syn"
        n = 120  # outlasts score's start-up (about 15 s)
        synth = self.synth_argv(self.aras, [self.images], syn, PROMPT, "--auto-masks", "--n", str(n))

        def score_during_synth(d=d, syn=syn):
            a = self.spawn(synth, d)
            self._wait_for(lambda: len(manifest_ids(syn)[0]) >= 3, a)
            b = self.qarad(["score", syn], d)
            return [a.finish(), b]

        def all_lines(results, d, syn=syn, n=n):
            ids, lines = manifest_ids(syn)
            if results[0].exit_code == 0 and (sorted(ids) != list(range(n)) or lines != n):
                return f"manifest holds {len(set(ids))} distinct ids in {lines} lines after synth --n {n}"
            return None
        yield d, Case(f"score while synth --n {n} runs into the same folder", None, "either", "6", out=syn,
                      runner=score_during_synth, check=all_lines, timeout=240,
                      extra={"shown": f"qarad {' '.join(synth)} & qarad score {syn}"})
        d = self.case_dir()
        syn = d / "syn"
        n = 20
        synth = self.synth_argv(self.aras, [self.images], syn, PROMPT, "--auto-masks", "--n", str(n))

        def two_synths(d=d):
            a, b = self.spawn(synth, d), self.spawn(synth, d)
            return [a.finish(240), b.finish(240)]

        def unique(results, d, syn=syn, n=n):
            ids, lines = manifest_ids(syn)
            if len(ids) != len(set(ids)):
                return f"{len(ids) - len(set(ids))} sample ids written twice ({lines} lines for --n {n})"
            if any(r.exit_code == 0 for r in results) and sorted(ids) != list(range(n)):
                return f"manifest holds {len(set(ids))} of {n} ids though a synth exited 0"
            return None
        yield d, Case("two synths with the same settings into one folder at once", None, "either", "6", out=syn,
                      runner=two_synths, check=unique, timeout=240,
                      extra={"shown": f"qarad {' '.join(synth)} & (the same again)"})
        d = self.case_dir()
        run = self.evaluated_copy(d)
        argvs = [self.train_argv(self.good, run, "--coreset-ratio", r, "--overwrite") for r in ("0.2", "0.3")]

        def two_trains(argvs=argvs, d=d):
            a, b = (self.spawn(argv, d) for argv in argvs)
            return [a.finish(), b.finish()]
        yield d, Case("two train --overwrite (coreset 0.2 and 0.3) into one run at once", None, "either", "6",
                      owns=(run,), runner=two_trains,
                      extra={"shown": f"qarad {' '.join(argvs[0])} & qarad {' '.join(argvs[1])}"})
        d = self.case_dir()
        argvs = [self.train_argv(self.good, d / "run", "--coreset-ratio", r) for r in ("0.2", "0.3")]

        def two_fresh(argvs=argvs, d=d):
            a, b = (self.spawn(argv, d) for argv in argvs)
            return [a.finish(), b.finish()]
        yield d, Case("two train (coreset 0.2 and 0.3) into one new folder at once", None, "either", "6",
                      out=d / "run", runner=two_fresh,
                      extra={"shown": f"qarad {' '.join(argvs[0])} & qarad {' '.join(argvs[1])}"})
        d = self.case_dir()
        syn = d / "syn"
        synth = self.synth_argv(self.aras, [self.images], syn, PROMPT, "--auto-masks", "--n", "40", "--workers", "2")
        facts: dict = {}

        def kill_parent(d=d, syn=syn, facts=facts):
            a = self.spawn(synth, d)
            self._wait_for(lambda: any(syn.rglob("*.png")), a)
            a.signal(signal.SIGKILL)
            res = a.finish(end_group=False)
            time.sleep(4.0)  # each worker may finish the sample it is making, then must stop
            grace = len(list(syn.rglob("*.png")))
            time.sleep(4.0)
            facts["written_after"] = len(list(syn.rglob("*.png"))) - grace
            facts["workers_left"] = a.group_alive()
            a.end_group()
            return [res]

        def workers_stopped(results, d, facts=facts):
            if facts.get("written_after"):
                return (f"workers still writing 4 s after their parent was killed ({facts['written_after']} more "
                        "images in the next 4 s)")
            if facts.get("workers_left"):
                return f"{len(facts['workers_left'])} worker process(es) outlived their killed parent by 8 s"
            return None
        yield d, Case("synth --workers 2: the parent is SIGKILLed", None, "any", "14", out=syn, runner=kill_parent,
                      check=workers_stopped, extra={"shown": f"qarad {' '.join(synth)}; kill -9 PARENT"})

    # --- item 7: the warnings race on large images -------------------------------------------------------
    def warnings_race(self):
        """The backbone's ONNX export runs at the first full batch; a small batch starts it while the
        read-ahead thread still decodes the next large images."""
        data, run = self.large
        for extra in ((), ("--batch-size", "2")):
            d = self.case_dir()
            yield d, Case(f"train on ten 1024x1024 grayscale PNGs {' '.join(extra)}".strip(),
                          self.train_argv(data, d / "run", *extra), "ok", "7", timeout=240)
        for extra in (("--batch-size", "1"), ("--batch-size", "2"), ("--batch-size", "1")):
            d = self.case_dir()
            copy = Path(shutil.copytree(run, d / "run"))
            yield d, Case(f"eval on 1024x1024 grayscale PNGs {' '.join(extra)}", ["eval", str(copy), *extra], "ok",
                          "7", owns=(copy,), timeout=240)
        d = self.case_dir()
        yield d, Case("predict four 1024x1024 grayscale PNGs --batch-size 1",
                      self.predict_argv(run, [data / CATEGORY / "test" / "good", data / CATEGORY / "test" / "crack"],
                                        d / "out", "--batch-size", "1"), "ok", "7", timeout=240,
                      check=distinct_overlays(4))

    # --- items 8 and 9: flags that used to spin, crash or be taken as they are ------------------------
    def batch_sizes(self):
        for value in ("0", "-1"):
            for verb in ("train", "eval", "predict"):
                d = self.case_dir()
                argv = {"train": self.train_argv(self.good, d / "out", "--batch-size", value),
                        "eval": ["eval", str(self.run_copy(d)), "--batch-size", value],
                        "predict": self.predict_argv(self.run, [self.images], d / "out", "--batch-size", value)}[verb]
                yield d, Case(f"{verb} --batch-size {value}", argv, "error", "8", names="--batch-size",
                              owns=(d / "run",), timeout=FLAG_TIMEOUT)

    def devices(self):
        for value in ("cuda", "banana"):
            for verb in ("train", "eval", "predict"):
                d = self.case_dir()
                argv = {"train": self.train_argv(self.good, d / "out", "--device", value),
                        "eval": ["eval", str(self.run_copy(d)), "--device", value],
                        "predict": self.predict_argv(self.run, [self.images], d / "out", "--device", value)}[verb]
                yield d, Case(f"{verb} --device {value} (CPU-only torch)", argv, "error", "9", names=value,
                              owns=(d / "run",), timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("train --device auto (CPU here: legal)",
                      self.train_argv(self.good, d / "out", "--device", "auto"),
                      "ok", "9")

    def train_flags(self):
        bad = [("--size", "100000"), ("--size", "0"), ("--size", "-64"), ("--coreset-ratio", "0"),
               ("--coreset-ratio", "1.5"), ("--coreset-ratio", "nan"), ("--memory-limit", "0"),
               ("--memory-limit", "-5"), ("--max-train-images", "0"), ("--max-train-images", "-1"),
               ("--scale", "0"), ("--scale", "nan"), ("--shots", "3"), ("--shot-seed", "2"), ("--real-weight", "-1"),
               ("--search", "faiss")]
        for flag, value in bad:
            d = self.case_dir()
            extra = ("--policy", "tile") if flag == "--scale" else ()
            yield d, Case(f"train {flag} {value}", self.train_argv(self.good, d / "out", *extra, flag, value), "error",
                          "9", names=flag, timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("train --size 7 (not a multiple of 32)", self.train_argv(self.good, d / "out", "--size", "7"),
                      "either", "9", timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("train --seed -1", self.train_argv(self.good, d / "out", "--seed", "-1"), "either", "9",
                      timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("train --layout folder --test-split-ratio 1.5",
                      ["train", "--method", "patchcore", "--data", str(self.good), "--category", "plain", "--out",
                       str(d / "out"), "--size", str(SIZE), "--normal-dir", f"{CATEGORY}/train/good",
                       "--test-split-ratio", "1.5"], "error", "9", names="--test-split-ratio", timeout=FLAG_TIMEOUT)

    def synth_flags(self):
        bad = [("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"), ("--cfg-scale", "nan"),
               ("--cfg-scale", "inf"), ("--cfg-scale", "-inf"), ("--top-k", "-1"), ("--top-p", "0"),
               ("--top-p", "1.5"), ("--top-p", "nan"), ("--strength", "1.5"), ("--strength", "nan"),
               ("--n", "0"), ("--n", "-1"), ("--shard", "2/2"), ("--shard", "0/0"), ("--shard", "x"),
               ("--workers", "0"), ("--workers", "-1"), ("--mix", "0.5")]
        for flag, value in bad:
            d = self.case_dir()
            yield d, Case(f"synth {flag} {value}" + (" without --prompt-b" if flag == "--mix" else ""),
                          self.synth_argv(self.aras, [self.images], d / "out", PROMPT, "--auto-masks", flag, value),
                          "error", "9", names=flag, timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("synth --prompt-b ... --mix 1.5",
                      self.synth_argv(self.aras, [self.images], d / "out", PROMPT, "--auto-masks", "--prompt-b",
                                      "a round hole", "--mix", "1.5"), "error", "9", names="--mix",
                      timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("synth --temperature 0 (greedy: legal)",
                      self.synth_argv(self.aras, [self.images], d / "out", PROMPT, "--auto-masks", "--temperature",
                                      "0"), "ok", "9")

    def fit_flags(self):
        bad = [("--batch-size", "0"), ("--batch-size", "-4"), ("--corpus-size", "0"), ("--corpus-size", "-1"),
               ("--max-train-images", "0"), ("--max-train-images", "-1"), ("--window", "60"), ("--window", "0"),
               ("--max-zoom", "0"), ("--max-zoom", "nan"), ("--tokenizer-steps", "-1"), ("--tokenizer-ema", "1.5"),
               ("--tokenizer-ema", "nan"), ("--device", "cuda"), ("--real-share", "2"), ("--shots", "3")]
        for flag, value in bad:
            d = self.case_dir()
            yield d, Case(f"fit {flag} {value}", self.fit_argv(self.good, d / "out", flag, value), "error", "9",
                          names=flag if flag != "--device" else value, timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png")
        yield d, Case("fit --init a folder that is not a model", self.fit_argv(self.good, d / "out", "--init", mine),
                      "error", "9", names="mine", timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("fit --category that does not exist",
                      ["fit", "--data", str(self.good), "--category", "nope", "--out", str(d / "out"), *TINY_FIT],
                      "error", "9", names="nope", timeout=FLAG_TIMEOUT)

    # --- item 9: hand-edited JSON ------------------------------------------------------------------------
    def hand_edited_json(self):
        run_edits = [
            ("config.json", "coreset_ratio as a string", set_key(("detector", "coreset_ratio"), "0.1")),
            ("config.json", "detector null", set_key(("detector",), None)),
            ("config.json", "a list", lambda obj: [obj]),
            ("config.json", "coreset_ratio NaN", set_key(("detector", "coreset_ratio"), float("nan"))),
            ("config.json", "data.root a number", set_key(("data", "root"), 5)),
            ("config.json", "nested 100k deep", DEEP),
            ("model.json", "threshold a string", set_key(("threshold",), "high")),
            ("model.json", "patchcore null", set_key(("patchcore",), None)),
            ("model.json", "a list", lambda obj: [obj]),
            ("model.json", "nested 100k deep", DEEP),
        ]
        for i, (name, what, change) in enumerate(run_edits):
            d = self.case_dir()
            run = self.run_copy(d)
            if isinstance(change, str):
                (run / name).write_text(change)
            else:
                edit_json(run / name, change)
            argv = ["eval", str(run)] if i % 2 == 0 else self.predict_argv(run, [self.images], d / "out")
            yield d, Case(f"run {name} hand-edited: {what} ({argv[0]})", argv, "error", "9", names=name, owns=(run,))
        d = self.case_dir()
        syn = Path(shutil.copytree(self.synth, d / "syn"))
        (syn / "synth.json").write_text("[1, 2, 3]\n")
        yield d, Case("synth.json hand-edited: a list (score)", ["score", str(syn)], "error", "9", names="synth.json",
                      owns=(syn,))
        d = self.case_dir()
        syn = Path(shutil.copytree(self.synth, d / "syn"))
        (syn / "synth.json").write_text(DEEP)
        yield d, Case("synth.json hand-edited: nested 100k deep (synth resumes into it)",
                      self.synth_argv(self.aras, [self.images], syn, PROMPT, "--auto-masks", "--n", "4"), "error", "9",
                      names="synth.json", owns=(syn,))
        d = self.case_dir()
        syn = Path(shutil.copytree(self.synth, d / "syn"))
        edit_manifest(syn, lambda es: [{**es[0], "image": 5}, *es[1:]])
        yield d, Case('manifest.jsonl hand-edited: "image": 5 (score)', ["score", str(syn)], "error", "9",
                      names="manifest", owns=(syn,))
        for name, what, change in [("aras.json", "null", None), ("aras.json", "a list", [1, 2]),
                                   ("tokenizer.json", "codebook_size a string", "16")]:
            d = self.case_dir()
            model = self.aras_copy(d)
            if name == "tokenizer.json":
                edit_json(model / name, set_key(("codebook_size",), change))
            else:
                (model / name).write_text(json.dumps(change))
            yield d, Case(f"ARAS {name} hand-edited: {what} (synth)",
                          self.synth_argv(model, [self.images], d / "out", PROMPT, "--auto-masks"), "error", "9",
                          names=name)

    # --- item 10: flags a method does not use ---------------------------------------------------------------
    def qarad_flags(self):
        d = self.case_dir()
        yield d, Case("train --method qarad --coreset-ratio 0.5 --memory-limit 50 (recorded and used)",
                      self.train_argv(self.good, d / "run", *TINY_QARAD, "--coreset-ratio", "0.5", "--memory-limit",
                                      "50"), "either", "10",
                      check=records_settings("run", coreset_ratio=0.5, memory_limit=50))
        d = self.case_dir()
        self.must(self.train_argv(self.good, d / "run", *TINY_QARAD, "--coreset-ratio", "0.5"), d)
        yield d, Case("train --method qarad again with --coreset-ratio 0.2 into that run",
                      self.train_argv(self.good, d / "run", *TINY_QARAD, "--coreset-ratio", "0.2"), "either", "10",
                      owns=(d / "run",), check=says_already_trained)
        for flag in [("--synth", "/nonexistent"), ("--weighting", "none"), ("--negatives", "perlin"),
                     ("--perlin-samples", "5"), ("--no-residual",), ("--no-fusion",), ("--real-weight", "2"),
                     ("--steps", "5"), ("--max-normal-views", "10")]:
            d = self.case_dir()
            yield d, Case(f"train --method patchcore {' '.join(flag)} (a qarad-only flag)",
                          self.train_argv(self.good, d / "out", *flag), "error", "10", names=flag[0],
                          timeout=FLAG_TIMEOUT)

    # --- item 11: an interrupted or finished train --overwrite ---------------------------------------------
    def interrupted(self):
        data = self.slow_tree
        for sig in (signal.SIGINT, signal.SIGKILL):
            d = self.case_dir()
            run = d / "run"
            self.must(self.train_argv(data, run, "--size", "128"), d)
            self.must(["eval", run], d)
            old = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
            argv = self.train_argv(data, run, "--size", "128", "--coreset-ratio", "0.3", "--overwrite")
            facts: dict = {}

            def interrupt(argv=argv, run=run, sig=sig, d=d, facts=facts, old=old):
                a = self.spawn(argv, d)
                self._wait_for(lambda: "train patchcore" in a.stderr()
                               or read_or_none(run / "config.json") != old["config.json"], a)
                time.sleep(0.5)  # into the work, past the folder's preparation
                facts["done_before_signal"] = a.poll()
                a.signal(sig)
                first = a.finish()
                return [first, self.qarad(["eval", run], d)]

            def consistent(results, d, run=run, old=old, facts=facts):
                now = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
                if "config.json" in now and now["config.json"] != old["config.json"] \
                        and now.get("model.safetensors") == old["model.safetensors"]:
                    return "config.json of the new run beside the old run's model"
                if results[1].exit_code == 0 and now.get("model.safetensors") == old["model.safetensors"] \
                        and now.get("config.json") != old["config.json"]:
                    return "eval took the mixed run"
                return None
            yield d, Case(f"train --overwrite interrupted by {signal.Signals(sig).name}, then eval", None, "any",
                          "11", owns=(run,), runner=interrupt, check=consistent, timeout=240,
                          extra={"shown": f"qarad {' '.join(argv)}; kill -{signal.Signals(sig).name[3:]}; "
                                          f"qarad eval {run}"})
        d = self.case_dir()
        run = self.evaluated_copy(d)
        before = {name: (run / name).read_bytes() for name in ("metrics.json", "scores.csv", "report.html")}

        def fresh_outputs(results, d, run=run, before=before):
            stale = [n for n, data in before.items() if (run / n).is_file() and (run / n).read_bytes() == data]
            return f"the old model's {stale} kept beside the new model" if results[0].exit_code == 0 and stale \
                else None
        yield d, Case("train --overwrite (coreset 0.3) over an evaluated run: no stale metrics",
                      self.train_argv(self.good, run, "--coreset-ratio", "0.3", "--overwrite"), "ok", "11",
                      owns=(run,), check=fresh_outputs)

    # --- item 12: EXIF orientation, float TIFFs ----------------------------------------------------------------
    def exif_tiff(self):
        for masks_too in (False, True):
            d = self.case_dir()
            data = self.tree(d)
            test = data / CATEGORY / "test"
            for image in sorted(test.rglob("*.png")):
                exif_rotated(image, image)
            if masks_too:
                for mask in sorted((data / CATEGORY / "ground_truth").rglob("*.png")):
                    exif_rotated(mask, mask)
            run = self.run_copy(d)
            what = "test images and their masks" if masks_too else "test images (masks upright)"
            yield d, Case(f"eval on EXIF-turned {what}", ["eval", str(run), "--data", str(data)], "ok", "12",
                          owns=(run,), check=same_pixel_auroc(lambda: self.plain_pixel_auroc, "run"))
        d = self.case_dir()
        upright = texture(_rng("exif"), (40, SIZE))
        Image.fromarray(upright).save(d / "upright.png")
        exif_rotated(d / "upright.png", d / "turned.png")
        (d / "upright.png").unlink()

        def overlay_upright(results, d):
            if results[-1].exit_code != 0:
                return None
            rows = read_scores(d / "out")
            if not rows:
                return "no scores.csv"
            w, h = Image.open(d / "out" / rows[0]["overlay"]).size
            return None if (h, w) == (40, SIZE) else f"overlay is {w}x{h}; the image shows {SIZE}x40: EXIF ignored"
        yield d, Case("predict an EXIF-turned 64x40 image: the overlay shows it upright",
                      self.predict_argv(self.run, [d / "turned.png"], d / "out"), "ok", "12", check=overlay_upright)
        gray = np.asarray(Image.open(self.images / "000.png").convert("L"))
        for scale, expect in ((1.0, "either"), (255.0, "ok")):
            d = self.case_dir()
            Image.fromarray(gray).save(d / "a_reference.png")
            Image.fromarray(gray.astype(np.float32) / scale).save(d / "b_float.tif")  # mode F
            span = "0-255" if scale == 1.0 else "0-1"
            yield d, Case(f"predict a float TIFF holding {span} beside the same pixels as PNG",
                          self.predict_argv(self.run, [d / "a_reference.png", d / "b_float.tif"], d / "out"), expect,
                          "12", names="b_float.tif", check=same_scores())

    # --- item 13: a synth manifest read from another working directory -------------------------------------------
    def synth_source_cwd(self):
        d = self.case_dir()
        shutil.copytree(self.images, d / "imgs")
        (d / "a").mkdir()

        def sources_found(results, d):
            path = d / "syn" / "manifest.jsonl"
            if results[-1].exit_code != 0 or not path.is_file():
                return None
            for line in path.read_text().splitlines():
                src = Path(json.loads(line)["source"])
                if not src.is_absolute() and not (d / "syn" / src).is_file():
                    return f"manifest source {src} holds only from the folder synth ran in"
            return None
        yield d, Case("synth --images ../imgs --out ../syn run from CASE/a (relative paths)",
                      self.synth_argv(self.aras, [Path("../imgs")], Path("../syn"), PROMPT, "--auto-masks", "--n",
                                      "2"), "ok", "13", cwd=d / "a", out=d / "syn", check=sources_found)
        d = self.case_dir()
        shutil.copytree(self.images, d / "imgs")
        (d / "a").mkdir()
        (d / "b").mkdir()
        self.must(self.synth_argv(self.aras, [Path("../imgs")], Path("../syn"), PROMPT, "--auto-masks", "--n", "2"),
                  d / "a")
        self.must(["score", "../syn"], d / "a")
        yield d, Case("train --method qarad --synth from another folder than synth ran in",
                      ["train", "--method", "qarad", "--data", str(self.good), "--category", CATEGORY, "--out",
                       "../run", "--size", str(SIZE), "--synth", "../syn", "--perlin-samples", "4", "--steps", "5",
                       "--max-normal-views", "20"], "ok", "13", cwd=d / "b", out=d / "run")

    # --- item 14: unfinished synth folders, banks and thresholds, JSON, permissions ----------------------------------
    def unfinished_synth(self):
        d = self.case_dir()
        syn = self.killed_synth(d)
        yield d, Case("score a synth folder whose run was killed (a few of 200 samples)", ["score", str(syn)],
                      "either", "14", owns=(syn,), check=no_silence)
        d = self.case_dir()
        syn = self.killed_synth(d)
        yield d, Case("train --method qarad --synth a killed (unfinished) synth folder",
                      self.train_argv(self.good, d / "run", "--method", "qarad", "--synth", str(syn),
                                      "--weighting", "none", "--perlin-samples", "4", "--steps", "5",
                                      "--max-normal-views", "20"), "either", "14", check=no_silence)

    def bank_threshold(self):
        import torch
        from safetensors.torch import load_file, save_file

        def bank(run: Path, rows: int | None, fill: float) -> None:
            t = load_file(str(run / "model.safetensors"))
            n = len(t["memory"]) if rows is None else rows
            save_file({"memory": torch.full((n, t["memory"].shape[1]), fill),
                       "memory_source": t["memory_source"][:n].clone()}, str(run / "model.safetensors"))

        for what, edit, verb in [
            ("an empty memory bank", lambda run: bank(run, 0, 0.0), "eval"),
            ("an empty memory bank", lambda run: bank(run, 0, 0.0), "predict"),
            ("a NaN memory bank", lambda run: bank(run, None, float("nan")), "eval"),
            ("a NaN threshold", lambda run: edit_json(run / "model.json", set_key(("threshold",), float("nan"))),
             "predict"),
            ("an infinite threshold", lambda run: edit_json(run / "model.json", set_key(("threshold",), float("inf"))),
             "predict"),
        ]:
            d = self.case_dir()
            run = self.run_copy(d)
            edit(run)
            argv = ["eval", str(run)] if verb == "eval" else self.predict_argv(run, [self.images], d / "out")
            yield d, Case(f"a saved model with {what} ({verb})", argv, "error", "14", names="model", owns=(run,),
                          check=accepted(f"{verb} used a model with {what}"))

    def metrics_json(self):
        for drop, what in ((("crack", "scratch"), "only good test images"), (("good",), "only defect test images")):
            d = self.case_dir()
            data = self.tree(d)
            for kind in drop:
                shutil.rmtree(data / CATEGORY / "test" / kind)
                shutil.rmtree(data / CATEGORY / "ground_truth" / kind, ignore_errors=True)
            run = self.run_copy(d)
            yield d, Case(f"eval on {what} (metrics undefined: no NaN in metrics.json)",
                          ["eval", str(run), "--data", str(data)], "either", "14", owns=(run,))
        d = self.case_dir()
        run = self.run_copy(d)
        edit_json(run / "config.json", set_key(("policy", "size"), 128))

        def reports_used_policy(results, d, run=run):
            if results[-1].exit_code != 0:
                return None
            used = json.loads((run / "model.json").read_text())["policy"]
            said = json.loads((run / "metrics.json").read_text()).get("policy")
            return None if said == used else f"metrics.json reports policy {said}, the model used {used}"
        yield d, Case("eval a run whose config.json policy (size 128) differs from model.json's (64)",
                      ["eval", str(run)], "either", "14", owns=(run,), check=reports_used_policy)

    def permissions(self):
        d = self.case_dir()
        yield d, Case("train under umask 022: files 0644, folders 0755", self.train_argv(self.good, d / "run"), "ok",
                      "14")
        d = self.case_dir()
        yield d, Case("synth under umask 022: files 0644, folders 0755",
                      self.synth_argv(self.aras, [self.images], d / "out", PROMPT, "--auto-masks", "--n", "2"), "ok",
                      "14")
        d = self.case_dir()
        yield d, Case("fit under umask 022: files 0644, folders 0755", self.fit_argv(self.good, d / "model"), "ok",
                      "14")
        d = self.case_dir()
        yield d, Case("export under umask 022: files 0644", ["export", str(self.run), "--out", str(d / "m.onnx")],
                      "ok", "14", out=d / "m.onnx", owns=(d / "m.onnx.json",))

    # --- more ways in: symlinks, spaces and unicode, files in the way, foreign folders ---------------------
    def variations(self):
        d = self.case_dir()
        data = self.tree(d, "Daten mit Leerzeichen ä")
        yield d, Case("train with --data and --out paths holding spaces and unicode",
                      self.train_argv(data, d / "Läufe ü" / "run é"), "ok")
        d = self.case_dir()
        pics = Path(shutil.copytree(self.images, d / "Bilder ü"))
        yield d, Case("synth with --images and --out paths holding spaces and unicode",
                      self.synth_argv(self.aras, [pics], d / "Synth ö", PROMPT, "--auto-masks", "--n", "2"), "ok")
        d = self.case_dir()
        run = self.run_copy(d, "Lauf ü é")
        yield d, Case("eval a run in a path holding spaces and unicode", ["eval", str(run)], "ok", owns=(run,))
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png")
        (d / "link").symlink_to(mine, target_is_directory=True)
        yield d, Case("train --out a symlink to the user's folder of files", self.train_argv(self.good, d / "link"),
                      "error", names=("link", "mine"))
        d = self.case_dir()
        data = self.tree(d)
        (data / CATEGORY / "train" / "good" / "loop").symlink_to("..", target_is_directory=True)
        yield d, Case("train/good holds a symlink loop (loop -> ..)", self.train_argv(data, d / "out"), "either",
                      timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        data = self.tree(d)
        (data / CATEGORY / "train" / "good" / "gone.png").symlink_to(d / "nowhere.png")
        yield d, Case("train/good holds a dangling symlink gone.png", self.train_argv(data, d / "out"), "either",
                      names="gone.png", note="skipping it as no image, or refusing it by name, are both fine")
        d = self.case_dir()
        run = self.run_copy(d)
        mine = user_files(d / "mine", "results.json")
        (run / "metrics.json").symlink_to(mine / "results.json")
        yield d, Case("eval a run whose metrics.json is a symlink to the user's file", ["eval", str(run)], "either",
                      owns=(run,), keep=(mine / "results.json",))
        d = self.case_dir()
        run = self.run_copy(d)
        user_files(run / "report.html", "index.html")
        yield d, Case("eval a run whose report.html is a folder of the user's files", ["eval", str(run)], "error",
                      names="report.html", owns=(run,), keep=(run / "report.html" / "index.html",))
        d = self.case_dir()
        (d / "out").mkdir()
        (d / "out" / "images").write_text("a file named images\n")
        yield d, Case("synth --out a folder holding a file named images",
                      self.synth_argv(self.aras, [self.images], d / "out", PROMPT, "--auto-masks"), "error",
                      names="out")
        d = self.case_dir()
        (d / "model.onnx").write_text("the user's own model.onnx\n")
        yield d, Case("export --out an existing user file (no --overwrite)",
                      ["export", str(self.run), "--out", str(d / "model.onnx")], "error", names="model.onnx")
        d = self.case_dir()
        (d / "x.onnx").mkdir()
        yield d, Case("export --out an existing folder x.onnx", ["export", str(self.run), "--out", str(d / "x.onnx")],
                      "error", names="x.onnx")
        d = self.case_dir()
        run = self.run_copy(d)
        user_files(run, "sub/data.txt")
        yield d, Case("train --overwrite a run holding the user's notes and a sub-folder",
                      self.train_argv(self.good, run, "--coreset-ratio", "0.3", "--overwrite"), "either", "2",
                      owns=(run,), keep=(run / "notes.txt", run / "sub" / "data.txt"))
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png", "sub/data.txt")
        yield d, Case("train --overwrite --out a user's folder (no run in it)",
                      self.train_argv(self.good, mine, "--overwrite"), "error", "2", names="mine")
        d = self.case_dir()
        mine = user_files(d / "mine", "a.png")
        yield d, Case("score a folder that is not a synth output", ["score", str(mine)], "error", names="mine")
        d = self.case_dir()
        yield d, Case("score with --model a folder that is not a model",
                      ["score", str(Path(shutil.copytree(self.synth, d / "syn"))), "--model", str(self.images)],
                      "error", names="images", owns=(d / "syn",))
        d = self.case_dir()
        yield d, Case("copy-paste --n 0", ["copy-paste", "--real-defects", str(self.good / CATEGORY), "--shots", "1",
                                           "--images", str(self.images), "--n", "0", "--out", str(d / "out")],
                      "error", names="--n", timeout=FLAG_TIMEOUT)
        d = self.case_dir()
        yield d, Case("eval a run folder that does not exist", ["eval", str(d / "nope")], "error", names="nope")
        d = self.case_dir()
        (d / "empty").mkdir()
        yield d, Case("predict an empty folder of images", self.predict_argv(self.run, [d / "empty"], d / "out"),
                      "error", names="empty")
        d = self.case_dir()
        yield d, Case("train --data a folder that does not exist", self.train_argv(d / "nope", d / "out"), "error",
                      names="nope")
