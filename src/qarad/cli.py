"""The `qarad` command: thin argument parsing over the library (see `qarad VERB --help`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .detector_config import PatchCoreConfig, QaradTraining, SegmenterConfig
from .fewshot_config import ShotConfig
from .flags import (add_dataset_flags, add_flags, add_policy_flags, at_least_one, device, finite_float, fraction,
                    non_negative_int, positive_float, positive_int)
from .synthesis.sampler_config import SamplerConfig
from .validation_config import ValidationConfig

EXAMPLES = {
    "train": "qarad train --method patchcore --data ../shared/data/mpdd --category metal_plate --out runs/mpdd",
    "benchmark": "qarad benchmark --data ../shared/data/mpdd --method patchcore --out runs/bench-mpdd",
    "eval": "qarad eval runs/mpdd",
    "predict": "qarad predict runs/mpdd new_images/ --out runs/mpdd/predictions",
    "export": "qarad export runs/mpdd --format onnx --out mpdd.onnx",
    "demo": "qarad demo --out runs/demo",
    "score": "qarad score synth/",
    "merge": "qarad merge synth-0 synth-1 --out synth/",
    "fit": "qarad fit --data ../shared/data/magnetic_tile --category magnetic_tile --out models/tile",
    "synth": 'qarad synth models/tile --images good/ --prompts "a thin dark crack" --auto-masks --n 20 --out synth/',
    "copy-paste": "qarad copy-paste --real-defects ../shared/data/magnetic_tile/magnetic_tile --shots 5 "
                  "--images ../shared/data/magnetic_tile/magnetic_tile/train/good --n 200 --out synth/paste",
}
REAL_DEFECTS_HELP = ("real defect images with masks: an MVTec AD category folder ROOT/CATEGORY (test/<type> and "
                     "ground_truth/<type>; every type but good), or folders of one type's images (the folder's "
                     "name is the type) with their masks in FOLDER/masks (<stem>.png or <stem>_mask.png)")


class _Parser(argparse.ArgumentParser):
    """A refused flag is one line on stderr and exit 2 (argparse would print the whole usage first,
    which for `train` is twenty lines that hide the one that matters)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sub(subs, name: str, help_text: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help_text, description=f"{help_text}\n\nexample:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_real_defect_flags(p: argparse.ArgumentParser, use: str, required: bool = False, describe: bool = True,
                           per_category: bool = False) -> argparse._ArgumentGroup:
    """--real-defects, --shots, --shot-seed (ShotConfig) and --defect-prompt (read by commands.synth.real_defects).
    `per_category` (benchmark): --real-defects is one root holding each category's folder, ROOT/CATEGORY."""
    g = p.add_argument_group("real defect shots (few-shot)")
    if per_category:
        g.add_argument("--real-defects", type=Path, metavar="ROOT",
                       help="a root of real-defect folders, one per category: ROOT/CATEGORY, each what `qarad "
                            "train --real-defects` takes (an MVTec AD category folder, so ROOT may be --data; or a "
                            f"folder of one type's images with FOLDER/masks); {use}")
    else:
        g.add_argument("--real-defects", type=Path, nargs="+", required=required, metavar="FOLDER",
                       help=f"{REAL_DEFECTS_HELP}; {use}")
    add_flags(g, ShotConfig, unset=True)  # given without --real-defects: refused (commands.synth.shot_config)
    if describe:
        g.add_argument("--defect-prompt", nargs="+", metavar="TYPE=TEXT",
                       help='a type\'s prompt in your words instead of its name, e.g. blowhole="a small round dark '
                            'pore" (default: the name, underscores as spaces)')
    return g


