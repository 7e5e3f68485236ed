"""Fitting ARAS on a category's normal images, stage by stage into a model folder (model.py):
corpus (corpus.py) -> tokenizer -> prior -> refiner (loops.py) -> QAW dual encoder (quality/fit.py).

`fit_model` runs the stages in order, skipping those the folder already holds, and each stage
resumes from its last train state, so a rerun after a crash continues where it stopped.
`fit_model(init=MODEL)` continues a fitted model instead of starting afresh: MODEL's corpus
(procedural renders) gets the real samples appended, its tokenizer, refiner and QAW dual encoder
are copied, and its prior trains on for `prior_steps` more steps (the few-shot fit: minutes
instead of a full fit).
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch

from .. import checkpoint
from .. import distributed as dist
from ..data.io import discarded_on_failure, write_json
from ..data.layouts import FolderSplit, scan
from ..data.mvtec import subsample
from ..data.resolution import ResolutionPolicy
from ..data.real_defects import RealDefects
from ..quality.fit import fit_dual_encoder
from . import model as M
from .corpus import Corpus, build_corpus, build_real_corpus, family_labels, load_corpus, save_corpus
from .loops import encode_corpus, fit_prior, fit_refiner, fit_tokenizer, text_embeddings
from .model import CORPUS, DUAL_ENCODER, PRIOR, REFINER, STATE, TIMINGS, TOKENIZER, FitConfig, ModelConfig
from .tokenizer import VQTokenizer

TIME_EVERY = 25  # training steps between updates of MODEL/timings.json


class FitProgress:
    """What `fit_model` reports as it goes; this one reports nothing (`qarad fit` shows bars)."""

    def corpus(self, label: str, total: int) -> ContextManager[Callable[[], None]]:
        """Yields a callback called once per rendered defect."""
        return nullcontext(lambda: None)

    def steps(self, label: str, total: int, start: int) -> ContextManager[Callable[[float], None]]:
        """Yields a callback called with each training step's loss; a resumed stage starts at `start`."""
        return nullcontext(lambda loss: None)


def normal_images(root: Path, categories: list[str], limit: int | None, seed: int, layout: str = "auto",
                  folder: FolderSplit | None = None) -> list[Path]:
    """The training images of `categories` pooled, as a reproducible subset of at most `limit`."""
    train = [s for category in categories for s in scan(root, category, "train", layout, folder)]
    return [s.image for s in subsample(train, limit, seed)]


def fit_model(out: Path, config: ModelConfig, images: list[Path], overwrite: bool = False,
              progress: FitProgress = FitProgress(), device: str | torch.device = "cpu",
              init: Path | None = None) -> float:
    """Fit every stage MODEL `out` does not hold yet: corpus, tokenizer, prior, refiner (when
    `config.fit.refiner_steps`), QAW dual encoder, on `device`. A rerun after a crash resumes where
    it stopped, with any number of processes; returns the fit's wall seconds, over every run that
    worked on it. Under torchrun (distributed.session) the tokenizer, prior and refiner train
    data-parallel; rank 0 alone renders the corpus, fits the QAW scorer and writes files.
    `init`: a fitted model with the same networks to continue (module docstring); its corpus is
    rendered anew from `images` when it kept none."""
    dist.check_batch(config.fit.batch_size)  # before anything is written
    fresh = dist.on_main(lambda: M.prepare_folder(out, config, overwrite))
    run = _FitRun(Path(out), config.fit, progress if dist.is_main() else FitProgress(), torch.device(device),
                  None if init is None else Path(init))
    with discarded_on_failure(out, created=bool(fresh)):  # a bad image found while rendering: nothing fitted yet
        corpus = run.corpus(images, config.policy, config.real_defects)
    tokenizer = run.tokenizer(corpus)
    run.prior(tokenizer, corpus)
    if config.fit.refiner_steps:
        run.refiner(tokenizer, corpus)
    run.dual_encoder(corpus)
    return run.timer.total()


class _StageTimer:
    """Wall seconds per fit stage, kept in MODEL/timings.json; a resumed stage adds to its time."""

    def __init__(self, folder: Path):
        self.path, self.clock = folder / TIMINGS, time.perf_counter
        self.times = M.read_timings(folder)
        self.start = self.clock()

    def restart(self) -> None:
        """Do not count what happened since the last lap (loading a finished stage)."""
        self.start = self.clock()

    def lap(self, stage: str) -> None:
        now = self.clock()
        self.times[stage] = round(self.times.get(stage, 0.0) + now - self.start, 1)
        self.start = now
        if dist.is_main():
            write_json(self.path, self.times)

    def total(self) -> float:
        return sum(self.times.values())


