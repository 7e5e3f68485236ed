"""`qarad demo`: the whole pipeline on built-in data, ending in runs/demo/report.html.

make the demo dataset -> fit one ARAS model on the normal images of all demo textures ->
per category: synth (prompted defects in proposed masks) -> score (QAW) -> train the qarad
detector and PatchCore -> evaluate both -> report.

Every stage is the qarad.api function behind the CLI verb a user runs, with the arguments that
verb's defaults give, so the demo exercises exactly the user's path and resumes the same way: a
second `qarad demo` reuses every finished stage.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import api, checkpoint, owned, runs
from .data.demo import DemoConfig, make_demo_dataset
from .data.io import finite_or_null, write_json
from .data.layouts import scan
from .data.resolution import ResolutionPolicy
from .detection.inference import score_images
from .metrics import METRICS
from .progress import bar
from .report.html import Report
from .report.sections import METRIC_HEADER, curve_plots, heat_card, metric_cells, qaw_text, synth_card, verdict
from .synthesis.model import read_timings

HEADER = ["category", "method", *METRIC_HEADER, "test img/s"]
METHODS = {"qarad": "QARAD (ARAS + QAW detector)", "patchcore": "PatchCore (no synthesis)"}
# One prompt per corpus family that reads naturally on textures. None names the demo's test defects
# (foreign objects, smudges, cuts): the detector must find kinds of defect it never saw.
PROMPTS = ("a thin dark scratch", "a long jagged crack running diagonally", "a small round dark hole",
           "a large brown stain", "a shallow dent", "a broken chipped-off corner of missing material",
           "a pale discoloured patch", "a frayed loose fibre")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of every stage; the defaults keep `make demo` under 15 minutes on 2 cores."""

    data: DemoConfig = DemoConfig()
    window: int = 64  # a small window keeps the fit to minutes; demo defects fit inside it
    corpus_size: int = 800
    tokenizer_steps: int = 600
    prior_steps: int = 600
    qaw_steps: int = 300
    n_synth: int = 48  # synthetic defects per category
    head_steps: int = 500
    perlin_samples: int = 100  # DRAEM-style negatives beside the ARAS samples (train --perlin-samples)
    weighting: str = "linear"
    seed: int = 0


def demo_plan(seed: int, quick: bool) -> DemoPlan:
    if quick:  # seconds, for tests: proves the wiring, not the quality
        data = DemoConfig(categories=("brick",), size=64, n_train=6, n_test_good=3, n_test_defect=3, seed=seed)
        return DemoPlan(data, window=32, corpus_size=16, tokenizer_steps=4, prior_steps=4, qaw_steps=4,
                        n_synth=4, head_steps=4, perlin_samples=4, seed=seed)
    return DemoPlan(DemoConfig(seed=seed), seed=seed)


def _policy(plan: DemoPlan) -> ResolutionPolicy:
    return ResolutionPolicy(mode="resize", size=plan.data.size)


def _fit(plan: DemoPlan, data: Path, model: Path) -> None:
    config = api.fit_config(plan.window, corpus_size=plan.corpus_size, tokenizer_steps=plan.tokenizer_steps,
                            prior_steps=plan.prior_steps, qaw_steps=plan.qaw_steps, seed=plan.seed)
    api.fit(data, list(plan.data.categories), model, config, _policy(plan))


def _synthesize(plan: DemoPlan, data: Path, model: Path, category: str, out: Path) -> float:
    """Synthesize and score one category's defects; returns synthesis throughput (samples / s),
    measured when the samples were made (a resumed demo keeps the first measurement)."""
    speed_file = out.parent / "synth_speed.json"
    if speed_file.is_file():
        return checkpoint.read_numbers(speed_file, ("samples_per_s",))["samples_per_s"]
    start = time.perf_counter()
    api.synth(model, [data / category / "train" / "good"], list(PROMPTS), out, n=plan.n_synth, seed=plan.seed,
              auto_masks=True)
    per_s = plan.n_synth / (time.perf_counter() - start)
    api.score(out)
    write_json(speed_file, {"samples_per_s": per_s})  # last: its presence means synth and score finished
    return per_s


def _train(plan: DemoPlan, data: Path, category: str, method: str, run: Path, synth: Path) -> None:
    from .detection.patchcore import PatchCoreConfig
    from .detection.segmenter import SegmenterConfig

    if method == "qarad":  # every other setting as `qarad train`'s defaults
        detector = SegmenterConfig(steps=plan.head_steps, seed=plan.seed)
        training = api.QaradTraining(synth=synth, weighting=plan.weighting, perlin_samples=plan.perlin_samples)
    else:
        detector, training = PatchCoreConfig(seed=plan.seed), api.QaradTraining()
    api.train(data, category, run, detector, training, _policy(plan))