def _add_detector_flags(p: argparse.ArgumentParser, synth_help: str | None = None) -> None:
    """The detector's settings, shared by `train` and `benchmark` (commands.detect.detector_configs reads them)."""
    p.add_argument("--method", choices=["patchcore", "qarad"], default="patchcore",
                   help="patchcore: memory bank, no synthesis; qarad: head trained on normal + synthetic defects")
    add_policy_flags(p)
    add_flags(p.add_argument_group("memory bank (both methods; detector_config.PatchCoreConfig)"), PatchCoreConfig)
    p.add_argument("--max-train-images", type=positive_int, default=None,
                   help="fit on a reproducible random subset of this many normal images")
    # defaults None (unset): the qarad method fills in its configs' defaults; patchcore refuses them
    g = p.add_argument_group("qarad method (--method patchcore refuses these; detector_config.SegmenterConfig, "
                             "QaradTraining)")
    g.add_argument("--synth", type=Path,
                   help=synth_help or "synthetic defects folder (qarad synth, then qarad score)")
    add_flags(g, SegmenterConfig, unset=True)
    add_flags(g, QaradTraining, unset=True)
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="retrain a run folder that holds a different run: its model and evaluation outputs "
                        "(metrics.json, scores.csv, report.html, model.onnx) are replaced; other files stay, and a "
                        "folder that is not a qarad run is always refused")
    g = p.add_argument_group("validation split and --auto (detection/validation.py, auto.py)")
    add_flags(g, ValidationConfig)
    g.add_argument("--auto", action="store_true",
                   help="try a small grid of settings (working size, policy, backbone, coreset ratio, method) "
                        "within --budget-min and keep the best by the validation split (no test label is read); "
                        "the candidates' table is written to OUT/candidates.json and the report")
    g.add_argument("--budget-min", type=positive_float, default=None,
                   help="--auto: minutes for the whole grid (default: 3x the first candidate's, a plain train)")


