"""`qarad demo`: the whole pipeline on built-in data, ending in runs/demo/report.html.

Today the pipeline is: make the demo dataset -> train PatchCore per category -> evaluate ->
predict heat maps on test images -> report. Later stages (ARAS synthesis, QAW, the trained
detector) plug in here as they land.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import runs
from .commands.detect import evaluate_run
from .data.demo import DemoConfig, make_demo_dataset
from .data.io import read_mask, write_json, write_text
from .data.mvtec import scan_mvtec
from .detection.inference import score_images
from .data.resolution import ResolutionPolicy
from .detection.patchcore import PatchCore, PatchCoreConfig
from .progress import bar
from .report.figures import outline, overlay
from .report.html import Report

METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
HEADER = ["category", "method", "image AUROC", "image AP", "image F1max", "pixel AUROC", "pixel AP",
          "pixel F1max", "AUPRO@0.3", "test img/s"]


def _demo_config(seed: int, quick: bool) -> DemoConfig:
    if quick:
        return DemoConfig(categories=("brick",), size=128, n_train=8, n_test_good=3, n_test_defect=3, seed=seed)
    return DemoConfig(seed=seed)


def _train(data: Path, category: str, out: Path, policy: ResolutionPolicy) -> None:
    config = {"method": "patchcore", "data": {"root": str(data.resolve()), "category": category,
                                              "max_train_images": None, "seed": 0},
              "policy": policy.to_dict(), "detector": {"coreset_ratio": 0.1, "memory_limit": None,
                                                       "batch_size": 8, "seed": 0}}
    if runs.prepare(out, config):
        return
    train = scan_mvtec(data, category, "train")
    model = PatchCore(PatchCoreConfig(**config["detector"]), policy)
    with bar(len(train), f"{category}: train patchcore") as tick:
        model.fit([s.image for s in train], on_image=tick)
    model.save(out / runs.MODEL)


def _heat_cards(run: Path, data: Path, category: str, limit: int) -> list[tuple[np.ndarray, str]]:
    detector = runs.load_detector(run)
    test = [s for s in scan_mvtec(data, category, "test") if s.label == 1][:limit]
    cards = []
    for sample, res in zip(test, score_images(detector, [s.image for s in test], keep_images=True)):
        full = res.layout.to_source(torch.from_numpy(res.anomaly_map)).numpy()
        shown = outline(overlay(res.image, full, detector.threshold_), read_mask(sample.mask, full.shape))
        verdict = "defect" if res.score > detector.threshold_ else "normal"
        cards.append((shown, f"{category}/{sample.defect_type}: score {res.score:.2f} -> {verdict}"))
    return cards


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> Path:
    start = time.perf_counter()
    cfg = _demo_config(seed, quick)
    data = out / "data"
    with bar(None, "demo data") as tick:
        make_demo_dataset(data, cfg, on_image=tick)
    policy = ResolutionPolicy(mode="resize", size=cfg.size)
    rows, cards, summary = [], [], {}
    for category in cfg.categories:
        run = out / category / "patchcore"
        _train(data, category, run, policy)
        result = evaluate_run(run)
        m = result["overall"]
        summary[category] = {"patchcore": {k: m[k] for k in METRICS}}
        rows.append([category, "PatchCore (no synthesis)", *[m[k] for k in METRICS], result["test_images_per_s"]])
        cards += _heat_cards(run, data, category, limit=4)
    report = Report("QARAD demo", f"built-in demo data (seed {seed}); finished in "
                                  f"{time.perf_counter() - start:.0f} s")
    report.heading("Detection metrics on the held-out test set")
    report.paragraph("Test defects (foreign objects, smudges, cuts) are families the synthesis corpus does not "
                     "contain. Every number is also in each run's metrics.json.")
    report.table(HEADER, rows, bold_max_from=2)
    report.heading("Heat maps on real test images (green: ground-truth outline)")
    report.gallery(cards)
    path = out / "report.html"
    write_text(path, report.render())
    write_json(out / "summary.json", summary)
    return path
