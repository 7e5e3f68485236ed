"""`qarad copy-paste`'s work: the copy-paste baseline written into a synth folder (jobs.py owns its
format), so that `qarad train --synth` learns from it as from ARAS samples. The cut, the transform
and the placement are defects/transplant.py's.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.io import discarded_on_failure, read_image, read_mask
from ..data.mvtec import expand_images
from ..defects.masks import foreground_mask
from ..defects.transplant import PasteConfig, cut, place, transform
from ..progress import bar
from . import jobs
from .generate import Synthesized, write_gallery

if TYPE_CHECKING:
    from ..data.real_defects import RealDefects


def paste_shots(real_defects: "RealDefects", images: list, out: str | Path, n: int = 10, seed: int = 0
                ) -> Synthesized:
    """api.copy_paste's work (its docstring says what each argument does)."""
    paths = [p.resolve() for p in expand_images(images)]  # a manifest's `source` means the same from anywhere
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    paste = PasteConfig()
    settings = json.loads(json.dumps({"method": "copy_paste", "images": [str(p) for p in paths], "n": n,
                                      "seed": seed, "real_defects": real_defects.to_dict(), "paste": asdict(paste)}))
    fresh = not Path(out).exists()
    jobs.prepare_output(out, settings)
    shots = real_defects.defects
    work = jobs.plan(paths, [d.prompt for d in shots], None, n, seed)  # sample i pastes shot i % len(shots)
    patches: dict[int, tuple] = {}

    def make(image, user_mask, job):
        k = job.id % len(shots)
        if k not in patches:  # cut once per shot
            source = read_image(shots[k].image)
            patches[k] = (cut(source, read_mask(shots[k].mask, source.shape[:2]), margin=3), source.shape[:2])
        patch, (sh, sw) = patches[k]
        rng = np.random.default_rng(job.seed)
        moved = transform(patch, rng, paste, (image.shape[0] / sh, image.shape[1] / sw))
        placed = place(image, moved, rng, "alpha", foreground_mask(image), paste)
        return jobs.Made(placed.image, placed.changed, shots[k].prompt,
                         {"real_type": shots[k].defect_type, "shot": shots[k].image})

    made_any = lambda: bool(jobs.read_manifest(Path(out) / jobs.MANIFEST))  # noqa: E731
    with jobs.writing(Path(out), None, "qarad copy-paste"), \
            discarded_on_failure(out, created=fresh, worth_keeping=made_any), bar(len(work), "copy-paste") as tick:
        made = jobs.run(work, make, out, "copy_paste", settings, on_done=tick)
        write_gallery(out)
    return Synthesized(Path(out), len(work), made, 1)
