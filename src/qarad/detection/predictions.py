"""`qarad predict`'s folder: a heat-map overlay per image and scores.csv, staged and put in place
all at once; an earlier prediction there is replaced, anything else refused."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import owned
from ..data.io import check_output_folder, make_folder, staging_folder, write_csv
from ..progress import bar
from ..runs import RunError
from .inference import score_images
from .overlay import write_overlay


@dataclass(frozen=True)
class Predictions:
    folder: Path  # overlays and scores.csv
    records: list[dict]  # one scores.csv row per image: image, score, threshold, anomalous, overlay
    threshold: float


PREDICTION_TABLE = "scores.csv"


def _earlier_predictions(out: Path) -> bool:
    """Whether `out` holds an earlier `predict`'s output, which a new one replaces (False: empty or
    absent). Anything else in it, a run's files or a user's images, is refused before any work."""
    found = owned.entries(out)
    if not found:
        return False
    ours = lambda p: p.is_file() and not p.is_symlink() and (  # noqa: E731
        p.name == PREDICTION_TABLE or p.name.endswith("_overlay.png"))
    if owned.kind_of(out) != "predictions" and not (out / PREDICTION_TABLE).is_file():
        raise RunError(f"{out}: folder is not empty and holds no earlier predictions; choose another --out")
    foreign = [p for p in found if not ours(p)]
    if foreign:
        raise RunError(f"{out}: holds {foreign[0].name}, which `qarad predict` did not write; predictions "
                            "replace only earlier predictions: choose another --out")
    return True


def _overlay_names(paths: list[Path]) -> list[str]:
    """One overlay file name per input, distinct even when inputs share a stem (a/dup.png, c/dup.png,
    c/dup_1.png: every candidate name is checked against those already given)."""
    used: set[str] = set()
    names = []
    for p in paths:
        stem, k = p.stem, 0
        while f"{stem}_overlay.png" in used:
            k += 1
            stem = f"{p.stem}_{k}"
        used.add(f"{stem}_overlay.png")
        names.append(f"{stem}_overlay.png")
    return names


def write_predictions(detector, paths: list[Path], given: Path, batch_size: int = 8) -> Predictions:
    """Score `paths` with `detector` into the folder `given` (see the module docstring)."""
    out = check_output_folder(given).resolve()  # `--out .` has a name and a parent once resolved
    replace_earlier = _earlier_predictions(out)  # refuse before scoring anything
    make_folder(out.parent)
    stage = staging_folder(out.parent, out.name)
    records = []
    try:
        with bar(len(paths), "predict") as tick:
            for name, res in zip(_overlay_names(paths), score_images(detector, paths, batch_size, on_image=tick)):
                write_overlay(stage / name, res.path, res.layout, res.anomaly_map, detector.threshold_)
                records.append({"image": str(res.path), "score": round(res.score, 6),
                                "threshold": round(detector.threshold_, 6),
                                "anomalous": int(res.score > detector.threshold_), "overlay": name})
        write_csv(stage / PREDICTION_TABLE, records)
        owned.mark(stage, "predictions")
        _replace_folder(stage, out, replace_earlier)
    finally:
        if stage.exists():
            owned.remove_own(stage, [p.name for p in stage.iterdir()])  # a folder this call made
            stage.rmdir()
    return Predictions(given, records, detector.threshold_)


def _replace_folder(stage: Path, out: Path, earlier: bool) -> None:
    """Put the finished `stage` where `out` is; an earlier prediction there (checked to hold only
    a prediction's files) is moved aside first and removed file by file once the new one is in."""
    if not earlier:
        if not out.exists():
            os.replace(stage, out)
            return
        # an empty folder that is there already (the user's, or the cwd) stays; the files move in, the
        # table last, so a prediction cut short here has no scores.csv
        for path in sorted(stage.iterdir(), key=lambda p: p.name == PREDICTION_TABLE):
            os.replace(path, out / path.name)
        stage.rmdir()
        return
    aside = staging_folder(out.parent, f"{out.name}.replaced")
    os.replace(out, aside / "old")
    os.replace(stage, out)
    old = aside / "old"
    owned.remove_own(old, [p.name for p in old.iterdir()])  # only a prediction's files (checked above)
    old.rmdir()
    aside.rmdir()
