"""The QARAD detector's training sequence: the one `qarad train --method qarad` runs and the
benchmarks call (benchmarks/ablation.py, fewshot.py).

    training_views: frozen features of the normal views and of each pool of defect views
                    (ARAS samples QAW-weighted, Perlin patches, real shots; views.py)
    Segmenter.fit:  the memory bank and the honest search, then the head and its calibration
                    (head_training.py), all on those cached views

`train_qarad` chains the two with progress bars. The views can be cached once and reused across
settings and seeds, and one fitted bank shared by several heads (`fit(..., bank=)`; the ablation does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.resolution import ResolutionPolicy
from ..detector_config import QaradTraining
from ..progress import bar
from ..quality.weighting import WeightingConfig
from .segmenter import Segmenter, SegmenterConfig
from .views import (DIHEDRAL, ViewSet, describe, normal_features, perlin_features, real_features, sample_weights,
                    synthetic_features)


@dataclass
class TrainingViews:
    normal: ViewSet
    pools: dict[str, ViewSet]  # defect views by kind: "synthetic", "perlin", "real"
    notes: list[str]  # what the pools hold, in words (the command prints them)


def training_views(model: Segmenter, training: QaradTraining, paths: list[Path],
                   negatives: tuple[str, ...] | None = None, held_out: list[Path] = ()) -> TrainingViews:
    """Cached views of the normal images `paths` and of every pool `negatives` (default: the
    model's) names, with progress bars; the synthetic pool carries its QAW weights and leaves out
    the samples drawn on `held_out` (the validation split's normals)."""
    from ..synthesis.jobs import MANIFEST, read_manifest

    config, batch = model.config, training.batch_size
    negatives = config.negatives if negatives is None else negatives
    notes = []
    with bar(len(paths), "features: normal images") as tick:
        normal = normal_features(model, paths, batch, training.max_normal_views, config.seed, on_image=tick)
    pools = {}
    if "synthetic" in negatives:
        with bar(len(read_manifest(Path(training.synth) / MANIFEST)), "features: synthetic samples") as tick:
            pools["synthetic"] = synthetic_features(model, Path(training.synth), paths, batch, on_image=tick,
                                                    held_out=held_out)
        pools["synthetic"].weights = sample_weights(pools["synthetic"].scores,
                                                    WeightingConfig(calibration=training.weighting))
        notes.append(f"QAW weights ({training.weighting}): {describe(pools['synthetic'])}")
    if "perlin" in negatives:
        with bar(training.perlin_samples, "features: Perlin texture patches") as tick:
            pools["perlin"] = perlin_features(model, paths, training.perlin_samples, config.seed, batch, on_image=tick)
    if "real" in negatives:
        real = training.real_defects
        with bar(len(real.defects) * DIHEDRAL, "features: real defect shots (8 turns each)") as tick:
            pools["real"] = real_features(model, real, batch, training.real_weight, on_image=tick)
        notes.append(f"real defect shots: {len(real.defects)} images of {len(real.types)} types "
                     f"({', '.join(real.types)}), {len(pools['real'])} views, weight {training.real_weight:g}")
    return TrainingViews(normal, pools, notes)


@dataclass(frozen=True)
class TrainedQarad:
    model: Segmenter  # fitted
    notes: list[str]  # what it learned from, in words: QAW weights, real shots, the bank


def train_qarad(config: SegmenterConfig, training: QaradTraining, policy: ResolutionPolicy, paths: list[Path],
                device: str = "cpu", held_out: list[Path] = ()) -> TrainedQarad:
    """The qarad detector trained on the normal images `paths` and the pools `training` names (no
    synthetic sample drawn on `held_out`, the validation split's normals)."""
    model = Segmenter(config, policy).to(device)
    views = training_views(model, training, paths, held_out=held_out)
    notes = list(views.notes)
    if config.uses_bank:
        notes.append("memory bank from the normal views, then every cached cell's nearest row (own image skipped)")
    with bar(config.steps, "train detector head", unit="step") as tick:
        model.fit(views.normal, views.pools, on_step=lambda _: tick())
    return TrainedQarad(model, notes)
