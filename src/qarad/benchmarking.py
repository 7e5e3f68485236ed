"""`qarad benchmark`: one method trained and evaluated on every category of a dataset root, resumably,
with one table per run in the shape of the paper's tables (a row per category and their mean; the
seven metrics `qarad eval` reports, fit seconds and test images per second).

    OUT/runs/CATEGORY/           the category's run folder (api.train, then api.evaluate)
    OUT/runs/CATEGORY/fit.json   wall seconds of its training, written right after it
    OUT/runs/CATEGORY/row.json   its table row, written last: the category is finished when this exists
                                 and its run's config.json is the run these settings make
    OUT/benchmark.md|csv|json    the table over this call's categories (JSON: with the settings)

With real defect shots (`real_defects=ROOT`), each category's qarad run learns from the shots of
ROOT/CATEGORY (data/real_defects.select_real_defects, the same K and seed for every category), and
its row counts the test images its evaluation left out (metrics.json's excluded_real_defects).

Every file is written atomically, so a killed benchmark leaves either a finished category or one
that a rerun completes (a trained run whose evaluation was cut short is evaluated, not retrained).
This module owns that folder; `qarad.benchmark` is its `benchmark`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import api, checkpoint, owned, runs
from .data.io import check_output_folder, finite_or_null, make_folder, write_json, write_text
from .data.layouts import FolderSplit, list_categories, resolve_layout, scan
from .data.mvtec import DatasetError
from .data.real_defects import RealDefects, select_real_defects
from .data.resolution import ResolutionPolicy
from .fewshot_config import ShotConfig
from .metrics import LABELS, METRICS
from .progress import note

if TYPE_CHECKING:
    from .auto import AutoConfig
    from .detection.patchcore import PatchCoreConfig
    from .detection.segmenter import SegmenterConfig
    from .validation_config import ValidationConfig

RUNS = "runs"
CANDIDATES = "candidates.json"  # auto.CANDIDATES: a category run with --auto is finished with it
FIT = "fit.json"
ROW = "row.json"
TABLE = "benchmark"  # OUT/benchmark.md, .csv, .json
COLUMNS = (*METRICS, "fit_s", "test_images_per_s")  # table columns after the category
COUNTS = ("n_train", "n_test")  # in each row, not averaged
EXCLUDED = "n_excluded"  # a count too, in the rows of a benchmark with real defect shots
HEADINGS = {**LABELS, "fit_s": "fit s", "test_images_per_s": "img/s", EXCLUDED: "shots left out"}
MEAN = "mean"


@dataclass(frozen=True)
class Benchmarked:
    folder: Path
    method: str
    rows: dict[str, dict]  # category -> metrics, fit_s, test_images_per_s, n_train, n_test (, n_excluded)
    mean: dict[str, float]  # over the categories, per column (NaN when a category has none)
    skipped: list[str]  # categories finished by an earlier call
    markdown: str
    tables: list[Path]  # OUT/benchmark.md, .csv, .json


def benchmark(data: str | Path, out: str | Path, detector: "PatchCoreConfig | SegmenterConfig",
              training: api.QaradTraining = api.QaradTraining(), policy: ResolutionPolicy = ResolutionPolicy(),
              categories: list[str] | None = None, layout: str = "auto", folder: FolderSplit | None = None,
              max_train_images: int | None = None, allow_missing_masks: bool = False, batch_size: int = 8,
              device: str = "cpu", overwrite: bool = False, real_defects: str | Path | None = None,
              shots: ShotConfig = ShotConfig(), validation: "ValidationConfig | None" = None,
              auto: "AutoConfig | None" = None) -> Benchmarked:
    """Train (`api.train`) and evaluate (`api.evaluate`) `detector` on each of `categories` (default:
    every category of the root) into OUT/runs/CATEGORY, skipping the finished ones, then write the
    table. The qarad method's `training.synth`, when given, is a folder of synth folders, one per
    category (SYNTH/CATEGORY), and `real_defects` a root of real-defect folders, one per category
    (ROOT/CATEGORY), whose `shots` each category's run learns from (its detector's negatives must
    have "real"). `overwrite` retrains a category whose folder holds a different run. `validation`
    is every run's split (api.train); with `auto` each category is `qarad train --auto` (auto.py)
    from these settings, and a category is finished when its row and candidates.json exist."""
    if training.real_defects is not None:
        raise ValueError("benchmark draws each category's shots from real_defects=ROOT (ROOT/CATEGORY); "
                         "leave training.real_defects None")
    out = check_output_folder(out)
    if not owned.is_empty(out) and not (owned.kind_of(out) == "benchmark" or (out / RUNS).is_dir()
                                        or (out / f"{TABLE}.json").is_file()):
        raise runs.RunError(f"{out}: folder is not empty and is not a qarad benchmark; choose another --out")
    layout = resolve_layout(data, layout, categories[0] if categories else None, folder)
    available = list_categories(data, layout, folder)
    categories = list(categories or available)
    odd = [c for c in categories if not c or c in (".", "..") or any(sep in c for sep in "/\\\0")]
    if odd:  # each names its run folder OUT/runs/CATEGORY, which must stay inside OUT
        raise DatasetError(f"category {odd[0]!r} is not a plain name (no path separators, not '.' or '..')")
    unknown = [c for c in categories if c not in available and layout != "folder"]
    if unknown:
        raise DatasetError(f"{data}: no category {', '.join(map(repr, unknown))} in this {layout} dataset; "
                           f"its categories are {', '.join(available)}")
    plans = {}  # category -> (its training, method, the run's config.json): every setting checked before any work
    for category in categories:
        for split in ("train", "test"):  # a bad split file or tree is refused before OUT is made
            scan(data, category, split, layout, folder, allow_missing_masks)
        own = replace(training, synth=Path(training.synth) / category) if training.synth else training
        if own.synth and not Path(own.synth).is_dir():
            raise ValueError(f"{own.synth}: no synthetic-defect folder for category {category!r} (benchmark "
                             f"--synth SYNTH reads SYNTH/CATEGORY)")
        if real_defects is not None:
            own = replace(own, real_defects=category_shots(real_defects, category, shots))
        plans[category] = (own, *api.run_config(data, category, detector, own, policy, max_train_images, layout,
                                                folder, validation))
    method = plans[categories[0]][1]
    settings = config_settings(plans[categories[0]][2])
    # what every category shares: the root, K and the seed (each category's shots are in its config.json)
    settings["data"]["real_defects"] = None if real_defects is None else {
        "root": str(Path(real_defects).resolve()), "shots": shots.shots, "seed": shots.shot_seed}
    make_folder(out)
    owned.mark(out, "benchmark")
    rows, skipped = {}, []
    for i, category in enumerate(categories, 1):
        own, _, config = plans[category]
        run = out / RUNS / category
        step = f"benchmark [{i}/{len(categories)}] {category}"
        finished = (run / CANDIDATES).is_file() if auto is not None else runs.holds(run, config)
        if (run / ROW).is_file() and finished:
            # a metric undefined on its split was written as null: NaN again for the mean and the table
            rows[category] = {k: math.nan if v is None else v for k, v in checkpoint.read_numbers(run / ROW).items()}
            skipped.append(category)
            note(f"{step}: finished earlier, skipped")
            continue
        rows[category] = _run_category(step, data, category, run, config, detector, own, policy, max_train_images,
                                       layout, folder, allow_missing_masks, batch_size, device, overwrite,
                                       validation, auto)
    return _write_tables(out, data, layout, method, settings, rows, skipped)


def category_shots(root: str | Path, category: str, shots: ShotConfig) -> RealDefects:
    """The shots of ROOT/CATEGORY; a folder without usable defects is refused, naming it and the category."""
    try:
        return select_real_defects([Path(root) / category], shots.shots, shots.shot_seed)
    except DatasetError as exc:
        raise DatasetError(f"category {category!r}: {exc} (benchmark --real-defects ROOT reads ROOT/CATEGORY)") \
            from exc


def _run_category(step: str, data, category: str, run: Path, config: dict, detector, training, policy,
                  max_train_images, layout, folder, allow_missing_masks: bool, batch_size: int, device: str,
                  overwrite: bool, validation=None, auto=None) -> dict:
    fit = run / FIT
    if auto is not None:
        return _auto_category(step, data, category, run, detector, training, policy, max_train_images, layout,
                              folder, allow_missing_masks, batch_size, device, validation, auto)
    replace_run = overwrite and (run / runs.CONFIG).is_file() and not runs.holds(run, config)
    if replace_run:  # another run's time and row must never vouch for this one
        (run / ROW).unlink(missing_ok=True)
        fit.unlink(missing_ok=True)
    note(f"{step}: train")
    start = time.perf_counter()
    # a different run in `run` is refused here (unless overwrite), before anything in it is touched
    done = api.train(data, category, run, detector, training, policy, max_train_images, device, replace_run, layout,
                     folder, validation)
    if done.already_trained and not fit.is_file():  # trained, but killed before its time was written
        note(f"{step}: its training time was not recorded; training again")
        start = time.perf_counter()
        done = api.train(data, category, run, detector, training, policy, max_train_images, device, True, layout,
                         folder, validation)
    if not done.already_trained:
        write_json(fit, {"fit_s": round(time.perf_counter() - start, 2)})
    fit_s = checkpoint.read_numbers(fit, ("fit_s",))["fit_s"]
    return _evaluated(step, run, done.n_images, fit_s, allow_missing_masks, batch_size, device)


def _auto_category(step: str, data, category: str, run: Path, detector, training, policy, max_train_images, layout,
                   folder, allow_missing_masks: bool, batch_size: int, device: str, validation, auto) -> dict:
    """`qarad train --auto` into the category's folder (a run this benchmark made there is replaced)."""
    from .auto import train_auto

    note(f"{step}: train --auto")
    done = train_auto(data, category, run, detector, training, policy, auto, max_train_images, device,
                      (run / runs.CONFIG).is_file(), layout, folder, validation)
    write_json(run / FIT, {"fit_s": round(done.seconds, 2)})
    return _evaluated(step, run, done.trained.n_images, round(done.seconds, 2), allow_missing_masks, batch_size,
                      device)


