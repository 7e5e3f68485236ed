"""Fitting ARAS on a category's normal images: corpus -> tokenizer -> prior -> refiner
(DESIGN.md 4.1-4.3; the refiner is this project's addition, see refiner.py).

Each stage is resumable: the corpus is stored once, and every `checkpoint_every` steps the
model and optimizer state are saved; a rerun continues from the last saved step. Batches are
drawn from a generator seeded by (seed, step), so a resumed fit sees the same batches as an
uninterrupted one. `fit_model` runs the stages in order into a model folder (model.py), skipping
those it already holds. Under torchrun the loops train data-parallel, each process on its slice
of every global batch; ../distributed.py owns all of that, the loops only call it.

Real defect shots (ModelConfig.real_defects, DESIGN.md 4.1) join the corpus after the procedural
renders: each shot becomes `real_samples_per_shot` samples, a quarter of them the shot in its own
image and the rest its defect re-placed on other normal images inside its own mask shape
(defects/transplant.py), each zoomed by the window rule and flipped or turned; their prompt is the
type's. `real_share` of every tokenizer and prior batch is drawn from them. `fit_model(init=MODEL)`
continues a fitted model instead of starting afresh: MODEL's corpus (procedural renders) gets the
real samples appended, its tokenizer, refiner and QAW dual encoder are copied, and its prior
trains on for `prior_steps` more steps (the few-shot fit: minutes instead of a full fit).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint
from .. import distributed as dist
from ..backbone import Backbone, BackboneConfig
from ..data.io import discarded_on_failure, read_image, read_mask, write_json
from ..data.layouts import FolderSplit, scan
from ..data.mvtec import subsample
from ..data.resolution import ResolutionPolicy
from ..data.real_defects import RealDefects
from ..defects.corpus import CorpusConfig, make_sample
from ..defects.masks import foreground_mask
from ..defects.prompts import family_of
from ..defects.renderer import FAMILIES
from ..defects.transplant import PasteConfig, background, cut, place, transform
from ..quality.fit import fit_dual_encoder
from ..text import TextEncoder
from ..training import load_state, optimizer_step, save_state, step_rng
from .aras import token_mask_from_pixels
from . import model as M
from .model import CORPUS, DUAL_ENCODER, PRIOR, REFINER, STATE, TIMINGS, TOKENIZER, FitConfig, ModelConfig
from .prior import Prior
from .prior import loss_terms as prior_loss_terms
from .refiner import Refiner
from .tokenizer import VQTokenizer
from .window import WindowRule, coverage, to_window

DEAD_CODE_EVERY = 100  # steps between dead-code restarts
TIME_EVERY = 25  # training steps between updates of MODEL/timings.json
IN_PLACE_EVERY = 4  # every 4th corpus sample of a real shot is the shot in its own image
REAL_TARGETS = 32  # normal images (at most) that the real shots are re-placed on, loaded once


@dataclass
class Corpus:
    clean: torch.Tensor  # (N, S, S, 3) uint8
    defect: torch.Tensor  # (N, S, S, 3) uint8
    mask: torch.Tensor  # (N, S, S) uint8 0/1
    prompts: list[str]
    families: list[str]  # the procedural family, or for a real shot's sample its defect type
    n_real: int = 0  # the last n_real samples are real shots' (build_real_corpus)

    def images(self, idx: torch.Tensor, which: str) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1]."""
        return getattr(self, which)[idx].permute(0, 3, 1, 2).float() / 255.0

    def __add__(self, other: "Corpus") -> "Corpus":
        """This corpus with `other`'s samples after it (`other` may hold real ones, this one none)."""
        if self.n_real:
            raise ValueError("real samples must come last: append to a corpus without real samples")
        return Corpus(*(torch.cat([getattr(self, k), getattr(other, k)]) for k in ("clean", "defect", "mask")),
                      self.prompts + other.prompts, self.families + other.families, other.n_real)


def _uint8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