def _heat_cards(run: Path, data: Path, category: str, limit: int) -> list[tuple[np.ndarray, str]]:
    detector = runs.load_detector(run)
    test = [s for s in scan(data, category, "test", "mvtec") if s.label == 1][:limit]
    cards = []
    for sample, res in zip(test, score_images(detector, [s.image for s in test])):
        full = res.layout.to_source(torch.from_numpy(res.anomaly_map)).numpy()
        cards.append(heat_card(sample.image, full, detector.threshold_, sample.mask,
                               f"{category}/{sample.defect_type}: score {res.score:.2f} -> "
                               f"{verdict(res.score, detector.threshold_)}"))
    return cards


def _synth_cards(synth: Path, category: str, per_side: int) -> list[tuple[np.ndarray, str]]:
    """The best- and worst-scored synthetic samples (QAW), mask outlined in green."""
    entries = sorted(_manifest(synth), key=lambda e: -e["score"])
    picks = [("best", e) for e in entries[:per_side]] + [("worst", e) for e in entries[-per_side:][::-1]]
    return [synth_card(synth, e, f"{category} ({rank} {qaw_text(e)}): \u201c{e['prompt']}\u201d") for rank, e in picks]


def _manifest(synth: Path) -> list[dict]:
    from .synthesis.jobs import MANIFEST, read_manifest

    return read_manifest(synth / MANIFEST)


def _curve_plots(results: dict[str, dict]) -> list[str]:
    """Image ROC, pixel ROC and PRO, ours vs baseline, for one category."""
    return curve_plots({METHODS[m].split(" (")[0]: r.get("curves", {}) for m, r in results.items()})


def _check_demo_folder(out: Path, plan: DemoPlan) -> None:
    """`out` is empty, absent or an earlier demo's folder (which a demo resumes); refuse anything else,
    so that a user's report.html or summary.json is never overwritten."""
    found = owned.entries(out)
    if not found or owned.kind_of(out) == "demo":
        return
    names = {"data", "aras", "report.html", "summary.json", *plan.data.categories}
    if (out / "aras" / "aras.json").is_file() and all(p.name in names for p in found):
        return  # a demo folder written before folders were marked
    raise owned.FolderError(f"{out}: folder is not empty and is not a qarad demo folder; choose another --out")


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> Path:
    start = time.perf_counter()
    plan = demo_plan(seed, quick)
    out = Path(out)
    _check_demo_folder(out, plan)
    with owned.writing(out, "qarad demo"):
        owned.mark(out, "demo")
        return _run_demo(out, plan, start, quick)


def _run_demo(out: Path, plan: DemoPlan, start: float, quick: bool) -> Path:
    data, model = out / "data", out / "aras"
    with bar(None, "demo data") as tick:
        make_demo_dataset(data, plan.data, on_image=tick)
    _fit(plan, data, model)
    rows, heat, gallery, plots, summary, speed = [], [], [], {}, {}, {}
    for category in plan.data.categories:
        synth = out / category / "synth"
        speed[category] = _synthesize(plan, data, model, category, synth)
        results = {}
        for method in METHODS:
            run = out / category / method
            _train(plan, data, category, method, run, synth)
            results[method] = api.evaluate(run, curves=True)
            m = results[method]["overall"]
            rows.append([category, METHODS[method], *metric_cells(m), results[method]["test_images_per_s"]])
        summary[category] = {method: {k: r["overall"][k] for k in METRICS} for method, r in results.items()}
        summary[category]["synth_per_s"] = speed[category]
        gallery += _synth_cards(synth, category, per_side=2 if not quick else 1)
        heat += _heat_cards(out / category / "qarad", data, category, limit=4)
        plots[category] = _curve_plots(results)
    minutes = (time.perf_counter() - start) / 60
    summary["wall_minutes"] = minutes
    path = out / "report.html"
    _report(plan, rows, gallery, heat, plots, speed, model, minutes).write(path)
    write_json(out / "summary.json", finite_or_null(summary))
    return path


def _report(plan, rows, gallery, heat, plots, speed, model: Path, minutes: float) -> Report:
    timings = read_timings(model)
    report = Report("QARAD demo", f"built-in demo data (seed {plan.seed}); this run took {minutes:.1f} min")
    report.heading("Synthetic defects: prompt, mask outline (green) and QAW score")
    report.paragraph("For each category, the two samples the quality scorer (QAW) rates best next to the two it "
                     "rates worst. The detector's loss weights follow these scores "
                     f"({plan.weighting} calibration).")
    report.gallery(gallery)
    report.heading("Detection metrics on the held-out test set")
    report.paragraph("Test defects (foreign objects, smudges, cuts) are families the synthesis corpus does not "
                     "contain. Every number here is also in the run's metrics.json.")
    report.table(HEADER, rows, bold_max_from=2)
    for category, svgs in plots.items():
        report.heading(f"Curves: {category}")
        report.raw("<div class=gallery>" + "".join(svgs) + "</div>")
    report.heading("Heat maps of the QARAD detector on real test images (green: ground-truth outline)")
    report.gallery(heat)
    report.heading("Synthesis speed and fit time")
    report.table(["stage", "value"],
                 [[f"ARAS synthesis, {c}", f"{v:.2f} samples/s"] for c, v in speed.items()]
                 + [[f"fit: {k}", f"{v:.0f} s"] for k, v in timings.items()])
    return report
