"""The detection verbs: parsed flags -> configs -> one qarad.api call -> what to print."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import api, flags
from ..data.io import check_output_folder
from ..flags import folder_from_args, policy_from_args
from ..metrics import LABELS, METRICS
from ..validation_config import ValidationConfig
from .synth import real_defects, shot_config


def _option(name: str) -> str:
    return {"residual": "--no-residual", "fusion": "--no-fusion"}.get(name, f"--{name.replace('_', '-')}")


def detector_configs(args) -> tuple:
    """(detector config, api.QaradTraining) from the flags cli._add_detector_flags generates from
    detector_config's dataclasses, without the real defect shots themselves (`train` draws them: only
    after the flags are found good); --real-defects adds 'real' to the qarad detector's negatives. A
    flag of SegmenterConfig or QaradTraining (or --real-defects) is refused by --method patchcore: it
    would change nothing."""
    from ..detector_config import PatchCoreConfig, QaradTraining, SegmenterConfig

    head, learning = flags.given(SegmenterConfig, args), flags.given(QaradTraining, args)
    bank = flags.given(PatchCoreConfig, args)
    if args.method == "patchcore":
        refused = [*head, *learning, *(["real_defects"] if args.real_defects is not None else [])]
        if refused:
            one = len(refused) == 1
            raise ValueError(f"{', '.join(_option(k) for k in refused)}: {'not a setting' if one else 'no settings'} "
                             f"of PatchCore (PatchCore learns from normal images only); drop {'it' if one else 'them'}"
                             f" or pass --method qarad")
        return PatchCoreConfig(**bank), QaradTraining(synth=args.synth, batch_size=args.batch_size)
    negatives = tuple(head.get("negatives", SegmenterConfig.negatives))
    if args.real_defects is not None and "real" not in negatives:
        negatives += ("real",)  # --real-defects: the head learns from them
    shared = {k: v for k, v in bank.items() if k != "batch_size"}  # the head's batch is its own (views per step)
    detector = SegmenterConfig(**shared, **{**head, "negatives": negatives})
    return detector, QaradTraining(**learning, synth=args.synth, batch_size=args.batch_size)


def train(args) -> int:
    detector, training = detector_configs(args)
    training = replace(training, real_defects=real_defects(args))
    validation = flags.from_args(ValidationConfig, args)
    if args.auto:
        return _train_auto(args, detector, training, validation)
    if args.budget_min is not None:
        raise ValueError("--budget-min is the budget of --auto; pass --auto too")
    done = api.train(args.data, args.category, args.out, detector, training, policy_from_args(args),
                     args.max_train_images, args.device, args.overwrite, args.layout,
                     folder_from_args(args), validation)
    if done.already_trained:
        print(f"{args.out}: this run is already trained; nothing to do (pass --overwrite to retrain)")
    else:
        for line in done.notes:
            print(line)
        print(f"trained {done.method} on {done.n_images} normal images, threshold {done.threshold:.4f}")
    print(validation_line(done.validation) + f"\nrun folder: {args.out}")
    return 0


def validation_line(checked: dict | None) -> str:
    """What `train` says about the validation split (metrics_validation.json)."""
    if checked is None:
        return "validation: no split (--val-share 0, or too few normal images to hold some out)"
    m, split = checked["overall"], checked["split"]
    return (f"validation ({split['normal_held_out']} held-out normals, {split['aras_samples']} ARAS samples, "
            f"{split['perlin_patches']} Perlin patches, {split.get('procedural_defects', 0)} procedural defects; "
            f"chosen on {checked['source']}): image AUROC {m['image_auroc']:.4f}, pixel AUROC "
            f"{m['pixel_auroc']:.4f}, AUPRO {m['aupro']:.4f}\n{checked['chosen']['note']}")


def _train_auto(args, detector, training, validation) -> int:
    from ..auto import AutoConfig, train_auto

    done = train_auto(args.data, args.category, args.out, detector, training, policy_from_args(args),
                      AutoConfig(budget_min=args.budget_min), args.max_train_images, args.device, args.overwrite,
                      args.layout, folder_from_args(args), validation)
    print(done.summary)
    print(validation_line(done.trained.validation) + f"\nrun folder: {args.out} (candidates: {done.table})")
    return 0


def benchmark(args) -> int:
    from ..benchmarking import benchmark as run_benchmark

    detector, training = detector_configs(args)  # each category's shots are drawn by the benchmark
    auto = None
    if args.auto:
        from ..auto import AutoConfig

        auto = AutoConfig(budget_min=args.budget_min)
    elif args.budget_min is not None:
        raise ValueError("--budget-min is the budget of --auto; pass --auto too")
    done = run_benchmark(args.data, args.out, detector, training, policy_from_args(args), args.categories,
                         args.layout, folder_from_args(args), args.max_train_images,
                         args.allow_missing_masks, args.batch_size, args.device, args.overwrite,
                         args.real_defects, shot_config(args), flags.from_args(ValidationConfig, args),
                         auto)
    print(done.markdown)
    skipped = f" ({len(done.skipped)} finished earlier, skipped)" if done.skipped else ""
    print(f"{len(done.rows)} {'category' if len(done.rows) == 1 else 'categories'}{skipped}\n"
          f"tables: {', '.join(str(p) for p in done.tables)}")
    return 0


def format_table(overall: dict, per_type: dict) -> str:
    lines = [f"{'defect type':<16}{'n':>5} " + " ".join(f"{LABELS[c]:>11}" for c in METRICS)]
    for label, m in [*per_type.items(), ("ALL", overall)]:
        lines.append(f"{label:<16}{m['n_images']:>5} " + " ".join(f"{m[c]:>11.4f}" for c in METRICS))
    return "\n".join(lines)


def eval(args) -> int:  # noqa: A001 (the verb's name)
    result = api.evaluate(args.run, args.data, args.allow_missing_masks, args.batch_size, args.device,
                          pixel_metrics=args.pixel_metrics, layout=args.layout)
    excluded = result.get("excluded_real_defects")
    if excluded is not None:
        print(f"left out of the test split: the {excluded['count']} real defect images this run trained on "
              f"(listed in metrics.json, excluded_real_defects)")
    print(format_table(result["overall"], result["per_type"]))
    print(f"pixel metrics: {result['pixel_metrics']['mode']} over {result['pixel_metrics']['pixels']} pixels\n"
          f"metrics: {Path(args.run) / 'metrics.json'}\nreport: {Path(args.run) / 'report.html'}")
    return 0


def predict(args) -> int:
    done = api.predict(args.run, args.images, args.out, args.batch_size, args.device)
    flagged = sum(r["anomalous"] for r in done.records)
    print(f"{len(done.records)} images scored, {flagged} above the threshold {done.threshold:.4f}\n"
          f"scores: {done.folder / 'scores.csv'}")
    return 0


def export(args) -> int:
    out = api.export(args.run, args.out, args.overwrite)
    print(f"ONNX model: {out}\nsidecar (policy, threshold, inputs/outputs): {out}.json")
    return 0


def demo(args) -> int:
    from ..demo import run_demo

    report = run_demo(check_output_folder(args.out), seed=args.seed, quick=args.quick)
    print(f"report: {report}")
    return 0