class _FitRun:
    """One run of `fit_model`: each stage loads what MODEL holds or fits and saves it."""

    def __init__(self, out: Path, cfg: FitConfig, progress: FitProgress, device: torch.device,
                 init: Path | None = None):
        self.out, self.cfg, self.progress, self.state = out, cfg, progress, out / STATE
        self.device, self.init = device, init
        self.timer = _StageTimer(out)
        self.labels = ["render fitting corpus", "tokenizer", "prior", "refiner", "QAW dual encoder"]
        if not cfg.refiner_steps:
            self.labels.remove("refiner")
        self._text = None

    def label(self, stage: str) -> str:
        return f"fit {self.labels.index(stage) + 1}/{len(self.labels)}: {stage}"

    def text(self, corpus: Corpus) -> torch.Tensor:
        if self._text is None:
            self._text = text_embeddings(corpus.prompts)
        return self._text

    @contextmanager
    def steps(self, stage: str, total: int, part: str) -> Iterator[Callable[[float], None]]:
        """Progress over a stage's steps, from the step its train state resumes at; the stage's
        time is written every TIME_EVERY steps, so a killed fit loses at most that much timing."""
        state_stem, done = self.state / part, 0
        if state_stem.with_suffix(".json").is_file():
            done = int(checkpoint.load_config(state_stem).get("step", 0))
        with self.progress.steps(self.label(stage), total, done) as show:
            def tick(loss: float) -> None:
                nonlocal done
                show(loss)
                done += 1
                if done % TIME_EVERY == 0:
                    self.timer.lap(part)
            yield tick

    def corpus(self, images: list[Path], policy: ResolutionPolicy, real: RealDefects | None = None) -> Corpus:
        stem = self.out / CORPUS
        if stem.with_suffix(".json").is_file():  # its JSON is written last
            corpus = load_corpus(stem)
            self.timer.restart()
            return corpus
        kept = None if self.init is None else self.init / CORPUS
        reuse = kept is not None and kept.with_suffix(".json").is_file()
        n_real = len(real.defects) * self.cfg.real_samples_per_shot if real else 0

        def render() -> Corpus:
            total = (0 if reuse else self.cfg.corpus_size) + n_real
            with self.progress.corpus(self.label("render fitting corpus"), total) as tick:
                corpus = load_corpus(kept) if reuse else build_corpus(images, policy, self.cfg, on_sample=tick)
                if corpus.n_real:
                    raise ValueError(f"{self.init}: its corpus already holds real shots; continue the model it "
                                     "was fitted from instead")
                if real:
                    corpus = corpus + build_real_corpus(real, images, policy, self.cfg, on_sample=tick)
            save_corpus(stem, corpus)
            return corpus

        corpus = dist.on_main(render) or load_corpus(stem)  # the other processes read what rank 0 wrote
        self.timer.lap("corpus")
        return corpus

    def tokenizer(self, corpus: Corpus) -> VQTokenizer:
        if M.has(self.out, TOKENIZER):
            tokenizer = M.load_tokenizer(self.out).to(self.device)
            self.timer.restart()
            return tokenizer
        if self.init is not None:  # continued: the codes the prior was fitted on stay the same
            tokenizer = M.load_tokenizer(self.init).to(self.device)
            self._saved(TOKENIZER, tokenizer)
            return tokenizer
        with self.steps("tokenizer", self.cfg.tokenizer_steps, TOKENIZER) as tick:
            tokenizer = fit_tokenizer(corpus, self.cfg, self.state / TOKENIZER, on_step=tick, device=self.device)
        self._saved(TOKENIZER, tokenizer)
        return tokenizer

    def prior(self, tokenizer: VQTokenizer, corpus: Corpus) -> None:
        if M.has(self.out, PRIOR):
            return
        codes, token_masks = encode_corpus(tokenizer, corpus, self.cfg)
        text = self.text(corpus)
        init = None if self.init is None else M.load_prior(self.init)
        with self.steps("prior", self.cfg.prior_steps, PRIOR) as tick:
            prior = fit_prior(codes, token_masks, text, self.cfg, self.state / PRIOR, on_step=tick, device=self.device,
                              n_real=corpus.n_real, init=init)
        self._saved(PRIOR, prior)

    def refiner(self, tokenizer: VQTokenizer, corpus: Corpus) -> None:
        if M.has(self.out, REFINER):
            return
        if self.init is not None:
            self._saved(REFINER, M.load_refiner(self.init))
            return
        text = self.text(corpus)
        with self.steps("refiner", self.cfg.refiner_steps, REFINER) as tick:
            refiner = fit_refiner(tokenizer, corpus, text, self.cfg, self.state / REFINER, on_step=tick,
                                  device=self.device)
        self._saved(REFINER, refiner)

    def dual_encoder(self, corpus: Corpus) -> None:
        if M.has(self.out, DUAL_ENCODER):
            return
        if self.init is not None:  # kept as it is: README, "Few-shot", says why
            dist.on_main(lambda: M.save_dual_encoder(self.out, M.load_dual_encoder(self.init)))
            self.timer.lap(DUAL_ENCODER)
            return
        text = self.text(corpus)
        families = family_labels(corpus)

        def fit() -> None:  # small MLPs over cached features: one process fits it, the others wait
            with self.steps("QAW dual encoder", self.cfg.qaw_steps, DUAL_ENCODER) as tick:
                scorer = fit_dual_encoder(None, corpus.defect.permute(0, 3, 1, 2), corpus.mask, text, families,
                                          steps=self.cfg.qaw_steps, seed=self.cfg.seed, on_step=tick,
                                          device=self.device)
            M.save_dual_encoder(self.out, scorer)

        dist.on_main(fit)
        self.timer.lap(DUAL_ENCODER)

    def _saved(self, part: str, module: torch.nn.Module) -> None:
        dist.on_main(lambda: M.save_part(self.out, part, module))
        self.timer.lap(part)