def main_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="qarad", description="Offline industrial anomaly synthesis and detection.")
    ap.add_argument("--version", action="version", version=f"qarad {__version__}")
    subs = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = _sub(subs, "train", "Train a detector on the normal images of one category (MVTec AD, VisA, BTAD or folders).")
    p.add_argument("--data", type=Path, required=True, help="dataset root (holding CATEGORY/train/good for MVTec AD)")
    p.add_argument("--category", required=True, help="category (for --layout folder: the name of the dataset)")
    p.add_argument("--out", type=Path, required=True, help="run folder to create")
    add_dataset_flags(p)
    _add_detector_flags(p)
    _add_real_defect_flags(p, "the qarad detector learns from them beside its other defects (8 flips and turns "
                              "of each shot's views), and `qarad eval` leaves them out of the test split")

    p = _sub(subs, "benchmark", "Train and evaluate a method on every category of a dataset root (or the ones "
                                "listed): one run per category, resumable, and a table (Markdown, CSV, JSON).")
    p.add_argument("--data", type=Path, required=True, help="dataset root")
    p.add_argument("--categories", nargs="+", help="categories to run (default: every category of the root)")
    p.add_argument("--out", type=Path, required=True,
                   help="benchmark folder: OUT/runs/CATEGORY run folders, OUT/benchmark.{md,csv,json}; a rerun "
                        "skips the finished categories")
    add_dataset_flags(p)
    p.add_argument("--allow-missing-masks", action="store_true",
                   help="use defect images without masks for image metrics only")
    _add_detector_flags(p, synth_help="a folder of synthetic-defect folders, one per category: SYNTH/CATEGORY")
    _add_real_defect_flags(p, "each category's qarad run learns from its own shots, and its evaluation leaves "
                              "them out of the test split (the table counts them)", describe=False, per_category=True)

    p = _sub(subs, "eval", "Evaluate a trained run on its category's test split; writes RUN/metrics.json and "
                           "RUN/report.html.")
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, help="override the dataset root stored in the run")
    add_dataset_flags(p, run_default=True)
    p.add_argument("--allow-missing-masks", action="store_true",
                   help="use defect images without masks for image metrics only")
    p.add_argument("--pixel-metrics", choices=["auto", "exact", "streaming"], default="auto",
                   help="exact keeps every graded pixel; streaming keeps score histograms in bounded memory "
                        "(within 0.001 of exact); auto (default) streams above 2^24 graded pixels")
    p.add_argument("--batch-size", type=positive_int, default=8, help="views per backbone batch (default 8)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")

    p = _sub(subs, "predict", "Score new images: heat-map overlays and a CSV of scores and decisions.")
    p.add_argument("run", type=Path)
    p.add_argument("images", type=Path, nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", type=Path, help="output folder (default RUN/predictions)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="views per backbone batch (default 8)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")

    p = _sub(subs, "export", "Export a trained run's detector as ONNX (per-view anomaly map and score) plus a JSON "
                             "sidecar (policy, threshold, what to do outside the graph).")
    p.add_argument("run", type=Path)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="model format (default onnx)")
    p.add_argument("--out", type=Path, help="output .onnx file (default RUN/model.onnx); the sidecar is OUT.json")
    p.add_argument("--overwrite", action="store_true", help="replace a different file already at --out")

    p = _sub(subs, "fit", "Fit ARAS (corpus, VQ tokenizer, text-conditioned prior) on a category's normal images.")
    p.add_argument("--data", type=Path, required=True, help="dataset root (holding CATEGORY/train/good for MVTec AD)")
    p.add_argument("--category", required=True, nargs="+",
                   help="one category, or several whose normal images are pooled into one model")
    p.add_argument("--out", type=Path, required=True, help="model folder (resumes if it holds the same fit)")
    add_dataset_flags(p)
    add_policy_flags(p)
    # defaults None: FitConfig's (or, with --init, the model's, which they may not change)
    p.add_argument("--window", type=positive_int, default=None,
                   help="working px a side of the local window the prior sees (multiple of 8; default 64)")
    p.add_argument("--max-zoom", type=at_least_one, default=None,
                   help="window px per working px at most: small masks are zoomed in until they span half "
                        "the window (default 4; 1 = never zoom in)")
    p.add_argument("--corpus-size", type=positive_int, default=None,
                   help="procedural defects rendered for fitting (3000)")
    p.add_argument("--tokenizer-steps", type=non_negative_int, default=None, help="default 4000")
    p.add_argument("--prior-steps", type=non_negative_int, default=None,
                   help="default 2500; with --init: the steps the prior trains on from the model's (default 500)")
    p.add_argument("--refiner-steps", type=non_negative_int, default=None,
                   help="steps of the text-conditioned detail decoder: more realistic samples, weaker "
                        "detector training on the demo (e.g. 2000; default 0 = none)")
    p.add_argument("--source-conditioned", action="store_true", default=None,
                   help="tokenizer that encodes a defect as a change of the normal image and decodes it on "
                        "top of the real pixels: much more realistic samples after a full fit, but it needs "
                        "one (near-invisible defects after a short fit such as the demo's)")
    p.add_argument("--tokenizer-ema", type=fraction, default=None, metavar="DECAY",
                   help="train the tokenizer's codebook as exponential moving averages of the encoder outputs "
                        "assigned to each code (VQ-VAE's EMA update), with this decay (e.g. 0.99), instead of "
                        "by gradient; opt-in, not yet measured against the default (default 0 = off)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="default 8")
    p.add_argument("--max-train-images", type=positive_int, default=None,
                   help="fit on a reproducible random subset of this many normal images")
    p.add_argument("--qaw-steps", type=non_negative_int, default=None,
                   help="dual-encoder (QAW scorer) training steps (1500)")
    g = _add_real_defect_flags(p, "they join the fitting corpus with their type names (or --defect-prompt) as "
                                  "prompts, and `qarad synth --prompts TYPE` draws that type")
    g.add_argument("--init", type=Path, metavar="MODEL",
                   help="continue the fitted model MODEL instead of fitting afresh: its tokenizer, corpus, "
                        "refiner and QAW scorer are kept, the real shots are added, and its prior trains on "
                        "for --prior-steps (default 500): minutes instead of a full fit")
    g.add_argument("--real-samples-per-shot", type=positive_int, default=None,
                   help="corpus samples made of each shot: itself and re-placed, flipped, turned, rescaled "
                        "copies on other normal images (default 40)")
    g.add_argument("--real-share", type=fraction, default=None,
                   help="share of every tokenizer and prior batch drawn from the real shots' samples (default 0.35)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device, default="cpu",
                   help="where every stage trains (default cpu; auto = cuda when present). Under torchrun "
                        "each process takes its own GPU and a slice of every batch (README, Scale out)")
    p.add_argument("--overwrite", action="store_true", help="refit over a model with other settings: the files the earlier fit wrote are deleted "
                        "(aras.json, the weights, state/); anything else in the folder stays")

    p = _sub(subs, "synth", "Write text-described defects into images inside given or proposed masks.")
    p.add_argument("model", type=Path, help="ARAS model folder from `qarad fit`")
    p.add_argument("--images", type=Path, nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--prompts", nargs="+", required=True, help='defect descriptions, e.g. "a thin dark scratch"')
    p.add_argument("--prompt-b", metavar="TEXT",
                   help="a second description: each sample's prompt embedding is interpolated towards it by --mix")
    p.add_argument("--mix", type=float, metavar="F",
                   help="0..1 with --prompt-b: 0 draws the prompt alone, 1 --prompt-b alone, between them a blend")
    p.add_argument("--masks", type=Path, nargs="+", help="one mask per image (files or folders, same order)")
    p.add_argument("--auto-masks", action="store_true", help="propose defect regions on the object")
    p.add_argument("--n", type=positive_int, default=10, help="number of samples (cycles over images and prompts)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    add_flags(p, SamplerConfig)  # --cfg-scale ... --no-refine: the sampler's own fields
    p.add_argument("--shard", help="i/n: do every n-th sample starting at i (parallel runs)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="parallel single-threaded processes (e.g. the number of cores; default 1)")

    p = _sub(subs, "copy-paste", "The copy-paste baseline: real defects cut by their masks and pasted, flipped, "
                                 "turned and rescaled, onto normal images; a folder in qarad synth's format "
                                 "(qarad train --synth DIR --weighting none learns from it).")
    _add_real_defect_flags(p, "the shots pasted, in turn", required=True)
    p.add_argument("--images", type=Path, nargs="+", required=True, help="normal image files and/or folders")
    p.add_argument("--n", type=positive_int, default=10, help="number of samples (the shots in turn)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)

    p = _sub(subs, "merge", "Merge synth folders of one job written with --shard i/n (e.g. on different "
                            "machines) into one: images, masks and a manifest in id order, as one run writes.")
    p.add_argument("folders", type=Path, nargs="+", help="synth folders, each from `qarad synth ... --shard i/n`")
    p.add_argument("--out", type=Path, required=True, help="merged folder (may be one of FOLDERS)")

    p = _sub(subs, "score", "Score every synthetic sample against its prompt (QAW); writes scores into the manifest.")
    p.add_argument("synth_dir", type=Path)
    p.add_argument("--model", type=Path, help="ARAS model folder (default: the one that made the samples)")

    p = _sub(subs, "demo", "Run the whole pipeline on built-in demo data and write a report.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller demo (for tests and smoke checks)")
    return ap


def main(argv: list[str] | None = None) -> int:
    try:  # before the imports below: --help and --version stay torch-free
        args = main_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a refused flag (its one line already printed)
        return exc.code
    from . import commands
    from .heap import return_large_blocks
    from .checkpoint import CheckpointError
    from .data.io import ImageError
    from .data.mvtec import DatasetError
    from .runs import RunError

    return_large_blocks()  # long feature-caching runs would otherwise keep freed batches (heap.py)
    try:
        return getattr(commands, args.verb.replace("-", "_"))(args)
    except (ImageError, DatasetError, RunError, CheckpointError, ValueError, OSError) as exc:
        print(f"qarad {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qarad {args.verb}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def entrypoint() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entrypoint()
