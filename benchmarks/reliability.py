"""Reliability: `qarad` used as a careless or hostile user would, and its peak memory vs data size.

Every case (reliability_cases.py: the earlier 40 bad inputs and every numbered item of issue 32
"Nothing lost, nothing crashes", with variations) runs the real `python -m qarad.cli ...` in its own
process and folder, on small generated data, under umask 022, with a time limit. Each row records the
command, its exit code, the last stderr line, whether a traceback appeared, whether it hung, and:

- data lost: a file or folder that existed before the command (the user's files, decoys outside
  --out, a previous run) and is not a qarad folder the case lets it rewrite, gone or changed after;
  the shared fixtures are watched too (size and mtime);
- silently wrong: an exit 0 on input it should refuse, a flag dropped, a manifest with an id twice,
  a config.json that does not describe the model beside it, NaN or Infinity in JSON, files not
  readable by others (0600) or folders 0700 under umask 022, anything written outside --out, or the
  case's own check (reliability_cases.py);
- partial output: a refused command that left files behind.

Expected: bad input -> exit 2 and one line naming the file or flag; legal input -> exit 0; never a
traceback, a hang, data lost or a silently wrong result. Peak RSS is read with os.wait4 on each child.

    python benchmarks/reliability.py --skip-rss           # every case (about 15 minutes on 2 cores)
    python benchmarks/reliability.py                      # and peak memory vs 100/1000/5000 images
    python benchmarks/reliability.py --groups merge_paths --no-write   # one group, nothing written

Writes benchmarks/results/reliability.json and the "reliability" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, envelope, update_section, write_json  # noqa: E402
from reliability_cases import (CATEGORY, PROMPT, SIZE, Bench, Case, Result, Running, child_env,  # noqa: E402
                               make_tiny_aras, texture)

RUN_KEYS = ("coreset_ratio", "memory_limit", "seed", "search", "backbone", "steps", "negatives", "residual",
            "fusion")  # detector settings config.json and model.json both record


# --- what changed ----------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> content hash (files), 'dir', or 'link:TARGET', for everything under `folder`
    (symlinks are recorded, never followed)."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                state[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                state[rel] = "dir"
            elif p.is_file():
                state[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
            else:
                state[rel] = "other"
    return state


def stat_snapshot(folder: Path) -> dict[str, tuple]:
    """Cheap: relative path -> (size, mtime) for the shared fixtures (large files included)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            if name.endswith(".lock"):
                continue  # taking a lock opens it with O_TRUNC, which touches its mtime
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns) if not stat.S_ISDIR(st.st_mode) else "dir"
    return out


def rel_in(path: Path | None, d: Path, cwd: Path) -> str | None:
    """`path` (absolute or relative to `cwd`) relative to the case folder, without following links."""
    if path is None:
        return None
    full = os.path.normpath(path if Path(path).is_absolute() else cwd / path)
    r = os.path.relpath(full, d)
    return None if r.startswith("..") else r


def within(rel: str, roots: list[str]) -> bool:
    return any(r == "." or rel == r or rel.startswith(r + "/") for r in roots)


def out_of(case: Case) -> Path | None:
    if case.out is not None:
        return case.out
    argv = case.argv or []
    return Path(argv[argv.index("--out") + 1]) if "--out" in argv[:-1] else None


def _strict(text: str) -> None:
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")
    json.loads(text, parse_constant=refuse)


def json_problem(path: Path) -> str | None:
    """NaN/Infinity or broken JSON in a .json file or a .jsonl line; duplicate ids in a manifest."""
    if path.stat().st_size > 5_000_000:
        return None
    text = path.read_text(errors="replace")
    try:
        if path.suffix == ".jsonl":
            ids = []
            for line in filter(str.strip, text.splitlines()):
                _strict(line)
                ids.append(json.loads(line).get("id"))
            if len(ids) != len(set(ids)):
                return f"{path.name}: {len(ids) - len(set(ids))} sample ids twice"
        else:
            _strict(text)
    except ValueError as exc:
        return f"{path.name}: {exc}"[:160]
    return None


