"""The synthesis verbs: `qarad fit` (corpus -> tokenizer -> prior -> refiner) and `qarad synth`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import checkpoint, flags
from ..data.io import check_output_folder, discarded_on_failure
from ..data.resolution import ResolutionPolicy
from ..progress import bar, loss_bar


def _policy(args) -> ResolutionPolicy:
    return ResolutionPolicy(mode=args.policy, size=args.size, scale=args.scale, overlap=args.overlap)


def fit(args) -> int:
    from ..synthesis import fit as F
    from ..synthesis.model import FitConfig, FitData, ModelConfig
    from ..synthesis.prior import PriorConfig
    from ..synthesis.tokenizer import TokenizerConfig

    out = check_output_folder(args.out)  # a file in the way or no permission: refuse before any work
    policy = _policy(args)
    tok = TokenizerConfig(source_conditioned=args.source_conditioned)
    cfg = FitConfig(window=args.window, max_zoom=args.max_zoom, corpus_size=args.corpus_size,
                    tokenizer_steps=args.tokenizer_steps, prior_steps=args.prior_steps,
                    refiner_steps=args.refiner_steps, qaw_steps=args.qaw_steps,
                    batch_size=args.batch_size, seed=args.seed,
                    tokenizer=tok, prior=PriorConfig(grid=args.window // 8, vocab_size=tok.codebook_size))
    data = FitData(root=str(Path(args.data).resolve()),
                   category=args.category[0] if len(args.category) == 1 else args.category,
                   max_train_images=args.max_train_images)
    images = F.normal_images(args.data, args.category, args.max_train_images, args.seed)
    seconds = F.fit_model(out, ModelConfig(cfg, policy, data), images, overwrite=args.overwrite,
                          progress=_FitBars())
    print(f"ARAS model: {out} (fit time {seconds / 60:.1f} min)")
    return 0


class _FitBars:
    """`qarad fit`'s progress (a synthesis.fit.FitProgress): a bar over the rendered corpus, then one
    per training stage with its running loss."""

    def corpus(self, label: str, total: int):
        return bar(total, label, unit="defect")

    def steps(self, label: str, total: int, start: int):
        return loss_bar(total, label, start)


def score(args) -> int:
    from ..quality.scoring import score_folder
    from ..synthesis import jobs
    from ..synthesis import model as M

    settings_path = Path(args.synth_dir) / jobs.SETTINGS
    if not settings_path.is_file():
        raise ValueError(f"{args.synth_dir}: not a qarad synth output (no {jobs.SETTINGS})")
    check_output_folder(args.synth_dir)  # the scores go into its manifest
    model_dir = args.model or checkpoint.load_config(settings_path).get("model")
    if not model_dir:
        raise ValueError(f"{settings_path}: names no ARAS model; pass --model")
    model = M.read_config(model_dir)
    scorer = M.load_dual_encoder(model_dir)
    n = len(jobs.read_manifest(Path(args.synth_dir) / jobs.MANIFEST))
    with bar(n, "score (QAW)") as tick:
        scores = score_folder(args.synth_dir, scorer, model.policy, model.fit.window_rule, on_sample=tick)
    s = np.asarray(scores)
    print(f"scored {len(s)} samples: mean {s.mean():.3f}, min {s.min():.3f}, max {s.max():.3f}\n"
          f"manifest: {Path(args.synth_dir) / jobs.MANIFEST}")
    return 0


def _expand_images(items: list[Path]) -> list[Path]:
    from .detect import _expand

    return _expand(items)


def synth(args) -> int:
    from ..defects.masks import FAMILY_MASK_KIND, foreground_mask, propose_mask
    from ..defects.prompts import family_of, normalise_prompt
    from ..synthesis import jobs
    from ..synthesis.pipeline import ARAS
    from ..synthesis.sampler_config import SamplerConfig

    prompts = [normalise_prompt(p) for p in args.prompts]
    images = _expand_images(args.images)
    masks = _expand_images(args.masks) if args.masks else None
    if masks is None and not args.auto_masks:
        raise ValueError("give --masks (one per image) or --auto-masks to let qarad propose defect regions")
    sampler = flags.from_args(SamplerConfig, args)
    settings = {"model": str(Path(args.model).resolve()), "images": [str(p) for p in images],
                "masks": [str(p) for p in masks] if masks else None, "prompts": prompts, "n": args.n,
                "seed": args.seed, "sampler": json.loads(json.dumps(sampler.__dict__)), "method": "aras"}
    shard = _parse_shard(args.shard)
    model = ARAS.load(args.model)
    fresh = not Path(args.out).exists()
    jobs.prepare_output(args.out, settings)
    work = jobs.plan(images, prompts, masks, args.n, args.seed)

    def make(image, user_mask, job):
        mask = user_mask
        if mask is None:
            rng = np.random.default_rng(job.seed)
            kind = FAMILY_MASK_KIND.get(family_of(job.prompt) or "", None)
            mask = propose_mask(rng, image.shape[:2], foreground_mask(image), kind=kind)
        res = model.synthesize(image, mask, job.prompt, job.seed, sampler)
        return jobs.Made(res.image, res.mask, job.prompt, {"steps": res.steps, "window": list(res.window)})

    total = len(work) if shard is None else len([j for j in work if j.id % shard[1] == shard[0]])
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if shard is None and args.workers > 1:
        return _synth_in_workers(args, sampler, total, fresh)
    made_any = lambda: bool(jobs.read_manifest(Path(args.out) / jobs.manifest_name(shard)))  # noqa: E731
    with discarded_on_failure(args.out, created=fresh, worth_keeping=made_any), bar(total, "synth") as tick:
        made = jobs.run(work, make, args.out, "aras", settings, shard, on_done=tick)
    print(f"{made} new samples ({total} in total) in {args.out}")
    return 0


def _worker_argv(args, sampler, shard: str) -> list[str]:
    """One shard's `qarad synth`: the sampler flags come from the config itself, so none is dropped."""
    argv = ["synth", str(args.model), "--images", *map(str, args.images), "--prompts", *args.prompts,
            "--n", str(args.n), "--out", str(args.out), "--seed", str(args.seed), *flags.to_argv(sampler),
            "--shard", shard]
    return argv + (["--masks", *map(str, args.masks)] if args.masks else ["--auto-masks"])


