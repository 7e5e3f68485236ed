"""Synthesis jobs on disk: plan a work list, write images/masks/manifest atomically, resume.

Output folder:
    synth.json          settings of the job (a rerun with other settings is refused)
    images/NNNNNN.png   synthetic images (source resolution, 8-bit RGB)
    masks/NNNNNN.png    the pixels that changed (0/255)
    manifest.jsonl      one JSON line per finished sample, appended after its files exist
    gallery.html        the samples with their prompts (and QAW scores once scored): report/pages.py

Every sample has its own seed derived from (seed, id), so a run that is killed and resumed
produces exactly the same files and manifest as one that was never interrupted. With
`--shard i/n` a process handles ids with id % n == i and writes manifest.shard-i-of-n.jsonl;
`merge_manifests` joins them in id order, and `merge_folders` does the same for shard folders
written on different machines (`qarad merge`).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .. import checkpoint, owned
from ..data.io import (atomic_path, check_output_folder, make_folder, read_image, read_mask, write_image, write_json,
                       write_text)

MANIFEST = "manifest.jsonl"
SETTINGS = "synth.json"


@dataclass(frozen=True)
class Job:
    id: int
    source: str
    prompt: str
    mask: str | None  # user mask path; None = propose one
    seed: int


@dataclass
class Made:
    image: np.ndarray  # (H, W, 3) float
    mask: np.ndarray  # (H, W) bool, changed pixels
    prompt: str  # the prompt actually used (baselines may write their own)
    extra: dict  # method-specific facts for the manifest (e.g. decoding steps, family)


def sample_seed(seed: int, job_id: int) -> int:
    return (seed * 1_000_003 + job_id * 7_919) % (2**63 - 1)


def plan(images: list[Path], prompts: list[str], masks: list[Path] | None, n: int, seed: int) -> list[Job]:
    """n jobs cycling over images and prompts; masks pair with images one to one."""
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"got {len(masks)} masks for {len(images)} images: give one mask per image")
    return [Job(i, str(images[i % len(images)]), prompts[i % len(prompts)],
                str(masks[i % len(images)]) if masks else None, sample_seed(seed, i)) for i in range(n)]


def manifest_name(shard: tuple[int, int] | None) -> str:
    return MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.jsonl"


def read_manifest(path: Path) -> list[dict]:
    """Finished entries; a torn last line (killed mid-write) is ignored and will be redone."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):  # torn, or nested too deep to be ours
            break
    return entries


def read_settings(out: Path) -> dict:
    """The folder's synth.json (the settings it was made with)."""
    return checkpoint.load_config(Path(out) / SETTINGS)


def writing(out: Path, shard: tuple[int, int] | None, what: str):
    """The writer lock of `out`'s manifest for this shard (None: the whole job's, which `merge` and
    `score` take too): a second process writing the same manifest is refused, naming the folder."""
    name = owned.LOCK if shard is None else f"{owned.BOOKKEEPING}.shard-{shard[0]}-of-{shard[1]}.lock"
    return owned.writing(out, what, name)


def check_finished(out: Path) -> list[dict]:
    """The manifest of a finished synth folder: every planned sample made and merged; refuses an
    unfinished one (killed, still running, or shards not merged yet), saying how to finish it."""
    out = Path(out)
    if not (out / SETTINGS).is_file():
        raise ValueError(f"{out}: not a qarad synth output (no {SETTINGS})")
    entries = read_manifest(out / MANIFEST)
    planned = read_settings(out).get("n")
    if not isinstance(planned, int) or len({e.get("id") for e in entries}) != planned or len(entries) != planned:
        shards = sorted(p.name for p in out.glob("manifest.shard-*.jsonl"))
        hint = (f"merge its shards first (qarad merge; found {', '.join(shards)})" if shards else
                "rerun the qarad synth command that made it to finish it")
        raise ValueError(f"{out}: unfinished synth folder ({len(entries)} of {planned} samples in {MANIFEST}); "
                         f"{hint}")
    return entries


def rewrite_manifest(out: Path, entries: list[dict]) -> None:
    """Replace a finished folder's manifest with `entries` (the same samples, fields added: `qarad
    score`'s scores), atomically."""
    write_text(Path(out) / MANIFEST, "".join(json.dumps(e) + "\n" for e in entries))


SAMPLE_NAME = {"image": "images/{:06d}.png", "mask": "masks/{:06d}.png"}


def sample_path(folder: Path, entry: dict, key: str) -> Path:
    """The file of `entry`'s `key` (image or mask) inside `folder`; a manifest naming anything but
    the file this module writes for that id (another folder, `..`, a link) is refused."""
    sample_id = entry.get("id")
    expected = SAMPLE_NAME[key].format(sample_id) if isinstance(sample_id, int) and sample_id >= 0 else None
    if entry.get(key) != expected:
        raise ValueError(f"{Path(folder) / MANIFEST}: sample {sample_id!r} names {key} {entry.get(key)!r}; a qarad "
                         f"synth manifest names {key}s as {SAMPLE_NAME[key].format(0)} ...")
    path = Path(folder) / expected
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"{path}: not a regular file (missing, or a link); the synth folder is damaged")
    return path


