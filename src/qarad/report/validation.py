"""The run's self-check in its report: the validation split's metrics and the gate's choice
(RUN/metrics_validation.json, detection/validation.py), and `--auto`'s candidates (RUN/candidates.json)."""
from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from .html import Report

VALIDATION = "metrics_validation.json"  # as detection/validation.VALIDATION (this module stays torch-free)
CANDIDATES = "candidates.json"  # as auto.CANDIDATES
COLUMNS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))


def _read(path: Path) -> dict | None:
    return checkpoint.load_config(path) if path.is_file() else None


def _weight(w) -> str:
    return "bank (PatchCore)" if w is None else f"{w:g}"


def validation_section(report: Report, run: Path) -> None:
    """The sections, when the run has those files (runs trained before the split have neither)."""
    checked = _read(Path(run) / VALIDATION)
    if checked is None:
        return
    split, chosen = checked["split"], checked["chosen"]
    report.heading("Validation split (held-out normals and synthetic defects; no test label used)")
    report.paragraph(f"{split['normal_held_out']} of {split['normal_held_out'] + split['normal_train']} normal "
                     f"training images were held out (never in the memory bank or the head's training), with "
                     f"{split['aras_samples']} ARAS samples drawn on them, {split['perlin_patches']} Perlin "
                     f"patches and {split.get('procedural_defects', 0)} procedural defects (a kind the head never "
                     f"learns from). Chosen by {checked['criterion']} on '{checked['source']}': {chosen['note']}.")
    report.table(["defect source", *[label for _, label in COLUMNS]],
                 [[s, *[float(m[k]) for k, _ in COLUMNS]] for s, m in checked["by_source"].items()])
    rows = [r for r in checked["grid"] if r["source"] == checked["source"]]
    if len(rows) > 1:
        report.paragraph("Every head weight (0: the memory bank alone), image-score rule and scoring region "
                         "(the whole image, or the part: the foreground learned from the normal images) tried:")
        report.table(["head weight", "image rule", "scoring region", *[label for _, label in COLUMNS], "criterion"],
                     [[_weight(r["head_weight"]), r["image_rule"], "part" if r.get("foreground") else "image",
                       *[float(r[k]) for k, _ in COLUMNS], float(r["criterion"])] for r in rows], bold_max_from=3)
    candidates = _read(Path(run) / CANDIDATES)
    if candidates is None:
        return
    report.heading("--auto: candidates tried (chosen by the validation criterion)")
    report.paragraph(candidates["summary"])
    report.table(["candidate", "status", *[label for _, label in COLUMNS], "criterion", "train s"],
                 [[c["name"] + (" (chosen)" if c["name"] == candidates["chosen"] else ""), c["status"],
                   *[float(c["validation"].get(k, float("nan"))) if c.get("validation") else float("nan")
                     for k, _ in COLUMNS],
                   float(c["criterion"]) if c.get("criterion") is not None else float("nan"),
                   float(c.get("seconds") or float("nan"))] for c in candidates["candidates"]], bold_max_from=2)