def _evaluated(step: str, run: Path, n_train: int, fit_s: float, allow_missing_masks: bool, batch_size: int,
               device: str) -> dict:
    note(f"{step}: eval")
    result = api.evaluate(run, allow_missing_masks=allow_missing_masks, batch_size=batch_size, device=device)
    row = {m: result["overall"][m] for m in METRICS}
    row.update(fit_s=fit_s, test_images_per_s=round(result["test_images_per_s"], 3), n_train=n_train,
               n_test=result["overall"]["n_images"])
    if "excluded_real_defects" in result:  # a run with real defect shots: its test split is smaller by these
        row[EXCLUDED] = result["excluded_real_defects"]["count"]
    write_json(run / ROW, finite_or_null(row))
    note(f"{step}: done (image AUROC {row['image_auroc']:.3f}, AUPRO {row['aupro']:.3f})")
    return row


def config_settings(config: dict) -> dict:
    """What a benchmark's runs share: a run's config.json less its category and its own real shots."""
    data = {k: v for k, v in config["data"].items() if k not in ("category", "real_defects")}
    return {"method": config["method"], "data": data, "policy": config["policy"], "detector": config["detector"]}


def _mean(rows: dict[str, dict]) -> dict[str, float]:
    return {c: sum(r[c] for r in rows.values()) / len(rows) for c in COLUMNS}  # NaN stays NaN


