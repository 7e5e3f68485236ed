"""QARAD: offline industrial visual inspection.

Language-conditioned local auto-regressive anomaly synthesis (ARAS), quality-aware weighting
(QAW) and detection, after Qian et al., arXiv 2508.03539 (AAAI 2026).

The verbs of the `qarad` command are functions here (qarad.fit, synth, score, train, evaluate,
predict, export; see qarad.api; qarad.benchmark, see qarad.benchmarking) and the detectors objects (qarad.PatchCore, qarad.Segmenter).
They are imported on first use, so `import qarad` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    **dict.fromkeys(("fit", "synth", "score", "train", "evaluate", "predict", "export", "merge", "fit_config",
                     "finetune_config", "copy_paste", "QaradTraining"), "qarad.api"),
    "select_real_defects": "qarad.data.real_defects", "RealDefects": "qarad.data.real_defects",
    "PatchCore": "qarad.detection.patchcore", "PatchCoreConfig": "qarad.detection.patchcore",
    "Segmenter": "qarad.detection.segmenter", "SegmenterConfig": "qarad.detection.segmenter",
    "ResolutionPolicy": "qarad.data.resolution",
    "FitConfig": "qarad.synthesis.model",
    "SamplerConfig": "qarad.synthesis.sampler_config",
    "load_detector": "qarad.runs",
    "benchmark": "qarad.benchmarking",
    "scan": "qarad.data.layouts", "list_categories": "qarad.data.layouts", "FolderSplit": "qarad.data.layouts",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name == "eval":  # the verb's name; qarad.evaluate is the same function
        name = "evaluate"
    if name not in _LAZY:
        raise AttributeError(f"module 'qarad' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "eval"])