def zoom_to_mask(clean: np.ndarray, defect: np.ndarray, mask: np.ndarray, rule: WindowRule
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-cut a rendered crop (working px) around its mask by `rule`, inside the crop, resized to
    the window: the view synthesis will have of a mask of that size. An empty mask keeps the crop."""
    if not mask.any():
        return clean, defect, mask
    y0, x0, y1, x1 = rule.box(mask, (1.0, 1.0), limit=True)

    def cut(image: np.ndarray) -> np.ndarray:
        crop = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)
        return to_window(crop, rule.side).permute(1, 2, 0).numpy()

    region = coverage(torch.from_numpy(mask[y0:y1, x0:x1]), rule.side) > 0.5
    return cut(clean), cut(defect), region.numpy()


def _work(path: str | Path, policy: ResolutionPolicy) -> np.ndarray:
    """An image at working resolution, (H, W, 3) float."""
    image = read_image(path)
    return policy.layout(*image.shape[:2]).to_work(image).permute(1, 2, 0).numpy()


def build_corpus(paths: list[Path], policy: ResolutionPolicy, cfg: FitConfig,
                 on_sample: Callable[[], None] | None = None) -> Corpus:
    """Render `corpus_size` defects on windows of the normal images, a few per image, streaming,
    each re-cut around its mask by the model's window rule."""
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(paths))[: cfg.corpus_size]
    per_image = math.ceil(cfg.corpus_size / len(order))
    ccfg = CorpusConfig(window=cfg.window, seed=cfg.seed)
    clean, defect, mask, prompts, families = [], [], [], [], []
    for i in order:
        work = _work(paths[i], policy)
        for _ in range(min(per_image, cfg.corpus_size - len(prompts))):
            s = make_sample(work, rng, ccfg)
            c, d, m = zoom_to_mask(s.clean, s.defect, s.mask, cfg.window_rule)
            clean.append(_uint8(c))
            defect.append(_uint8(d))
            mask.append(torch.from_numpy(m.astype(np.uint8)))
            prompts.append(s.prompt)
            families.append(s.params.family)
            if on_sample:
                on_sample()
    return Corpus(torch.stack(clean), torch.stack(defect), torch.stack(mask), prompts, families)