def _cell(value: float, column: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.1f}" if column in ("fit_s", "test_images_per_s") else f"{value:.3f}"


def _excluded(rows: dict[str, dict]) -> tuple[str, ...]:
    """(EXCLUDED,) when the rows count real defect shots left out of their test splits, else ()."""
    return (EXCLUDED,) if any(EXCLUDED in r for r in rows.values()) else ()


def markdown(title: str, rows: dict[str, dict], mean: dict[str, float]) -> str:
    extra = _excluded(rows)  # a count: shown per category, not averaged
    head = "| category | " + " | ".join(HEADINGS[c] for c in (*COLUMNS, *extra)) + " |"
    lines = [f"**{title}**", "", head, "|---|" + "---:|" * (len(COLUMNS) + len(extra))]
    for name, row in rows.items():
        cells = [_cell(row[c], c) for c in COLUMNS] + [str(row[c]) for c in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| **{MEAN}** | " + " | ".join([_cell(mean[c], c) for c in COLUMNS] + [""] * len(extra)) + " |")
    return "\n".join(lines)


def _csv(rows: dict[str, dict], mean: dict[str, float]) -> str:
    counts = (*COUNTS, *_excluded(rows))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["category", *COLUMNS, *counts])
    for name, row in rows.items():
        writer.writerow([name, *(row[c] for c in COLUMNS), *(row[c] for c in counts)])
    writer.writerow([MEAN, *(mean[c] for c in COLUMNS), *([""] * len(counts))])
    return buf.getvalue()


def _write_tables(out: Path, data, layout: str, method: str, settings: dict, rows: dict[str, dict],
                  skipped: list[str]) -> Benchmarked:
    mean = _mean(rows)
    counted = f"{len(rows)} {'category' if len(rows) == 1 else 'categories'}"
    real = settings["data"]["real_defects"]
    shots = (f"; K={real['shots']} real defect shots per type from {real['root']}/CATEGORY (seed {real['seed']}), "
             "left out of each test split") if real else ""
    title = f"{method} on {Path(data).resolve()} ({layout} layout, {counted}{shots})"
    text = markdown(title, rows, mean)
    make_folder(out)
    tables = [out / f"{TABLE}.{ext}" for ext in ("md", "csv", "json")]
    write_text(tables[0], text + "\n")
    write_text(tables[1], _csv(rows, mean))
    write_json(tables[2], finite_or_null({"settings": settings, "categories": rows, MEAN: mean}))
    return Benchmarked(out, method, rows, mean, skipped, text, tables)
