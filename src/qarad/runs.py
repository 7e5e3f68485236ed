"""Run folders: one folder per training run holding its config, model, metrics and reports.

RUN/config.json   what was trained on and how (data, method, resolution policy)
RUN/model.*       the detector (safetensors + JSON)
RUN/metrics.json  written by `qarad eval`
"""
from __future__ import annotations

import json
from pathlib import Path

from . import __version__, checkpoint
from .data.io import write_json

CONFIG = "config.json"
MODEL = "model"


class RunError(ValueError):
    """A run folder that is missing, foreign, or holds a different run."""


def prepare(out: Path, config: dict, overwrite: bool = False) -> bool:
    """Create or re-enter `out` for `config`. Returns True when the same run is already complete."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a folder")
    existing = out / CONFIG
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        if not existing.is_file():
            raise RunError(f"{out}: folder is not empty and is not a qarad run; choose another --out")
        old = json.loads(existing.read_text())
        if {k: v for k, v in old.items() if k != "qarad_version"} != config:
            raise RunError(f"{out}: holds a different run ({existing}); choose another --out or pass --overwrite")
        return (out / f"{MODEL}.safetensors").is_file() and (out / f"{MODEL}.json").is_file()
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(existing, {"qarad_version": __version__, **config})
    except PermissionError as exc:
        raise RunError(f"{out}: cannot write here ({exc.strerror})") from None
    return False


def read_config(run: Path) -> dict:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise RunError(f"{run}: not a qarad run folder (no {CONFIG})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def load_detector(run: Path, device: str = "cpu"):
    from .detection.patchcore import PatchCore
    from .detection.segmenter import Segmenter

    cfg = read_config(run)
    loaders = {"patchcore": PatchCore.load, "qarad": Segmenter.load}
    method = cfg.get("method")
    if method not in loaders:
        raise RunError(f"{run}: unknown method {method!r} in {CONFIG}")
    stem = Path(run) / MODEL
    if not stem.with_suffix(".safetensors").is_file():
        raise RunError(f"{run}: no trained model yet (run `qarad train` first)")
    try:
        return loaders[method](stem).to(device)
    except checkpoint.CheckpointError as exc:
        raise RunError(str(exc)) from None