def _dihedral(arrays: tuple[np.ndarray, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The same random flip and quarter turn of every (S, S[, 3]) array."""
    flip, k = rng.random() < 0.5, int(rng.integers(4))
    return tuple(np.ascontiguousarray(np.rot90(a[:, ::-1] if flip else a, k)) for a in arrays)


def build_real_corpus(real: RealDefects, paths: list[Path], policy: ResolutionPolicy, cfg: FitConfig,
                      on_sample: Callable[[], None] | None = None) -> Corpus:
    """`real_samples_per_shot` samples of every real shot at working resolution: every
    IN_PLACE_EVERY-th the shot in its own image (its clean window the image with the defect filled
    in from around it), the others its defect re-placed on one of REAL_TARGETS normal images with
    `transplant`'s augmentations; each cut around its mask by the window rule and flipped or turned."""
    rng = np.random.default_rng([cfg.seed, 11])
    targets = [_work(paths[i], policy) for i in sorted(rng.permutation(len(paths))[:REAL_TARGETS])]
    foregrounds = [foreground_mask(t) for t in targets]
    paste = PasteConfig()
    clean, defect, mask, prompts, families = [], [], [], [], []
    for i, shot in enumerate(real.defects):
        image = read_image(shot.image)
        layout = policy.layout(*image.shape[:2])
        work = layout.to_work(image).permute(1, 2, 0).numpy()
        shot_mask = layout.mask_to_work(read_mask(shot.mask, image.shape[:2]))
        if not shot_mask.any():  # too small to survive the working resolution: keep its centre pixel
            ys, xs = np.nonzero(read_mask(shot.mask, image.shape[:2]))
            shot_mask[int(ys.mean() * work.shape[0] / image.shape[0]),
                      int(xs.mean() * work.shape[1] / image.shape[1])] = True
        patch = cut(work, shot_mask)
        for j in range(cfg.real_samples_per_shot):
            r = np.random.default_rng([cfg.seed, 12, i, j])
            if j % IN_PLACE_EVERY == 0:
                c, d, m = background(work, shot_mask), work, shot_mask
            else:
                k = int(r.integers(len(targets)))
                placed = place(targets[k], transform(patch, r, paste), r, "difference", foregrounds[k], paste)
                c, d, m = targets[k], placed.image, placed.mask
            c, d, m = zoom_to_mask(c, d, m, cfg.window_rule)
            c, d, m = _dihedral((c, d, m), r)
            clean.append(_uint8(c))
            defect.append(_uint8(d))
            mask.append(torch.from_numpy(m.astype(np.uint8)))
            prompts.append(shot.prompt)
            families.append(shot.defect_type)
            if on_sample:
                on_sample()
    return Corpus(torch.stack(clean), torch.stack(defect), torch.stack(mask), prompts, families, len(prompts))


def family_labels(corpus: Corpus) -> torch.Tensor:
    """(N,) positive-pair labels of the QAW dual encoder: a procedural render's family index; a real
    shot's sample gets the family its prompt names ("crack") when it names one, and otherwise a label
    of its own type after the families (a prompt like "blowhole" is nothing the grammar knows)."""
    first = len(corpus.prompts) - corpus.n_real
    own = {t: len(FAMILIES) + k for k, t in enumerate(sorted(set(corpus.families[first:])))}
    labels = [FAMILIES.index(f) for f in corpus.families[:first]]
    for prompt, t in zip(corpus.prompts[first:], corpus.families[first:]):
        named = family_of(prompt)
        labels.append(FAMILIES.index(named) if named in FAMILIES else own[t])
    return torch.tensor(labels)


def save_corpus(stem: Path, corpus: Corpus) -> None:
    meta = {"prompts": corpus.prompts, "families": corpus.families}
    if corpus.n_real:  # a corpus without real samples is written as before they existed
        meta["n_real"] = corpus.n_real
    checkpoint.save(stem, {"clean": corpus.clean, "defect": corpus.defect, "mask": corpus.mask}, meta)


def load_corpus(stem: Path) -> Corpus:
    meta = checkpoint.load_config(stem)
    t = checkpoint.load_tensors(stem, {"clean": (None, None, None, 3), "defect": (None, None, None, 3),
                                       "mask": (None, None, None)})
    return Corpus(t["clean"], t["defect"], t["mask"], meta["prompts"], meta["families"], int(meta.get("n_real", 0)))


def _lr(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _set_lr(opt: torch.optim.Optimizer, step: int, base: float, cfg: FitConfig, total: int) -> None:
    for group in opt.param_groups:
        group["lr"] = _lr(step, base, cfg.warmup_steps, total)


def _end_step(step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: FitConfig, state_stem: Path,
              stage: str, value: float, on_step: Callable[[float], None] | None, buffers: dict | None = None) -> None:
    """Save the train state every `checkpoint_every` steps (rank 0: `model` is the unwrapped module,
    the same on every rank), then report the step's loss."""
    if (step + 1) % cfg.checkpoint_every == 0:
        dist.on_main(lambda: save_state(state_stem, model, opt, step + 1, {"stage": stage}, buffers=buffers))
    if on_step:
        on_step(value)


def _batch(n: int, size: int, seed: int, step: int, n_real: int = 0, real_share: float = 0.0) -> torch.Tensor:
    """Corpus indices of one batch. With real samples (the last n_real), round(real_share * size)
    of them (at least one) come last in the batch, drawn from the real samples alone."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if not n_real or not real_share or n_real == n:  # as before real samples existed
        return torch.randint(n, (size,), generator=g)
    k = min(size, max(1, round(real_share * size)))
    return torch.cat([torch.randint(n - n_real, (size - k,), generator=g),
                      n - n_real + torch.randint(n_real, (k,), generator=g)])


def _augment(x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7_919 + step)
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(4, (1,), generator=g)), dims=(-2, -1))


def _defect_weights(masks: torch.Tensor, defect_weight: float) -> torch.Tensor:
    """(B, S, S) defect masks -> (B, 1, S, S) reconstruction weights: 1, and 1 + defect_weight on
    the slightly grown masks (the defect's edge is part of the defect)."""
    return 1.0 + defect_weight * F.max_pool2d(masks.float()[:, None], 5, stride=1, padding=2)


def _pixel_weights(corpus: Corpus, idx: torch.Tensor, half: int, defect_weight: float) -> torch.Tensor:
    """(B, 1, S, S) tokenizer weights: the first half of the batch is clean windows (weight 1), the
    second half defect windows (`_defect_weights`)."""
    masks = corpus.mask[idx].clone()
    masks[:half] = 0
    return _defect_weights(masks, defect_weight)


def _edit_tokens(masks: torch.Tensor, half: int, cfg: FitConfig) -> torch.Tensor:
    """(B, G, G) tokens a sampler would re-sample for these (B, S, S) defect masks: the clean first
    half of a tokenizer batch is all editable (it is its own source)."""
    edit = torch.stack([token_mask_from_pixels(m.bool(), 8, cfg.mask_dilate_px) for m in masks])
    edit[:half] = True
    return edit


def _pixel_loss(perceptual: Backbone, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                weight_mean: torch.Tensor, cfg: FitConfig) -> torch.Tensor:
    """Weighted L1 plus an LPIPS-style term (unit-normalised stride-8 feature vectors). `weight` is
    this process's slice, `weight_mean` the mean weight of the whole global batch."""
    loss = (weight * (out - target).abs()).mean() / weight_mean
    if cfg.perceptual_weight:
        f_out, f_ref = (F.normalize(perceptual(v)[8], dim=1) for v in (out, target))
        loss = loss + cfg.perceptual_weight * (f_out - f_ref).pow(2).sum(1).mean()
    return loss


def fit_tokenizer(corpus: Corpus, cfg: FitConfig, state_stem: Path,
                  on_step: Callable[[float], None] | None = None, device: str | torch.device = "cpu") -> VQTokenizer:
    """Train the VQ tokenizer on `device`; under torchrun each process takes its slice of every
    global batch (distributed.py). Returns the model on `device`, in eval mode."""
    device = torch.device(device)
    dist.check_batch(cfg.batch_size)
    torch.manual_seed(cfg.seed)
    model = VQTokenizer(cfg.tokenizer).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.tokenizer_lr, betas=(0.9, 0.95), weight_decay=0.0)
    perceptual = Backbone(BackboneConfig(strides=(8,))).to(device)
    # code usage since the last dead-code restart: part of the train state, so a resume between two
    # restarts re-seeds the same codes as an uninterrupted fit
    usage = torch.zeros(cfg.tokenizer.codebook_size, dtype=torch.long)
    start = 0
    if state_stem.with_suffix(".safetensors").is_file():
        start = load_state(state_stem, model, opt, buffers={"usage": usage})[0]
    model.train()
    ddp = dist.wrap(model, device)
    for step in range(start, cfg.tokenizer_steps):
        idx = _batch(len(corpus.prompts), cfg.batch_size, cfg.seed, step, corpus.n_real, cfg.real_share)
        half = cfg.batch_size // 2  # half clean windows, half with defects: the codebook needs both
        source = corpus.images(idx, "clean")
        x = torch.cat([source[:half], corpus.images(idx[half:], "defect")])
        x, source = _augment(x, cfg.seed, step), _augment(source, cfg.seed, step)
        edit = None  # an unconditioned tokenizer encodes every token of its own window
        if cfg.tokenizer.source_conditioned:
            edit = dist.local(_edit_tokens(_augment(corpus.mask[idx], cfg.seed, step), half, cfg)).to(device)
        weight = _augment(_pixel_weights(corpus, idx, half, cfg.defect_weight), cfg.seed, step)
        weight_mean = weight.mean().to(device)  # of the global batch
        x, source, weight = (dist.local(v).to(device) for v in (x, source, weight))  # this process's slice
        _set_lr(opt, step, cfg.tokenizer_lr, cfg, cfg.tokenizer_steps)
        with step_rng(cfg.seed, step):  # no global-RNG draw today; any added later stays resumable
            out = ddp(x, source, edit)  # an unconditioned tokenizer ignores `source`
            loss = _pixel_loss(perceptual, out.recon, x, weight, weight_mean, cfg) + out.vq_loss
            value = dist.mean_value(optimizer_step(opt, loss, model.parameters()))
        if cfg.tokenizer.ema_decay:  # the EMA codebook follows this step's encoder outputs, summed over processes
            z_e = out.z_e.detach()  # each moves its own nearest code (out.codes are the source's outside `edit`)
            model.ema_update(z_e, model.nearest_codes(z_e), dist.all_sum)
        usage += dist.all_sum(model.code_usage(out.codes).cpu())
        if (step + 1) % DEAD_CODE_EVERY == 0:  # re-seed unused codes with this batch's encoder outputs
            model.restart_dead_codes(dist.all_gather(out.z_e), usage,
                                     generator=torch.Generator().manual_seed(cfg.seed + step))
            usage.zero_()
        _end_step(step, model, opt, cfg, state_stem, TOKENIZER, value, on_step, buffers={"usage": usage})
    model.eval()
    return model


@torch.inference_mode()
def encode_corpus(tokenizer: VQTokenizer, corpus: Corpus, cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of the defect windows (N, G, G) and their editable-token masks (N, G, G), on the CPU
    (encoded on the tokenizer's device)."""
    device = tokenizer.codebook.weight.device
    codes, masks = [], []
    for s in range(0, len(corpus.prompts), 32):
        idx = torch.arange(s, min(s + 32, len(corpus.prompts)))
        edit = _edit_tokens(corpus.mask[idx], 0, cfg)
        images = (corpus.images(idx, which).to(device) for which in ("defect", "clean"))
        codes.append(tokenizer.encode_edited(*images, edit.to(device)).codes.cpu())
        masks.append(edit)
    return torch.cat(codes), torch.cat(masks)


def fit_prior(codes: torch.Tensor, token_masks: torch.Tensor, text: torch.Tensor, cfg: FitConfig, state_stem: Path,
              on_step: Callable[[float], None] | None = None, device: str | torch.device = "cpu",
              n_real: int = 0, init: Prior | None = None) -> Prior:
    """Train the prior on `device` (data-parallel under torchrun, as fit_tokenizer). With
    PriorConfig.dropout > 0 (0 by default) each process draws its own dropout masks from the same
    (seed, step), so N processes fit reproducibly but not exactly as one does. The last `n_real`
    samples are real shots' (`real_share` of each batch); `init` is a fitted prior to continue
    from (a train state in `state_stem`, when there is one, wins: it resumes)."""
    device = torch.device(device)
    dist.check_batch(cfg.batch_size)
    torch.manual_seed(cfg.seed)
    model = Prior(cfg.prior).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.prior_lr, betas=(0.9, 0.95), weight_decay=0.01)
    start = load_state(state_stem, model, opt)[0] if state_stem.with_suffix(".safetensors").is_file() else 0
    model.train()
    ddp = dist.wrap(model, device)
    for step in range(start, cfg.prior_steps):
        idx = _batch(len(codes), cfg.batch_size, cfg.seed + 1, step, n_real, cfg.real_share)
        g = torch.Generator().manual_seed(cfg.seed * 31 + step)
        drop = torch.rand(len(idx), generator=g) < cfg.prompt_dropout
        idx, drop = dist.local(idx), dist.local(drop).to(device)  # this process's slice
        _set_lr(opt, step, cfg.prior_lr, cfg, cfg.prior_steps)
        with step_rng(cfg.seed, step):  # dropout masks
            out = ddp(*(v[idx].to(device) for v in (codes, token_masks, text)), drop)
            # the mean over the valid tokens of the global batch (their count differs per sample)
            loss = dist.global_mean(*prior_loss_terms(out))
            value = dist.mean_value(optimizer_step(opt, loss, model.parameters()))
        _end_step(step, model, opt, cfg, state_stem, PRIOR, value, on_step)
    model.eval()
    return model


def fit_refiner(tokenizer: VQTokenizer, corpus: Corpus, text: torch.Tensor, cfg: FitConfig, state_stem: Path,
                on_step: Callable[[float], None] | None = None, device: str | torch.device = "cpu") -> Refiner:
    """Teach the refiner to turn encode/decode of each corpus render back into the render, given
    the clean window, the defect's mask and the render's prompt embedding (on `device`, with the
    tokenizer there too; data-parallel under torchrun, as fit_tokenizer)."""
    device = torch.device(device)
    dist.check_batch(cfg.batch_size)
    torch.manual_seed(cfg.seed)
    model = Refiner(cfg.refiner).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.tokenizer_lr, betas=(0.9, 0.95), weight_decay=0.0)
    perceptual = Backbone(BackboneConfig(strides=(8,))).to(device)
    start = load_state(state_stem, model, opt)[0] if state_stem.with_suffix(".safetensors").is_file() else 0
    tokenizer.eval()
    model.train()
    ddp = dist.wrap(model, device)
    for step in range(start, cfg.refiner_steps):
        idx = _batch(len(corpus.prompts), cfg.batch_size, cfg.seed + 2, step, corpus.n_real, cfg.real_share)
        weight = _augment(_defect_weights(corpus.mask[idx], cfg.defect_weight), cfg.seed + 2, step)
        weight_mean = weight.mean().to(device)  # of the global batch
        idx, weight = dist.local(idx), dist.local(weight).to(device)  # this process's slice
        target, clean = (corpus.images(idx, which).to(device) for which in ("defect", "clean"))
        with torch.no_grad():
            edit = _edit_tokens(corpus.mask[idx], 0, cfg).to(device) if tokenizer.config.source_conditioned else None
            decoded = tokenizer(target, clean, edit).recon.clamp(0, 1)
        mask = corpus.mask[idx].float()[:, None].to(device)
        target, clean, decoded, mask = (_augment(v, cfg.seed + 2, step) for v in (target, clean, decoded, mask))
        _set_lr(opt, step, cfg.tokenizer_lr, cfg, cfg.refiner_steps)
        with step_rng(cfg.seed, step):
            out = ddp(decoded, clean, mask[:, 0], text[idx].to(device))
            loss = _pixel_loss(perceptual, out, target, weight, weight_mean, cfg)
            value = dist.mean_value(optimizer_step(opt, loss, model.parameters()))
        _end_step(step, model, opt, cfg, state_stem, REFINER, value, on_step)
    model.eval()
    return model


def text_embeddings(prompts: list[str], encoder: TextEncoder | None = None) -> torch.Tensor:
    return (encoder or TextEncoder()).encode(prompts)


# ---- the whole fit, stage by stage, into a model folder -------------------------------------
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
