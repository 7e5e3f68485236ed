"""The library behind every verb: one function per `qarad` verb, taking plain arguments and configs.

    fit -> synth -> score -> train -> evaluate / predict / export

Each does the verb's work (progress bars on stderr included), writes the same folders the verb
writes and returns what it made; the commands in `commands/` only turn flags into these arguments
and print the result, and `demo.py` chains them. `import qarad` exposes them as `qarad.fit` etc.
(`benchmark`, which chains train and evaluate over a dataset's categories, is in benchmarking.py.)
Datasets are read through data/layouts.py (`layout`: mvtec, visa, btad, folder or auto).
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import checkpoint, owned, runs
from .data.io import (atomic_path, atomic_paths, check_output_folder, check_replaceable, discarded_on_failure,
                      finite_or_null, write_csv, write_json, write_text)
from .data.layouts import FolderSplit, resolve_layout, scan
from .data.mvtec import expand_images, subsample
from .data.resolution import ResolutionPolicy
from .detection.predictions import Predictions
from .detection.train import QaradTraining
from .progress import bar, loss_bar
from .synthesis.generate import Synthesized, write_gallery
from .synthesis.sampler_config import SamplerConfig

if TYPE_CHECKING:
    from .data.real_defects import RealDefects
    from .detection.patchcore import PatchCoreConfig
    from .detection.segmenter import SegmenterConfig
    from .synthesis.model import FitConfig
    from .validation_config import ValidationConfig


# ---- synthesis: fit, synth, score ------------------------------------------------------------
@dataclass(frozen=True)
class Fitted:
    model: Path  # the ARAS model folder
    seconds: float  # wall seconds of the fit, over every run that worked on it


def fit_config(window: int = 64, source_conditioned: bool = False, tokenizer_ema: float = 0.0,
               **fields) -> "FitConfig":
    """A FitConfig whose tokenizer and prior match `window` (the prior's grid is window / 8 tokens);
    `source_conditioned` and `tokenizer_ema` (TokenizerConfig.ema_decay) set the tokenizer's."""
    from .synthesis.model import FitConfig
    from .synthesis.prior import PriorConfig
    from .synthesis.tokenizer import TokenizerConfig

    tok = TokenizerConfig(source_conditioned=source_conditioned, ema_decay=tokenizer_ema)
    return FitConfig(window=window, tokenizer=tok, prior=PriorConfig(grid=window // 8, vocab_size=tok.codebook_size),
                     **fields)


class _FitBars:
    """`fit`'s progress (a synthesis.fit.FitProgress): a bar over the rendered corpus, then one per
    training stage with its running loss."""

    def corpus(self, label: str, total: int):
        return bar(total, label, unit="defect")

    def steps(self, label: str, total: int, start: int):
        return loss_bar(total, label, start)


FINETUNE_PRIOR_STEPS = 500  # `qarad fit --init` without --prior-steps: the prior's steps past MODEL's


def fit(data: str | Path, category: str | list[str], out: str | Path, config: "FitConfig | None" = None,
        policy: ResolutionPolicy | None = None, max_train_images: int | None = None,
        overwrite: bool = False, layout: str = "auto", folder: FolderSplit | None = None,
        device: str = "cpu", real_defects: "RealDefects | None" = None, init: str | Path | None = None) -> Fitted:
    """Fit an ARAS model (corpus, tokenizer, prior, refiner, QAW scorer) on the normal images of one
    category or several pooled; `out` resumes when it holds the same fit, with any number of
    processes. `config` defaults to `fit_config()` (with `init`: `finetune_config(init)`); `policy`
    to ResolutionPolicy() (with `init`: its policy); `layout` and `folder` are the dataset's
    (data/layouts.py); `device` cpu, cuda or auto. `real_defects` (data/real_defects.py:
    select_real_defects) join the corpus with their type names as prompts; `init`, a fitted model
    with the same networks and policy, is continued rather than refitted (synthesis/fit.py). Under
    torchrun every process calls this and the fit runs data-parallel (distributed.py); rank 0
    writes the folder."""
    from . import distributed
    from .synthesis import fit as F
    from .synthesis import model as M
    from .synthesis.model import FitData, ModelConfig, read_config

    out = check_output_folder(out)  # a file in the way or no permission: refuse before any work
    if init is not None:
        base = read_config(init)
        config = config or finetune_config(init)
        policy = policy or base.policy
        _check_continues(Path(init), base, config, policy)
    config = config or fit_config()
    policy = policy or ResolutionPolicy()
    categories = [category] if isinstance(category, str) else list(category)
    layout = resolve_layout(data, layout, categories[0], folder)
    info = FitData(root=str(Path(data).resolve()), category=categories[0] if len(categories) == 1 else categories,
                   max_train_images=max_train_images, layout=layout,
                   folder=asdict(folder) if folder else None, init=str(Path(init).resolve()) if init else None)
    images = F.normal_images(data, categories, max_train_images, config.seed, layout, folder)
    main = distributed.launched_rank() == 0  # under torchrun rank 0 writes the folder
    fresh = main and not out.exists()
    kept = lambda: M.has(out, M.CORPUS)  # noqa: E731  (a rendered corpus is worth resuming from)
    with owned.writing(out, "qarad fit") if main else nullcontext(), \
            discarded_on_failure(out, created=fresh, worth_keeping=kept), distributed.session(device) as dev:
        seconds = F.fit_model(out, ModelConfig(config, policy, info, real_defects), images, overwrite=overwrite,
                              progress=_FitBars(), device=dev, init=init)
    return Fitted(out, seconds)


# what a continued fit (`init`) may set for itself; everything else is the model's own
CONTINUED = ("prior_steps", "seed", "batch_size", "real_samples_per_shot", "real_share", "prior_lr", "warmup_steps",
             "checkpoint_every", "prompt_dropout")


def finetune_config(init: str | Path, prior_steps: int = FINETUNE_PRIOR_STEPS, **fields) -> "FitConfig":
    """The FitConfig of a fit continuing the model `init`: its own, with `prior_steps` more prior
    steps and any of CONTINUED in `fields`."""
    from .synthesis.model import read_config

    other = sorted(set(fields) - set(CONTINUED))
    if other:
        raise ValueError(f"a fit continuing {init} keeps its {', '.join(other)}; only {', '.join(CONTINUED)} "
                         "may change")
    return replace(read_config(init).fit, prior_steps=prior_steps, **fields)


def _check_continues(init: Path, base, config: "FitConfig", policy: ResolutionPolicy) -> None:
    """`config` and `policy` may continue the model `init` (`base`, its ModelConfig)."""
    from .synthesis.model import config_dict

    if base.real_defects is not None:
        raise ValueError(f"{init}: its corpus already holds real shots; continue the model it was fitted from")
    mine, theirs = config_dict(config), config_dict(base.fit)
    differ = sorted(k for k in mine if k not in CONTINUED and mine[k] != theirs[k])
    if differ:
        raise ValueError(f"--init {init}: a continued fit keeps the model's {', '.join(differ)} (it differs here)")
    if policy != base.policy:
        raise ValueError(f"--init {init}: a continued fit keeps the model's resolution policy {base.policy.to_dict()}")


def synth(model: str | Path, images: list, prompts: list[str], out: str | Path, n: int = 10, seed: int = 0,
          masks: list | None = None, auto_masks: bool = False, sampler: SamplerConfig = SamplerConfig(),
          shard: tuple[int, int] | None = None, workers: int = 1, prompt_b: str | None = None,
          mix: float | None = None) -> Synthesized:
    """Write `n` prompted defects into `images` (files or folders), inside `masks` (one per image) or,
    with `auto_masks`, in regions proposed on the object, and OUT/gallery.html of them. Resumes an
    unfinished `out`; `shard` (i, n) does every n-th sample from i (and writes no gallery);
    `workers` > 1 runs that many single-threaded shard processes. With `prompt_b` and `mix` in
    [0, 1], every sample is drawn with its prompt's embedding interpolated towards prompt_b's. A model
    fitted with real defect shots knows their types: a prompt naming one ("blowhole") is the type's
    fitted prompt, and its proposed masks take the shape of that type's real masks
    (defects/transplant.mask_like)."""
    from .synthesis.generate import generate

    return generate(model, images, prompts, out, n, seed, masks, auto_masks, sampler, shard, workers, prompt_b, mix)


@dataclass(frozen=True)
class Merged:
    folder: Path
    total: int  # samples in the merged manifest
    missing: list[int]  # sample ids the job plans that no merged folder holds yet


def merge(out: str | Path, folders: list) -> Merged:
    """Merge synth folders written by `synth(..., shard=(i, n))` of one job (other machines, other
    splits) into `out` (which may be one of them): images, masks, one manifest.jsonl in id order,
    and gallery.html. The manifest is the one a single run writes, whatever the split."""
    from .synthesis import jobs

    out, folders = check_output_folder(out), [Path(f) for f in folders]
    jobs.check_merge(out, folders)  # a refused merge makes no folder (checked again under the lock)
    fresh = not out.exists()
    with jobs.writing(out, None, "qarad merge"), discarded_on_failure(out, created=fresh):
        missing = jobs.merge_folders(out, folders)
        write_gallery(out)
    return Merged(out, len(jobs.read_manifest(out / jobs.MANIFEST)), missing)


def copy_paste(real_defects: "RealDefects", images: list, out: str | Path, n: int = 10, seed: int = 0) -> Synthesized:
    """The copy-paste baseline: `n` real defects (the shots, in turn) cut by their masks and pasted,
    flipped, turned, rescaled and with their intensity changed, onto `images` (files or folders;
    normal images) with a feathered alpha (defects/transplant.py), into a folder in `synth`'s format
    (images, masks of the changed pixels, manifest with each shot's type prompt; unscored), so that
    `train(..., QaradTraining(synth=out, weighting="none"))` learns from it. Resumes an unfinished `out`."""
    from .synthesis.copy_paste import paste_shots

    return paste_shots(real_defects, images, out, n, seed)


def score(synth_dir: str | Path, model: str | Path | None = None) -> np.ndarray:
    """QAW-score every sample of a `synth` folder against its prompt, with `model`'s scorer (default:
    the model that made the samples); writes the scores into its manifest, rewrites its
    gallery.html with them and returns them."""
    from .synthesis.scoring import score_folder
    from .synthesis import jobs
    from .synthesis import model as M

    settings_path = Path(synth_dir) / jobs.SETTINGS
    if not settings_path.is_file():
        raise ValueError(f"{synth_dir}: not a qarad synth output (no {jobs.SETTINGS})")
    check_output_folder(synth_dir)  # the scores go into its manifest
    model_dir = model or checkpoint.load_config(settings_path).get("model")
    if not model_dir:
        raise ValueError(f"{settings_path}: names no ARAS model; pass --model")
    config = M.read_config(model_dir)
    scorer = M.load_dual_encoder(model_dir)
    with jobs.writing(Path(synth_dir), None, "qarad score"):  # no synth or score may write it meanwhile
        n = len(jobs.check_finished(Path(synth_dir)))
        with bar(n, "score (QAW)") as tick:
            scores = score_folder(synth_dir, scorer, config.policy, config.fit.window_rule, on_sample=tick)
        write_gallery(synth_dir)  # now with the scores
    return np.asarray(scores)


# ---- detection: train, evaluate, predict, export ----------------------------------------------
@dataclass(frozen=True)
class Trained:
    run: Path
    method: str  # "patchcore" or "qarad"
    n_images: int  # normal training images
    threshold: float
    already_trained: bool  # the same run was complete in `run`: nothing was done
    validation: dict | None = None  # RUN/metrics_validation.json (detection/validation.py); None: no split
    notes: tuple[str, ...] = ()  # what a qarad detector learned from, in words (QAW weights, real shots, bank)


def run_config(data: str | Path, category: str, detector: "PatchCoreConfig | SegmenterConfig",
               training: QaradTraining = QaradTraining(), policy: ResolutionPolicy = ResolutionPolicy(),
               max_train_images: int | None = None, layout: str = "auto",
               folder: FolderSplit | None = None, validation: "ValidationConfig | None" = None) -> tuple[str, dict]:
    """(method, config.json content) of the run `train` makes with these arguments: what a run
    folder is compared with to tell whether it already holds this run."""
    from .detection.patchcore import PatchCoreConfig
    from .detection.segmenter import SegmenterConfig
    from .validation_config import ValidationConfig

    validation = validation or ValidationConfig()
    if training.synth is not None and not (Path(training.synth) / "synth.json").is_file():
        raise ValueError(f"--synth {training.synth}: not a qarad synth output (no synth.json); make one with "
                         "`qarad synth` and `qarad score`")
    if isinstance(detector, PatchCoreConfig):
        if training.real_defects is not None:
            raise ValueError("PatchCore learns from normal images only: real defects are for --method qarad")
        # a synth folder only validates a PatchCore run (its samples on the held-out normals)
        synth = replace(training, synth=str(Path(training.synth).resolve()) if training.synth else None)
        method, configs = "patchcore", (detector, validation, synth)
    elif isinstance(detector, SegmenterConfig):
        if ("real" in detector.negatives) != (training.real_defects is not None):
            raise ValueError("real defect shots (--real-defects) and 'real' in --negatives go together")
        stored = replace(training, synth=str(Path(training.synth).resolve()) if training.synth else None)
        method, configs = "qarad", (stored, detector, validation)  # batch_size: the feature batch, not the head's
    else:
        raise TypeError(f"detector must be a PatchCoreConfig or a SegmenterConfig, got {type(detector).__name__}")
    if method == "qarad" and "synthetic" in detector.negatives and not training.synth:
        raise ValueError("--method qarad needs --synth SYNTH_DIR (made by `qarad synth`, scored by `qarad score`), "
                         "or --negatives without 'synthetic' (perlin, feature)")
    info = runs.RunData(root=str(Path(data).resolve()), category=category, max_train_images=max_train_images,
                        seed=detector.seed, layout=resolve_layout(data, layout, category, folder),
                        folder=asdict(folder) if folder else None,
                        real_defects=training.real_defects.to_dict() if training.real_defects else None)
    settings = runs.detector_settings(method, *configs)
    if method == "qarad" and "perlin" not in detector.negatives:
        settings["perlin_samples"] = 0  # drawn for the Perlin pool only: a run without one records none
    return method, runs.config_json(method, info, policy, settings)


def train(data: str | Path, category: str, out: str | Path, detector: "PatchCoreConfig | SegmenterConfig",
          training: QaradTraining = QaradTraining(), policy: ResolutionPolicy = ResolutionPolicy(),
          max_train_images: int | None = None, device: str = "cpu", overwrite: bool = False,
          layout: str = "auto", folder: FolderSplit | None = None,
          validation: "ValidationConfig | None" = None) -> Trained:
    """Train a detector into the run folder `out`: PatchCore for a PatchCoreConfig, the qarad detector
    (with `training`) for a SegmenterConfig, on the normal images of `category` of the dataset at
    `data` in `layout` (data/layouts.py; "auto" detects it, `folder` describes a plain-folder one).
    The subset of `max_train_images` is drawn with the detector's seed. `validation` (default
    ValidationConfig()) holds out a share of those images and of the synth folder's samples on them
    (detection/validation.py): the run is checked on them (RUN/metrics_validation.json) and a qarad
    run's head weight and image-score rule are chosen there. A run already complete in `out` is kept
    as it is."""
    from .detection import validation as V

    validation = validation or V.ValidationConfig()
    method, config = run_config(data, category, detector, training, policy, max_train_images, layout, folder,
                                validation)
    train_set = subsample(scan(data, category, "train", config["data"]["layout"], folder), max_train_images,
                          detector.seed)
    out = Path(out)
    fresh = not out.exists()
    with owned.writing(out, "qarad train"), discarded_on_failure(out, created=fresh):  # bad input found mid-fit
        if runs.prepare(out, config, overwrite):
            threshold = float(checkpoint.load_config(out / runs.MODEL)["threshold"])
            checked = checkpoint.load_config(out / V.VALIDATION) if (out / V.VALIDATION).is_file() else None
            return Trained(out, method, len(train_set), threshold, already_trained=True, validation=checked)
        split = V.split_normals([s.image for s in train_set], validation.val_share, detector.seed)
        notes = ()
        if method == "patchcore":
            model = _train_patchcore(detector, policy, split.train, device)
        else:
            from .detection.train import train_qarad

            done = train_qarad(detector, training, policy, split.train, device, split.held)
            model, notes = done.model, tuple(done.notes)
        checked = V.validate_split(model, split, training.synth, detector.seed,
                                   training.batch_size if method == "qarad" else detector.batch_size)
        model.save(out / runs.MODEL)
        if checked is not None:
            write_json(out / V.VALIDATION, finite_or_null(checked))
    return Trained(out, method, len(train_set), model.threshold_, already_trained=False, validation=checked,
                   notes=notes)


def _train_patchcore(config: "PatchCoreConfig", policy: ResolutionPolicy, paths: list[Path], device: str):
    from .detection.patchcore import PatchCore

    model = PatchCore(config, policy).to(device)
    with bar(len(paths), "train patchcore") as tick:
        model.fit(paths, on_image=tick)
    return model


def evaluate(run: str | Path, data: str | Path | None = None, allow_missing_masks: bool = False,
             batch_size: int = 8, device: str = "cpu", curves: bool = False, pixel_metrics: str = "auto",
             layout: str | None = None, folder: FolderSplit | None = None) -> dict:
    """Evaluate a trained run on its category's test split (under `data`, default the root it was
    trained on; in `layout` with `folder`, default the run's); writes RUN/metrics.json, RUN/scores.csv
    and RUN/report.html and returns metrics.json's content (with the plotted curves when `curves`).
    `pixel_metrics`: auto, exact or streaming (qarad.metrics; auto streams above
    metrics.EXACT_PIXEL_LIMIT graded pixels)."""
    from .detection.evaluate import evaluate as evaluate_split

    cfg = runs.read_config(run)
    check_output_folder(run)  # metrics.json goes here: refuse an unwritable run before evaluating
    for name in runs.EVALUATION:
        check_replaceable(Path(run) / name)  # ... or one whose outputs are the user's folders
    detector = runs.load_detector(run, device)
    root = Path(data or cfg["data"]["root"])
    stored = cfg["data"].get("folder")
    folder = folder or (FolderSplit(**stored) if stored and layout in (None, "auto", "folder") else None)
    test = scan(root, cfg["data"]["category"], "test", layout or cfg["data"].get("layout", "mvtec"), folder,
                allow_missing_masks)
    real = runs.RunData(**cfg["data"]).real
    excluded = []
    if real is not None:  # the shots it trained on are not test images (by path or by content)
        test, excluded = real.split(test)
    with owned.writing(run, "qarad eval"):
        with bar(len(test), "eval") as tick:
            ev = evaluate_split(detector, test, batch_size, on_image=tick, pixel_mode=pixel_metrics)
        return _write_evaluation(Path(run), cfg, detector, ev, real, excluded, curves)


def _write_evaluation(run: Path, cfg: dict, detector, ev, real, excluded: list, curves: bool) -> dict:
    from .report.pages import run_report

    # the policy the model was trained and scored with (model.json's), which config.json also records
    result = {"method": cfg["method"], "category": cfg["data"]["category"], "policy": detector.policy.to_dict(),
              "threshold": detector.threshold_, "overall": ev.overall, "per_type": ev.per_type,
              "test_images_per_s": ev.images_per_s, "pixel_metrics": ev.pixel_metrics}
    if real is not None:
        result["excluded_real_defects"] = {"count": len(excluded), "images": [str(s.image) for s in excluded]}
    if curves:
        result["curves"] = ev.curves
    # all three or none: a failure (a folder where report.html goes) keeps the earlier evaluation whole
    with atomic_paths([run / name for name in runs.EVALUATION]) as (metrics, scores, report):
        write_json(metrics, finite_or_null(result))  # a metric undefined on one class: null
        write_csv(scores, ev.records)
        run_report(result, ev, run).write(report)
    return result


def predict(run: str | Path, images: list, out: str | Path | None = None, batch_size: int = 8,
            device: str = "cpu") -> Predictions:
    """Score `images` (files or folders) with a trained run: a heat-map overlay per image and
    scores.csv in `out` (default RUN/predictions), written all or nothing. An `out` holding an
    earlier prediction is replaced; any other non-empty folder is refused."""
    from .detection.predictions import write_predictions

    paths = expand_images(images)
    detector = runs.load_detector(run, device)
    given = Path(out or Path(run) / "predictions")
    return write_predictions(detector, paths, given, batch_size)


def _refuse_different(path: Path, data: bytes, overwrite: bool) -> None:
    if path.exists() and not overwrite and (not path.is_file() or path.read_bytes() != data):
        raise runs.RunError(f"{path}: already exists and holds something else; choose another --out or pass "
                            "--overwrite")


def export(run: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write RUN's detector as ONNX to `out` (default RUN/model.onnx) plus the sidecar OUT.json
    (policy, threshold, inputs/outputs); returns `out`."""
    from .detection.export import export_onnx, sidecar

    detector = runs.load_detector(run, "cpu")  # a folder that is not a trained run fails here, naming it
    out = Path(out or Path(run) / "model.onnx")
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: the output file name must end in .onnx")
    meta = out.with_name(out.name + ".json")  # model.onnx.json: model.json is the run's checkpoint config
    with atomic_path(out) as tmp:  # renamed onto `out` only if nothing below raises
        export_onnx(detector, tmp)
        data = tmp.read_bytes()
        text = json.dumps(sidecar(detector, data), indent=2) + "\n"
        _refuse_different(out, data, overwrite)
        _refuse_different(meta, text.encode("utf-8"), overwrite)
    write_text(meta, text)
    return out
