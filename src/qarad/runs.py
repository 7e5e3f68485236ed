"""Run folders: one folder per training run holding its config, model, metrics and reports.

RUN/config.json   what was trained on and how (data, method, resolution policy); with real defect
                  shots (data/real_defects.py) their list, which `qarad eval` leaves out of the test split
RUN/model.*       the detector (safetensors + JSON)
RUN/metrics.json  written by `qarad eval`, with RUN/scores.csv and RUN/report.html (report/pages.py)
RUN/metrics_validation.json  written by `qarad train`: the held-out validation split's metrics and the
                  gate's choice (detection/validation.py); absent in runs without a split
RUN/candidates.json  written by `qarad train --auto`: every candidate's settings and validation metrics
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from . import __version__, checkpoint, owned
from .backbone_config import LEGACY_BACKBONE
from .data.io import make_folder, write_json
from .data.layouts import FolderSplit
from .data.real_defects import RealDefects
from .data.resolution import ResolutionPolicy

CONFIG = "config.json"
MODEL = "model"


class RunError(ValueError):
    """A run folder that is missing, foreign, or holds a different run."""


# config.json = {"qarad_version", "method", "data", "policy", "detector"}; each part is rebuilt through
# its dataclass on read, so a misspelt or foreign key is refused instead of silently ignored.
# The "detector" dataclasses below are the on-disk schema only: which settings a run records, and
# what runs written before a setting existed mean by its absence. Their values are never set by
# hand; `detector_settings` takes each from the training configs' field of the same name.
@dataclass(frozen=True)
class RunData:
    root: str
    category: str
    max_train_images: int | None
    seed: int
    layout: str = "mvtec"  # data/layouts.py; runs written before layouts existed read MVTec AD trees
    folder: dict | None = None  # the folder layout's FolderSplit
    real_defects: dict | None = None  # RealDefects.to_dict() of the real shots trained on; None: none

    @property
    def real(self) -> RealDefects | None:
        return None if self.real_defects is None else RealDefects.from_dict(self.real_defects, "config.json (data)")


@dataclass(frozen=True)
class PatchCoreSettings:
    coreset_ratio: float
    memory_limit: int | None
    batch_size: int
    seed: int
    search: str = "exact"  # runs written before the search setting existed searched exactly
    backbone: str = LEGACY_BACKBONE  # ... and before the backbone setting, used EfficientNet-Lite0
    val_share: float = 0.0  # ... and before the validation split (detection/validation.py), held out nothing
    synth: str | None = None  # the synth folder whose samples on held-out normals validate the run


@dataclass(frozen=True)
class QaradSettings:
    steps: int
    synth: str | None
    weighting: str
    max_normal_views: int
    batch_size: int
    seed: int
    # the residual detector's settings; runs written before it existed read with the old head's
    negatives: tuple[str, ...] = ("synthetic",)
    residual: bool = False
    fusion: bool = False
    perlin_samples: int = 0
    search: str = "exact"
    backbone: str = LEGACY_BACKBONE
    real_weight: float = 1.0  # loss weight of the real shots' views (runs without them: unused)
    # the memory bank's; runs written before they were recorded (`train` never passed them on) had these
    coreset_ratio: float = 0.1
    memory_limit: int | None = None
    val_share: float = 0.0  # runs written before the validation split held out nothing


DETECTORS = {"patchcore": PatchCoreSettings, "qarad": QaradSettings}


def _legacy(schema) -> dict:
    """A config.json part's fields that have a default: each a setting added since runs were first
    written, with what a run written before it did (the one table of this format's legacy defaults,
    kept as the schema dataclasses' defaults; for reading a run and for comparing a rerun with it)."""
    return json.loads(json.dumps({f.name: f.default for f in fields(schema) if f.default is not MISSING}))
TOP_KEYS = {"qarad_version", "method", "data", "policy", "detector"}


def detector_settings(method: str, *configs) -> dict:
    """config.json's "detector" part for a run of `method` trained with `configs` (dataclasses):
    each key is the field of that name in the first config that has one."""
    schema = DETECTORS[method]
    values = {}
    for f in fields(schema):
        owner = next((c for c in configs if f.name in {g.name for g in fields(c)}), None)
        if owner is None:
            raise TypeError(f"no config among {[type(c).__name__ for c in configs]} sets {schema.__name__}.{f.name}")
        values[f.name] = getattr(owner, f.name)
    return json.loads(json.dumps(asdict(schema(**values))))  # as it reads back (tuples become lists)


def config_json(method: str, data: RunData, policy: ResolutionPolicy, detector: dict) -> dict:
    """config.json's content, less qarad_version, as `prepare` compares it with a run already there."""
    return json.loads(json.dumps({"method": method, "data": asdict(data), "policy": policy.to_dict(),
                                  "detector": detector}))


# what a run folder holds besides config.json that retraining makes stale (each written by qarad)
TRAINED = (f"{MODEL}.safetensors", f"{MODEL}.json")
EVALUATION = ("metrics.json", "scores.csv", "report.html")  # what `qarad eval` writes, all or nothing
EVALUATED = (*EVALUATION, "model.onnx", "model.onnx.json")


def prepare(out: Path, config: dict, overwrite: bool = False) -> bool:
    """Create or re-enter `out` for `config`. Returns True when the same run is already complete.
    With `overwrite`, a run folder holding another run (or the same one) is retrained: its model and
    evaluation outputs go first, so a retraining cut short never leaves the new config.json beside
    the old model; nothing else in the folder is touched, and a folder that is not a run is refused."""
    out = make_folder(out)  # refuses a file in the way or a folder we may not write, before any work
    existing = out / CONFIG
    if not owned.is_empty(out):
        if not existing.is_file():
            raise RunError(f"{out}: folder is not empty and is not a qarad run; choose another --out")
        if not overwrite:
            if not holds(out, config):
                raise RunError(f"{out}: holds a different run ({existing}); choose another --out or pass --overwrite")
            return (out / f"{MODEL}.safetensors").is_file() and (out / f"{MODEL}.json").is_file()
        owned.remove_own(out, (*TRAINED, *EVALUATED))
    owned.mark(out, "run")
    write_json(existing, {"qarad_version": __version__, **config})
    return False


def holds(run: Path, config: dict) -> bool:
    """Whether RUN/config.json describes `config` (api.run_config's; qarad_version aside)."""
    path = Path(run) / CONFIG
    if not path.is_file():
        return False
    old = {k: v for k, v in _read_json(path).items() if k != "qarad_version"}
    if isinstance(old.get("data"), dict):  # a run written before a RunData field existed has its default
        old["data"] = {**_legacy(RunData), **old["data"]}
    if isinstance(old.get("detector"), dict) and isinstance(old.get("method"), str) and old["method"] in DETECTORS:
        old["detector"] = {**_legacy(DETECTORS[old["method"]]), **old["detector"]}
    return old == config


def _read_json(path: Path) -> dict:
    return checkpoint.load_config(path.with_suffix(""))  # size cap, JSON object, errors name the file


def read_config(run: Path) -> dict:
    """RUN/config.json, checked key by key at every level (see RunData and DETECTORS)."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise RunError(f"{run}: not a qarad run folder (no {CONFIG})")
    config = _read_json(path)
    if set(config) - TOP_KEYS:
        raise RunError(f"{path}: unknown keys {sorted(set(config) - TOP_KEYS)}")
    if TOP_KEYS - {"qarad_version"} - set(config):
        raise RunError(f"{path}: missing keys {sorted(TOP_KEYS - {'qarad_version'} - set(config))}")
    if not isinstance(config["method"], str) or config["method"] not in DETECTORS:
        raise RunError(f"{path}: unknown method {config['method']!r}; expected one of {sorted(DETECTORS)}")
    try:
        data = checkpoint.build_config(RunData, config["data"], f"{path} (data)")
        if data.folder is not None:
            checkpoint.build_config(FolderSplit, data.folder, f"{path} (data.folder)")
        if data.real_defects is not None:
            RealDefects.from_dict(data.real_defects, f"{path} (data.real_defects)")
        checkpoint.build_config(ResolutionPolicy, config["policy"], f"{path} (policy)")
        checkpoint.build_config(DETECTORS[config["method"]], config["detector"], f"{path} (detector)")
    except checkpoint.CheckpointError as exc:
        raise RunError(str(exc)) from None
    return config


def load_detector(run: Path, device: str = "cpu"):
    from .detection.patchcore import PatchCore
    from .detection.segmenter import Segmenter

    loaders = {"patchcore": PatchCore.load, "qarad": Segmenter.load}
    method = read_config(run)["method"]  # one of DETECTORS
    stem = Path(run) / MODEL
    if not stem.with_suffix(".safetensors").is_file():
        raise RunError(f"{run}: no trained model yet (run `qarad train` first)")
    try:
        return loaders[method](stem).to(device)
    except checkpoint.CheckpointError as exc:
        raise RunError(str(exc)) from None