def prepare_output(out: Path, settings: dict) -> None:
    out = check_output_folder(out)  # a file in the way or no permission: refuse before any work
    if not owned.is_empty(out):
        path = out / SETTINGS
        if not path.is_file():
            raise ValueError(f"{out}: folder is not empty and is not a qarad synth output; choose another --out")
        if checkpoint.load_config(path) != settings:
            raise ValueError(f"{out}: holds a synth run with different settings ({path}); choose another --out")
        return
    make_folder(out / "images")
    make_folder(out / "masks")
    owned.mark(out, "synth")
    write_json(out / SETTINGS, settings)


def _repair(path: Path) -> list[dict]:
    """Finished entries; a torn last line (killed mid-write) is cut off so appends start clean."""
    done = read_manifest(path)
    if path.is_file() and len(done) != len(path.read_text(encoding="utf-8").splitlines()):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in done), encoding="utf-8")
        os.replace(tmp, path)
    return done


def _append(path: Path, entry: dict) -> None:
    """Append one line and make it durable (fsync), so a kill never loses a finished sample."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(jobs: Iterable[Job], make: Callable[[np.ndarray, np.ndarray | None, Job], Made], out: Path,
        method: str, settings: dict, shard: tuple[int, int] | None = None,
        on_done: Callable[[], None] | None = None) -> int:
    """Do every job not yet in the manifest; returns how many were made now."""
    out = Path(out)
    manifest = out / manifest_name(shard)
    done = {e["id"] for e in _repair(manifest)}  # repaired once: every later append is a whole line
    made = 0
    for job in jobs:
        if shard is not None and job.id % shard[1] != shard[0]:
            continue
        if job.id in done:
            if on_done:
                on_done()
            continue
        image = read_image(job.source)
        user_mask = read_mask(job.mask, image.shape[:2]) if job.mask else None
        result = make(image, user_mask, job)
        name = f"{job.id:06d}.png"
        write_image(out / "images" / name, result.image)
        write_image(out / "masks" / name, result.mask)
        _append(manifest, {"id": job.id, "source": job.source, "prompt": result.prompt, "image": f"images/{name}",
                           "mask": f"masks/{name}", "user_mask": job.mask, "seed": job.seed, "method": method,
                           "settings": settings.get("sampler", {}), "score": None, **result.extra})
        made += 1
        if on_done:
            on_done()
    return made


def _entries(folder: Path) -> list[dict]:
    """Every finished entry of a folder: its shard manifests', then its merged manifest's."""
    entries = [e for p in sorted(folder.glob("manifest.shard-*.jsonl")) for e in read_manifest(p)]
    return entries + read_manifest(folder / MANIFEST)


def _write_merged(out: Path, entries: Iterable[dict]) -> Path:
    unique = {e["id"]: e for e in entries}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text("".join(json.dumps(unique[i]) + "\n" for i in sorted(unique)), encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return out / MANIFEST


def merge_manifests(out: Path) -> Path:
    """Join shard manifests into manifest.jsonl, ordered by id (deterministic whatever the shards)."""
    return _write_merged(Path(out), _entries(Path(out)))


def check_merge(out: Path, folders: list[Path]) -> tuple[dict, dict[int, dict], list[tuple[Path, dict]]]:
    """Everything `merge_folders` checks, read-only, so a refused merge makes nothing: each folder a
    synth output with the same settings, every sample's files confined to its folder, no sample id made
    differently in two folders (`out`'s own samples included). Returns (settings, merged entries by id,
    the (folder, entry) pairs whose files are to be copied into `out`)."""
    out, folders = Path(out), [Path(f) for f in folders]
    if not folders:
        raise ValueError("name at least one synth folder to merge")
    for folder in folders:
        if not (folder / SETTINGS).is_file():
            raise ValueError(f"{folder}: not a qarad synth output (no {SETTINGS})")
    settings = read_settings(folders[0])
    for folder in folders[1:]:
        other = read_settings(folder)
        if other != settings:
            keys = sorted(k for k in set(settings) | set(other) if settings.get(k) != other.get(k))
            raise ValueError(f"{folder}: made with other settings than {folders[0]} (differ in {keys}); "
                             "only shards of one job merge")
    merged: dict[int, dict] = {}
    copies = []
    for folder in [out, *folders] if out.is_dir() else folders:
        copy = folder.resolve() != out.resolve()
        for entry in _entries(folder):
            if merged.get(entry["id"], entry) != entry:
                raise ValueError(f"{folder}: sample {entry['id']} differs from the one already merged; "
                                 "were these folders made by one job?")
            for key in ("image", "mask"):
                sample_path(folder, entry, key)  # confined to its folder, a regular file
            if copy:
                copies.append((folder, entry))
            merged[entry["id"]] = entry
    return settings, merged, copies


def merge_folders(out: Path, folders: list[Path]) -> list[int]:
    """Join synth folders made with the same settings (`--shard i/n` each, e.g. on different
    machines) into `out`, which may be one of them: their images and masks are copied in and
    manifest.jsonl lists every sample in id order, as one run's would whatever the split.
    Folders with other settings, or one sample id made differently in two folders, are refused
    (`check_merge`, before `out` is touched). Returns the ids the job plans that no folder holds yet
    (merge again once they are done)."""
    out = Path(out)
    settings, merged, copies = check_merge(out, folders)
    prepare_output(out, settings)
    for folder, entry in copies:
        for key in ("image", "mask"):
            with atomic_path(out / entry[key]) as tmp:  # replaces a link at the target, never writes through it
                shutil.copyfile(sample_path(folder, entry, key), tmp)
    _write_merged(out, merged.values())
    return [i for i in range(settings["n"]) if i not in merged]
