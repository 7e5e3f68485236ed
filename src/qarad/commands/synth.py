"""The synthesis verbs: parsed flags -> configs -> one qarad.api call -> what to print."""
from __future__ import annotations

from pathlib import Path

from .. import api, flags
from ..fewshot_config import ShotConfig
from ..flags import folder_from_args, policy_from_args
from ..synthesis.sampler_config import SamplerConfig, check_mix


# `qarad fit` flags that describe the model's networks and corpus (default None: FitConfig's);
# a continued fit (--init) takes them from its model
MODEL_FLAGS = ("window", "max_zoom", "corpus_size", "tokenizer_steps", "refiner_steps", "qaw_steps",
               "source_conditioned", "tokenizer_ema")


def shot_config(args) -> ShotConfig:
    """The ShotConfig of --shots and --shot-seed; refused without --real-defects (they would do nothing)."""
    given = flags.given(ShotConfig, args)
    if given and args.real_defects is None:
        named = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise ValueError(f"{named}: {'it chooses' if len(given) == 1 else 'they choose'} the shots of --real-defects; "
                         f"give --real-defects too")
    return ShotConfig(**given)


def real_defects(args):
    """The RealDefects that --real-defects, --shots, --shot-seed and --defect-prompt describe, or None."""
    from ..data.real_defects import parse_descriptions, select_real_defects

    descriptions = parse_descriptions(getattr(args, "defect_prompt", None))
    shots = shot_config(args)
    if args.real_defects is None:
        if descriptions:
            raise ValueError("--defect-prompt describes the types of --real-defects; give --real-defects too")
        return None
    return select_real_defects(args.real_defects, shots.shots, shots.shot_seed, descriptions)


def fit(args) -> int:
    from ..synthesis.model import FitConfig

    real = real_defects(args)
    given = {k: getattr(args, k) for k in ("prior_steps", "real_samples_per_shot", "real_share")
             if getattr(args, k) is not None}
    policy = policy_from_args(args)
    if args.init is not None:
        fixed = [f"--{k.replace('_', '-')}" for k in MODEL_FLAGS if getattr(args, k) is not None]
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: a fit continuing --init {args.init} keeps the model's")
        if real is None:
            raise ValueError("--init continues a model with real defect shots: give --real-defects")
        config = api.finetune_config(args.init, **{"prior_steps": api.FINETUNE_PRIOR_STEPS, **given},
                                     batch_size=args.batch_size, seed=args.seed)
        policy = None if policy == type(policy)() else policy  # not given: the model's
    else:
        model = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
        config = api.fit_config(model.pop("window", FitConfig.window), bool(model.pop("source_conditioned", False)),
                                **model, **given, batch_size=args.batch_size, seed=args.seed)
    done = api.fit(args.data, args.category, args.out, config, policy, args.max_train_images,
                   args.overwrite, args.layout, folder_from_args(args), args.device, real_defects=real, init=args.init)
    from ..distributed import launched_rank

    if launched_rank() == 0:  # under torchrun: one line, not one per process
        if real is not None:
            print(f"real defect shots: {len(real.defects)} images of {', '.join(real.types)}; "
                  f"`qarad synth --prompts {real.types[0]}` draws that type")
        print(f"ARAS model: {done.model} (fit time {done.seconds / 60:.1f} min)")
    return 0


def copy_paste(args) -> int:
    real = real_defects(args)
    done = api.copy_paste(real, args.images, args.out, args.n, args.seed)
    print(f"{done.made} new samples ({done.total} in total) in {args.out}, pasted from {len(real.defects)} shots of "
          f"{', '.join(real.types)}\ngallery: {Path(args.out) / 'gallery.html'}\n"
          f"train on them: qarad train --method qarad --synth {args.out} --weighting none ...")
    return 0


def score(args) -> int:
    from ..synthesis.jobs import MANIFEST

    s = api.score(args.synth_dir, args.model)
    print(f"scored {len(s)} samples: mean {s.mean():.3f}, min {s.min():.3f}, max {s.max():.3f}\n"
          f"manifest: {Path(args.synth_dir) / MANIFEST}\ngallery: {Path(args.synth_dir) / 'gallery.html'}")
    return 0


def synth(args) -> int:
    check_mix(args.prompt_b, args.mix)  # before the model is read (api.synth checks it too)
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