def run_problem(run: Path, changed: set[str]) -> str | None:
    """A run folder whose config.json does not describe the model.json beside it, or whose metrics.json
    reports another resolution policy than the model used."""
    try:
        cfg = json.loads((run / "config.json").read_text())
        model = json.loads((run / "model.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or not isinstance(model, dict):
        return None
    if changed & {"config.json", "model.json", "model.safetensors"}:
        if cfg.get("method") != model.get("method"):
            return f"config.json says {cfg.get('method')}, model.json {model.get('method')}"
        det, part = cfg.get("detector") or {}, model.get("patchcore") or model.get("segmenter") or {}
        diff = [k for k in RUN_KEYS if k in det and k in part and det[k] != part[k]]
        if cfg.get("policy") != model.get("policy"):
            diff.append("policy")
        if diff:
            pairs = [f"{k}: {det.get(k, cfg.get(k))} vs {part.get(k, model.get(k))}" for k in diff]
            return f"config.json does not match the model beside it ({', '.join(pairs)})"
    if "metrics.json" in changed:
        try:
            said = json.loads((run / "metrics.json").read_text()).get("policy")
        except (OSError, ValueError, AttributeError):
            return None
        if said is not None and said != model.get("policy"):
            return f"metrics.json reports policy {said}, the model used {model.get('policy')}"
    return None


def mode_problem(path: Path) -> str | None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return None
    need = 0o055 if stat.S_ISDIR(st.st_mode) else 0o044
    return None if st.st_mode & need == need else f"{oct(st.st_mode & 0o777)}"


# --- judging a case --------------------------------------------------------------------------------

def scrub(text: str, work: Path) -> str:
    return text.replace(str(work / "fixtures"), "FIX").replace(str(work / "cases"), "CASE")


def display(argv: list[str], work: Path) -> str:
    """The command as a copyable line; long or non-printable arguments are shown as Python literals."""
    shown = []
    for a in map(str, argv):
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


def silent_reasons(case: Case, d: Path, results: list[Result], before: dict, after: dict,
                   allowed: list[str]) -> list[str]:
    reasons = []
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    new = [k for k in after if k not in before]
    outside = [k for k in new if not within(k, allowed)
               and not any(a.startswith(k + "/") for a in allowed)]  # --out's new parent folders are fine
    if outside:
        reasons.append(f"wrote outside --out: {outside[:3]}")
    if case.expect == "error" and any(r.exit_code == 0 for r in results):
        reasons.append("took the bad input: exit 0")
    for k in changed:
        p = d / k
        if k in after and not after[k].startswith(("dir", "link:")) and p.suffix in (".json", ".jsonl"):
            problem = json_problem(p)
            if problem:
                reasons.append(problem)
    modes = [f"{k} {m}" for k in new if (d / k).exists() or (d / k).is_symlink()
             for m in [mode_problem(d / k)] if m]
    if modes:
        reasons.append(f"not readable by others under umask 022: {modes[:3]}")
    runs = {str(Path(k).parent) for k in changed if Path(k).name in ("config.json", "model.json", "metrics.json",
                                                                      "model.safetensors")}
    for r in sorted(runs):
        names = {Path(k).name for k in changed if str(Path(k).parent) == r}
        problem = run_problem(d / r, names)
        if problem:
            reasons.append(f"{r}: {problem}")
    if case.check:
        problem = case.check(results, d)
        if problem:
            reasons.append(problem)
    return list(dict.fromkeys(reasons))


def judge(case: Case, d: Path, work: Path, results: list[Result], before: dict, after: dict,
          fixtures_changed: list[str]) -> dict:
    cwd = case.cwd or d
    out = rel_in(out_of(case), d, cwd)
    owns = [r for r in (rel_in(p, d, cwd) for p in case.owns) if r]
    keep = [r for r in (rel_in(p, d, cwd) for p in case.keep) if r]
    allowed = [r for r in [out, *owns] if r]
    protected = {k for k in before if not within(k, owns)} | {k for k in keep if k in before}
    lost = sorted(k for k in protected if after.get(k) != before[k])
    # a folder's own entry is unchanged while its content is lost: list the content, not the folder
    lost = [k for k in lost if before[k] != "dir" or k not in after] + [f"FIX/{k}" for k in fixtures_changed]
    silent = silent_reasons(case, d, results, before, after, allowed)
    codes = [r.exit_code for r in results]
    failed = [r for r in results if r.exit_code != 0]
    msg = (failed or results)[-1].message
    tb, hang = any(r.traceback for r in results), any(r.killed for r in results)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    partial = case.expect == "error" and bool(failed) and bool(changed)

    def clean(r: Result) -> bool:
        m = r.message.lower()
        names = (case.names,) if isinstance(case.names, str) else case.names or ()
        # a flag is named by itself or by its setting's name ("--max-zoom": "max_zoom must be ...")
        names = [v for n in names for v in ((n, n[2:], n[2:].replace("-", "_"), n[2:].replace("-", " "))
                                            if n.startswith("--") else (n,))]
        return r.exit_code == 2 and "error" in m and (not names or any(n.lower() in m for n in names))
    exit_ok = {"error": all(clean(r) for r in results),
               "ok": all(c == 0 for c in codes),
               "either": all(c == 0 or clean(r) for c, r in zip(codes, results)),
               "any": True, None: None}[case.expect]
    why = []
    if hang:
        why.append(f"hang: killed at the {case.timeout:.0f} s limit")
    if tb:
        tail = [ln for ln in next(r for r in results if r.traceback).stderr.splitlines() if ln.strip()]
        why.append("traceback: " + (tail[-1].strip() if tail else ""))
    if exit_ok is False and not hang:
        want = {"error": "exit 2 and an error line", "ok": "exit 0", "either": "exit 0, or 2 with an error line"}
        named = f" naming {case.names!r}" if case.names and case.expect in ("error", "either") else ""
        why.append(f"exit {codes if len(codes) > 1 else codes[0]}, expected {want[case.expect]}{named}")
    if lost:
        why.append(f"data lost: {lost[:4]}")
    why += silent
    if partial:
        why.append(f"partial output: {changed[:3]}")
    bad = bool(lost or silent or tb or hang or partial)
    ok = None if case.expect is None and not bad else (exit_ok is not False and not bad)
    row = {"case": case.name, "issue": case.issue,
           "command": scrub(case.extra["shown"], work) if "shown" in case.extra else display(case.argv, work),
           "exit_code": codes if len(codes) > 1 else codes[0], "message": scrub(msg, work)[:400],
           "traceback": tb, "hang": hang, "data_lost": [scrub(k, work) for k in lost],
           "silent_wrong": scrub("; ".join(silent), work) or None, "partial_output": partial,
           "expected": case.expect, "as_expected": ok,
           "peak_rss_mb": round(max(r.peak_rss_mb for r in results), 1),
           "seconds": round(sum(r.seconds for r in results), 1)}
    if case.cwd:
        row["cwd"] = scrub(str(case.cwd), work)
    if case.names:
        row["names"] = case.names
    if partial:
        row["left_behind"] = changed[:8]
    if case.note:
        row["note"] = case.note
    if why and ok is False:
        row["why"] = scrub("; ".join(why), work)[:500]
    return row


def run_case(bench: Bench, case: Case, d: Path, work: Path) -> dict:
    fix_before = stat_snapshot(bench.fix)
    before = snapshot(d)
    try:
        results = case.runner() if case.runner else [bench.qarad(case.argv, case.cwd or d, case.timeout)]
        after = snapshot(d)
        fix_after = stat_snapshot(bench.fix)
        fixtures_changed = sorted(k for k in set(fix_before) | set(fix_after)
                                  if fix_before.get(k) != fix_after.get(k) and not k.startswith("../"))
        return judge(case, d, work, results, before, after, fixtures_changed)
    except Exception as exc:  # a case the bench could not judge is a failure, never a skip
        return {"case": case.name, "issue": case.issue, "command": scrub(str(case.extra.get("shown") or case.argv),
                                                                          work),
                "exit_code": None, "message": "", "traceback": False, "hang": False, "data_lost": [],
                "silent_wrong": None, "partial_output": False, "expected": case.expect, "as_expected": False,
                "why": scrub(f"bench could not judge it: {type(exc).__name__}: {exc}", work)[:500]}


def run_cases(work: Path, env: dict, only: list[str] | None) -> tuple[list[dict], list[dict]]:
    bench = Bench(work, env)
    rows, setup = [], []
    for group in bench.groups():
        if only and group.__name__ not in only:
            continue
        cases = group()
        while True:
            try:
                d, case = next(cases)
            except StopIteration:
                break
            except Exception as exc:  # its fixture failed: the group's remaining cases cannot run
                setup.append({"group": group.__name__, "error": scrub(f"{type(exc).__name__}: {exc}", work)[:500]})
                print(f"[SETUP] {group.__name__}: {setup[-1]['error']}", flush=True)
                break
            row = run_case(bench, case, d, work)
            rows.append(row)
            flag = {True: "ok ", False: "BAD", None: "-- "}[row["as_expected"]]
            print(f"[{flag}] {len(rows):3d} #{case.issue or '-'} {case.name}: exit {row['exit_code']}, "
                  f"{row.get('seconds', 0):.1f} s\n      {row.get('why') or row['message'][:200]}", flush=True)
    return rows, setup


def summary(rows: list[dict], setup: list[dict]) -> dict:
    return {"n_cases": len(rows),
            "data_lost": sum(bool(r["data_lost"]) for r in rows),
            "tracebacks": sum(r["traceback"] for r in rows),
            "silent_wrong": sum(bool(r["silent_wrong"]) for r in rows),
            "hangs": sum(r["hang"] for r in rows),
            "partial_output": sum(r["partial_output"] for r in rows),
            "not_as_expected": sum(r["as_expected"] is False for r in rows),
            "setup_failures": len(setup)}
# --- peak memory vs number of images -------------------------------------------------------------

def qarad(argv: list[str], cwd: Path, env: dict, timeout: float) -> Result:
    return Running(argv, cwd, env, cwd.parent / "logs").finish(timeout)


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


# --- report ------------------------------------------------------------------------------------

def _cell(text, limit: int = 170) -> str:
    text = str(text)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|").replace("\n", " ")


ISSUE_ITEMS = {"": "earlier bad inputs and variations", "1": "predict --out deletes", "2": "--overwrite deletes",
               "3": "demo overwrites", "4": "merge paths", "5": "benchmark csv paths", "6": "concurrency",
               "7": "warnings race", "8": "--batch-size 0/-1", "9": "tracebacks on bad flags and JSON",
               "10": "dropped flags", "11": "interrupted train --overwrite", "12": "EXIF, float TIFF",
               "13": "synth source vs cwd", "14": "unfinished synth, names, NaN, permissions"}


def tables(env: dict, threads: int) -> str:
    results = env["results"]
    out = ["## Reliability: nothing lost, nothing crashes; peak memory", "",
           f"Command: `{env['command']}` ({env['date']}; {env['machine']}; the cases took "
           f"{results.get('case_seconds', '?')} s; results: `benchmarks/results/reliability.json`). Each case "
           "is the real `qarad` command in its own process and folder, on small generated data (FIX = shared "
           "fixtures: a 64x64 MVTec tree, a PatchCore run trained on it at `--size 64`, a tiny random ARAS model, "
           "shard and synth folders it made; CASE = the case's own folder), under umask 022, with a time limit. "
           "*data lost*: a file that existed before (the user's files, decoys outside --out, an earlier run, the "
           "fixtures) gone or changed; *silently wrong*: exit 0 on bad input, a flag dropped, an id twice in a "
           "manifest, a config.json that does not describe its model, NaN in JSON, files 0600 or folders 0700, "
           "output outside --out, or the case's own check; *as expected*: bad input refused with exit 2 and one "
           "line naming the file or flag, legal input exit 0, and none of the above, no traceback, no hang. "
           "Column *#* is the item of issue 32 the case reproduces.", ""]
    rows = results.get("cases")
    if rows:
        s = {k: results[k] for k in ("n_cases", "data_lost", "tracebacks", "silent_wrong", "hangs", "partial_output",
                                     "not_as_expected", "setup_failures") if k in results}
        out += ["| " + " | ".join(s) + " |", "|" + "---:|" * len(s), "| " + " | ".join(str(v) for v in s.values())
                + " |", ""]
        out += ["| # | item | cases | as expected | data lost | tracebacks | silently wrong | hangs |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for item, label in ISSUE_ITEMS.items():
            part = [r for r in rows if r.get("issue", "") == item]
            if part:
                good = sum(r["as_expected"] is not False for r in part)
                out.append(f"| {item or '-'} | {label} | {len(part)} | {good}"
                           f" | {sum(bool(r['data_lost']) for r in part)} | {sum(r['traceback'] for r in part)} | "
                           f"{sum(bool(r['silent_wrong']) for r in part)} | {sum(r['hang'] for r in part)} |")
        for fail in results.get("setup", []):
            out.append(f"\nSetup failed for group `{fail['group']}`: {_cell(fail['error'], 300)}")
        out += ["", "<details><summary>Every case</summary>", "",
                "| # | case | command | exit | message | as expected |", "|---|---|---|---|---|---|"]
        for r in rows:
            verdict = {True: "yes", False: "**no**", None: "n/a"}[r["as_expected"]]
            if r.get("why"):
                verdict += f": {r['why']}"
            elif r.get("note"):
                verdict += f" ({r['note']})"
            out.append(f"| {r.get('issue') or '-'} | {_cell(r['case'], 120)} | `{_cell(r['command'], 200)}` | "
                       f"{r['exit_code']} | {_cell(r['message'], 160)} | {_cell(verdict, 300)} |")
        out += ["", "</details>"]
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
                    f"OMP_NUM_THREADS={results.get('rss_threads', threads)} (measured {results.get('rss_date')} on "
                    f"{results.get('rss_machine')}). "
                    "train: `qarad train --method patchcore --size 64` on N normal images; synth: `qarad synth "
                    "TINY_ARAS --images FOLDER_OF_N --auto-masks --n N`; fit: `qarad fit --size 64 --corpus-size 64 "
                    "--tokenizer-steps 2 --prior-steps 2 --qaw-steps 2` on N normal images (default model sizes; the "
                    "corpus has a fixed size).", "",
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
    ap.add_argument("--skip-cases", action="store_true", help="only measure memory")
    ap.add_argument("--skip-rss", action="store_true", help="only run the cases (keeps the stored memory table)")
    ap.add_argument("--groups", nargs="+", help="run only these case groups (Bench.groups), e.g. merge_paths")
    ap.add_argument("--no-write", action="store_true", help="write neither the JSON nor BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = ap.parse_args()
    os.umask(0o022)  # the children inherit it: files they write must be 0644, folders 0755
    # started in the background (nohup ... &), this process ignores SIGINT and its children would too,
    # so the interrupted-train cases could not interrupt: a handler is reset to the default at exec
    signal.signal(signal.SIGINT, signal.default_int_handler)
    env = child_env(args.threads)
    work = Path(tempfile.mkdtemp(prefix="qarad-reliability-"))
    print(f"working in {work}", flush=True)
    path = RESULTS / "reliability.json"
    old_env = json.loads(path.read_text()) if path.is_file() else {}
    old = old_env.get("results", {})
    results: dict = {}
    try:
        start = time.perf_counter()
        if not args.skip_cases:
            rows, setup = run_cases(work, env, args.groups)
            results.update(summary(rows, setup))
            results.update({"cases": rows, "setup": setup, "case_seconds": round(time.perf_counter() - start)})
        else:
            results.update({k: v for k, v in old.items() if k not in ("peak_rss_mb", "seconds", "notes")})
        if not args.skip_rss:
            rss, secs, notes = run_rss(work, env, args.sizes, args.synth_cap)
            results.update({"peak_rss_mb": rss, "seconds": secs, "notes": notes, "rss_threads": args.threads,
                            "rss_date": envelope({})["date"], "rss_machine": envelope({})["machine"]})
        elif "peak_rss_mb" in old:  # kept from the stored file, with the date it was measured
            results.update({k: old[k] for k in ("peak_rss_mb", "seconds", "notes", "rss_threads") if k in old})
            results["rss_date"] = old.get("rss_date") or old_env.get("date")
            results["rss_machine"] = old.get("rss_machine") or old_env.get("machine")
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
    bad = [r for r in results.get("cases", []) if r["as_expected"] is False]
    if not args.no_write:
        env_ = envelope(results)
        write_json(path, env_)
        update_section("reliability", tables(env_, args.threads))
        print(f"wrote {path}")
    print(json.dumps({k: results[k] for k in ("n_cases", "data_lost", "tracebacks", "silent_wrong", "hangs",
                                               "partial_output", "not_as_expected", "setup_failures")
                      if k in results}))
    print(f"{len(bad)} case(s) not as expected" + "".join(f"\n  - #{r.get('issue') or '-'} {r['case']}: "
                                                         f"{r.get('why', '')}" for r in bad))


if __name__ == "__main__":
    main()
