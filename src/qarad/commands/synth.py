"""The synthesis verbs: parsed flags -> configs -> one qarad.api call -> what to print."""
from __future__ import annotations

from pathlib import Path

from .. import api, flags
from ..flags import folder_from_args, policy_from_args
from ..synthesis.sampler_config import SamplerConfig


def fit(args) -> int:
    config = api.fit_config(args.window, args.source_conditioned, max_zoom=args.max_zoom,
                            corpus_size=args.corpus_size, tokenizer_steps=args.tokenizer_steps,
                            prior_steps=args.prior_steps, refiner_steps=args.refiner_steps, qaw_steps=args.qaw_steps,
                            batch_size=args.batch_size, seed=args.seed)
    done = api.fit(args.data, args.category, args.out, config, policy_from_args(args), args.max_train_images,
                   args.overwrite, args.layout, folder_from_args(args), args.device)
    from ..distributed import launched_rank

    if launched_rank() == 0:  # under torchrun: one line, not one per process
        print(f"ARAS model: {done.model} (fit time {done.seconds / 60:.1f} min)")
    return 0


def score(args) -> int:
    from ..synthesis.jobs import MANIFEST

    s = api.score(args.synth_dir, args.model)
    print(f"scored {len(s)} samples: mean {s.mean():.3f}, min {s.min():.3f}, max {s.max():.3f}\n"
          f"manifest: {Path(args.synth_dir) / MANIFEST}\ngallery: {Path(args.synth_dir) / 'gallery.html'}")
    return 0


def synth(args) -> int:
    done = api.synth(args.model, args.images, args.prompts, args.out, args.n, args.seed, args.masks, args.auto_masks,
                     flags.from_args(SamplerConfig, args), _parse_shard(args.shard), args.workers, args.prompt_b,
                     args.mix)
    if done.workers > 1:
        print(f"{done.total} samples in {args.out} ({done.workers} workers)")
    else:
        print(f"{done.made} new samples ({done.total} in total) in {args.out}")
    if args.shard is None:
        print(f"gallery: {Path(args.out) / 'gallery.html'}")
    return 0


def merge(args) -> int:
    done = api.merge(args.out, args.folders)
    print(f"{done.total} samples in {done.folder}")
    if done.missing:
        print(f"{len(done.missing)} planned samples are in none of the folders yet (ids {done.missing[:10]}"
              f"{' ...' if len(done.missing) > 10 else ''}); merge again when their shards are done")
    print(f"gallery: {Path(done.folder) / 'gallery.html'}")
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
