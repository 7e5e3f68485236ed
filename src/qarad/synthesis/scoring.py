"""QAW scores for a synthesis output folder: each sample's region vs its prompt (Qian et al. 2508.03539).

The dual encoder (quality/) was trained on the fitting corpus, windows cut around each defect by
the model's window rule, so each synthetic sample is scored on the same kind of window, cut around
its mask by that rule at the run's working scale. A sample drawn with an interpolated prompt
(`qarad synth --prompt-b`) is scored against that interpolated embedding. The scores go into the
folder's manifest through jobs.py, its owner.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.io import read_image, read_mask
from ..data.resolution import ResolutionPolicy
from ..quality.dual_encoder import DualEncoder
from ..quality.fit import default_features_fn
from ..text import TextEncoder
from .aras import mix_prompts
from .jobs import MANIFEST, check_finished, rewrite_manifest, sample_path
from .window import WindowRule, crop_window


@torch.no_grad()
def score_sample(model: DualEncoder, features_fn, text: torch.Tensor, image: np.ndarray, mask: np.ndarray,
                 policy: ResolutionPolicy, rule: WindowRule) -> float:
    crop, region = crop_window(image, mask, policy, rule)
    return float(model.score(features_fn(crop[None]), region[None], text[None])[0])


def score_folder(synth_dir: Path, model: DualEncoder, policy: ResolutionPolicy, rule: WindowRule,
                 on_sample: Callable[[], None] | None = None) -> list[float]:
    """Write a score into every manifest line (atomically: the manifest is replaced at the end)."""
    synth_dir = Path(synth_dir)
    entries = check_finished(synth_dir)
    if not entries:
        raise ValueError(f"{synth_dir / MANIFEST}: no samples to score")
    features_fn = default_features_fn()
    encoder = TextEncoder()
    text = encoder.encode([e["prompt"] for e in entries])
    scores = []
    for entry, t in zip(entries, text):
        if entry.get("prompt_b") is not None:  # scored against the description it was drawn with
            t = mix_prompts(t, encoder.encode([entry["prompt_b"]])[0], entry["mix"])
        image = read_image(sample_path(synth_dir, entry, "image"))
        mask = read_mask(sample_path(synth_dir, entry, "mask"), image.shape[:2])
        entry["score"] = round(score_sample(model, features_fn, t, image, mask, policy, rule), 6)
        scores.append(entry["score"])
        if on_sample:
            on_sample()
    rewrite_manifest(synth_dir, entries)
    return scores
