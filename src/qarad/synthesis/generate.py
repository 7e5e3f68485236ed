"""`qarad synth`'s work: ARAS samples written into a synth folder (jobs.py owns its format).

`generate` checks the request, writes the folder's settings, and draws every planned sample (or a
shard's share of them) through `sample_maker`, the one per-sample path: the user's mask or a
proposed one (defects/proposal.py), the ARAS draw, and the manifest's extra fields. With workers > 1
the job is split over single-threaded shard processes (workers.py) and merged.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..data.io import discarded_on_failure
from ..data.mvtec import expand_images
from ..defects.prompts import normalise_prompt
from ..defects.proposal import RealMasks, learned_foreground, propose_defect_mask
from ..progress import bar
from . import jobs
from .model import read_config
from .sampler_config import SamplerConfig, check_mix
from .workers import PARENT_PID, run_shards

if TYPE_CHECKING:
    from ..data.real_defects import RealDefects
    from .pipeline import ARAS

@dataclass(frozen=True)
class Synthesized:
    folder: Path
    total: int  # samples the folder (or this shard) holds when done
    made: int  # of which this call made
    workers: int


def write_gallery(synth_dir: str | Path) -> Path:
    """OUT/gallery.html of a synth folder: its samples, prompts and QAW scores once scored."""
    from ..report.pages import write_gallery as write

    return write(Path(synth_dir))


def generate(model: str | Path, images: list, prompts: list[str], out: str | Path, n: int = 10, seed: int = 0,
             masks: list | None = None, auto_masks: bool = False, sampler: SamplerConfig = SamplerConfig(),
             shard: tuple[int, int] | None = None, workers: int = 1, prompt_b: str | None = None,
             mix: float | None = None) -> Synthesized:
    """api.synth's work (its docstring says what each argument does)."""
    from .pipeline import ARAS

    real = read_config(model).real_defects

    def prompt_of(text: str) -> str:  # checked, and a real type's name resolved to its fitted prompt
        text = normalise_prompt(text)
        return real.resolve(text) if real is not None else text

    normalised = [prompt_of(p) for p in prompts]
    check_mix(prompt_b, mix)
    interpolation = {} if prompt_b is None else {"prompt_b": prompt_of(prompt_b), "mix": float(mix)}
    # absolute, so that a manifest's `source` names the same image from any working directory
    paths = [p.resolve() for p in expand_images(images)]
    mask_paths = [p.resolve() for p in expand_images(masks)] if masks else None
    if mask_paths is None and not auto_masks:
        raise ValueError("give --masks (one per image) or --auto-masks to let qarad propose defect regions")
    settings = {"model": str(Path(model).resolve()), "images": [str(p) for p in paths],
                "masks": [str(p) for p in mask_paths] if mask_paths else None, "prompts": normalised, "n": n,
                "seed": seed, "sampler": json.loads(json.dumps(sampler.__dict__)), "method": "aras",
                **interpolation}  # only when used: folders made before it existed still resume
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    aras = ARAS.load(model)
    fresh = not Path(out).exists()
    part = learned_foreground(paths) if mask_paths is None else None  # where proposals may go
    request = {"model": str(model), "images": [str(p) for p in images], "prompts": list(prompts), "out": str(out),
               "n": n, "seed": seed, "masks": [str(p) for p in masks] if masks else None, "auto_masks": auto_masks,
               "sampler": json.loads(json.dumps(sampler.__dict__)), "prompt_b": prompt_b, "mix": mix}
    with jobs.writing(Path(out), shard, "qarad synth"):
        jobs.prepare_output(out, settings)
        work = jobs.plan(paths, normalised, mask_paths, n, seed)
        total = len(work) if shard is None else len([j for j in work if j.id % shard[1] == shard[0]])
        if shard is None and workers > 1:
            made = run_shards(request, Path(out), workers, total, fresh)
            write_gallery(out)
            return Synthesized(Path(out), total, made, workers)
        make = sample_maker(aras, real, sampler, interpolation, part)
        made_any = lambda: bool(jobs.read_manifest(Path(out) / jobs.manifest_name(shard)))  # noqa: E731
        with discarded_on_failure(out, created=fresh, worth_keeping=made_any), bar(total, "synth") as tick:
            made = jobs.run(work, make, out, "aras", settings, shard, on_done=tick)
        if shard is None:  # a shard's samples are shown once the workers' manifests are merged
            write_gallery(out)
        return Synthesized(Path(out), total, made, 1)


def sample_maker(aras: "ARAS", real: "RealDefects | None", sampler: SamplerConfig, interpolation: dict,
                 part=None) -> Callable[[np.ndarray, np.ndarray | None, jobs.Job], jobs.Made]:
    """The per-sample path of every ARAS synth job (jobs.run's `make`): the job's mask, or one
    proposed from its seed on the part's foreground (`part`, a fitted data/foreground.Foreground;
    None: each image's own bright/dark split), the ARAS draw with its prompt and seed, and the
    manifest's extra fields.
    A worker whose parent was killed stops here, before its next sample."""
    templates = RealMasks(real)
    parent = os.environ.get(PARENT_PID)

    def make(image, user_mask, job):
        if parent is not None and str(os.getppid()) != parent:  # the parent was killed: stop writing
            raise SystemExit(f"synth worker: parent process {parent} is gone; stopping")
        mask = user_mask
        if mask is None:
            mask = propose_defect_mask(np.random.default_rng(job.seed), image, job.prompt, templates,
                                       None if part is None else part.mask(image))
        res = aras.synthesize(image, mask, job.prompt, job.seed, sampler, **interpolation)
        extra = {"steps": res.steps, "window": list(res.window), **interpolation}
        if real is not None and real.type_of(job.prompt):
            extra["real_type"] = real.type_of(job.prompt)
        return jobs.Made(res.image, res.mask, job.prompt, extra)

    return make
