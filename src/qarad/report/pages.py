"""The reports the verbs write: RUN/report.html (`qarad eval`) and OUT/gallery.html (`qarad synth`, `qarad score`)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .html import Report
from .sections import (METRIC_HEADER, curve_plots, heat_card, per_type_rows, prompt_label, qaw_text, synth_card,
                       verdict)
from .validation import validation_section

if TYPE_CHECKING:
    from ..detection.evaluate import Evaluation, WorstCase

REPORT = "report.html"  # in a run folder, beside metrics.json
GALLERY = "gallery.html"  # in a synth folder, beside manifest.jsonl
GALLERY_LIMIT = 96  # samples shown; beyond it the best and worst half of the scored ones, or the first ones
GALLERY_SIDE = 220  # thumbnail px, the card width in html.CSS


def _worst_cards(cases: list["WorstCase"], threshold: float) -> list:
    return [heat_card(c.path, c.anomaly_map, threshold, c.mask,
                      f"{c.defect_type}/{c.path.name}: score {c.score:.3f} -> {verdict(c.score, threshold)}")
            for c in cases]


def _short_name(image: str | Path) -> str:
    """TYPE/FILE, as the test split's folders name an image (its defect type, then its file)."""
    return f"{Path(image).parent.name}/{Path(image).name}"


def _excluded_section(report: Report, excluded: dict, n_test: int) -> None:
    """metrics.json's excluded_real_defects: the training shots `api.evaluate` took out of the test split."""
    report.heading("Real defect shots left out of the test split")
    if not excluded["count"]:
        report.paragraph("This run trained on real defect shots (--real-defects); none of them is in "
                         "this test split, so no test image was left out.")
        return
    report.paragraph(f"This run trained on real defect shots (--real-defects), so those images are not "
                     f"test images: the {excluded['count']} below were left out of the test split, and every metric "
                     f"is over the other {n_test}. Their full paths are in metrics.json (excluded_real_defects).")
    report.table(["left out (defect type/file)"], [[_short_name(p)] for p in excluded["images"]])


def run_report(result: dict, ev: "Evaluation", run: Path) -> Report:
    """`result` is metrics.json's content; `ev` adds the curves and the worst cases' maps."""
    threshold = result["threshold"]
    policy = result["policy"]
    px = result["pixel_metrics"]
    mode = px["mode"] + (f", {px['bins']} score bins {px['bin_width']:.3g} wide" if px["mode"] == "streaming" else "")
    excluded = result.get("excluded_real_defects")  # only in a run trained on real defect shots
    left_out = f" ({excluded['count']} real defect shots left out)" if excluded else ""
    report = Report(f"QARAD evaluation: {result['category']} ({result['method']})",
                    f"run {run}; policy {policy['mode']} {policy['size']} px; threshold {threshold:.4f}; "
                    f"{ev.overall['n_images']} test images{left_out}")
    if excluded:
        _excluded_section(report, excluded, ev.overall["n_images"])
    report.heading("Metrics per defect type")
    report.paragraph("Each defect type is graded together with all normal test images; ALL is the whole test split. "
                     f"Pixel metrics at source resolution over {px['pixels']} pixels ({mode}). The same numbers "
                     "are in metrics.json.")
    report.table(["defect type", "images", *METRIC_HEADER], per_type_rows(result["overall"], result["per_type"]))
    validation_section(report, run)
    report.heading("ROC and PRO curves")
    if ev.curves:
        report.raw("<div class=gallery>" + "".join(curve_plots({result["method"]: ev.curves})) + "</div>")
    else:
        report.paragraph("No curves: the test split has normal images only or defect images only.")
    report.heading("Highest-scored normal images (false alarms when above the threshold)")
    if ev.false_alarms:
        report.gallery(_worst_cards(ev.false_alarms, threshold))
    else:
        report.paragraph("No normal test images.")
    report.heading("Lowest-scored defect images (misses when below the threshold; green: ground-truth outline)")
    if ev.misses:
        report.gallery(_worst_cards(ev.misses, threshold))
    else:
        report.paragraph("No defect test images.")
    return report


def _shown(entries: list[dict]) -> tuple[list[dict], str]:
    """The samples the gallery shows and a sentence saying which."""
    scored = all(e.get("score") is not None for e in entries)
    if scored:
        entries = sorted(entries, key=lambda e: -e["score"])
    if len(entries) <= GALLERY_LIMIT:
        return entries, "Best QAW score first." if scored else "In the order they were made."
    half = GALLERY_LIMIT // 2
    if scored:
        return entries[:half] + entries[-half:], (f"The {half} best- and {half} worst-scored of {len(entries)} "
                                                  "samples, best first.")
    return entries[:GALLERY_LIMIT], f"The first {GALLERY_LIMIT} of {len(entries)} samples."


def synth_gallery(synth_dir: Path) -> Report:
    """The samples of a `qarad synth` folder with their prompts, mask outlines and QAW scores (once scored)."""
    from ..synthesis.jobs import MANIFEST, read_manifest, read_settings

    synth_dir = Path(synth_dir)
    entries = read_manifest(synth_dir / MANIFEST)
    settings = read_settings(synth_dir)
    made_by = f"model {Path(str(settings['model'])).name}" if settings.get("model") else "real defect shots"
    report = Report(f"QARAD synthetic defects: {synth_dir.name}",
                    f"{len(entries)} samples from {made_by} ({settings.get('method', '?')})")
    by_prompt: dict[str, list] = defaultdict(list)
    for e in entries:
        by_prompt[prompt_label(e)].append(e.get("score"))
    scored = bool(entries) and all(e.get("score") is not None for e in entries)
    report.heading("Prompts")
    if scored:
        report.table(["prompt", "samples", "mean QAW", "min QAW", "max QAW"],
                     [[p, str(len(s)), float(np.mean(s)), float(np.min(s)), float(np.max(s))]
                      for p, s in by_prompt.items()])
    else:
        report.paragraph("Not scored yet: `qarad score` adds each sample's QAW score and rewrites this gallery.")
        report.table(["prompt", "samples"], [[p, str(len(s))] for p, s in by_prompt.items()])
    shown, which = _shown(entries)
    report.heading("Samples (green: the pixels that changed)")
    report.paragraph(which)
    report.gallery([synth_card(synth_dir, e, f"#{e['id']} ({qaw_text(e)}): {prompt_label(e, quoted=True)}")
                    for e in shown],
                   max_side=GALLERY_SIDE)
    return report


def write_gallery(synth_dir: Path) -> Path:
    path = Path(synth_dir) / GALLERY
    synth_gallery(synth_dir).write(path)
    return path