def _synth_in_workers(args, sampler, total: int, fresh: bool) -> int:
    """Run `--workers` single-threaded shard processes and merge their manifests.

    Decoding is a long chain of tiny matrix products that a second thread barely speeds up, so the
    cores are better spent on separate samples (BENCHMARKS.md, synthesis speed, has the numbers).
    Each shard resumes on its own; the merged manifest is in id order whatever the split.
    """
    import os
    import subprocess
    import sys
    import tempfile
    import time

    from ..synthesis import jobs

    n, out = args.workers, Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "QARAD_PROGRESS": "0"}
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(n)]
    procs = [subprocess.Popen([sys.executable, "-m", "qarad.cli", *_worker_argv(args, sampler, f"{i}/{n}")], env=env,
                              stdout=logs[i], stderr=subprocess.STDOUT) for i in range(n)]
    done = lambda: sum(len(jobs.read_manifest(out / jobs.manifest_name((i, n)))) for i in range(n))  # noqa: E731
    with bar(total, f"synth ({n} workers)") as tick:
        seen = 0
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            now = done()
            for _ in range(now - seen):
                tick()
            seen = now
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        logs[failed[0]].seek(0)
        message = (logs[failed[0]].read().strip().splitlines() or ["(no output)"])[-1]
        with discarded_on_failure(out, created=fresh, worth_keeping=lambda: done() > 0):
            raise ValueError(f"synth worker {failed[0]}/{n} failed: {message}")
    jobs.merge_manifests(out)
    print(f"{total} samples in {out} ({n} workers)")
    return 0


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n
