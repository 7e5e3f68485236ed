"""The ARAS training loops: tokenizer, prior, refiner (DESIGN.md 4.1-4.3; the refiner is this
project's addition, see refiner.py), each on the fitting corpus (corpus.py).

Each loop is resumable: every `checkpoint_every` steps the model and optimizer state are saved, and
a rerun continues from the last saved step. Batches are drawn from a generator seeded by (seed,
step), so a resumed fit sees the same batches as an uninterrupted one. Under torchrun the loops
train data-parallel, each process on its slice of every global batch; ../distributed.py owns all
of that, the loops only call it. `real_share` of every tokenizer and prior batch is drawn from the
corpus's real samples.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..backbone import Backbone, BackboneConfig
from ..text import TextEncoder
from ..training import load_state, optimizer_step, save_state, step_rng
from .aras import token_mask_from_pixels
from .corpus import Corpus
from .model import PRIOR, REFINER, TOKENIZER, FitConfig
from .prior import Prior
from .prior import loss_terms as prior_loss_terms
from .refiner import Refiner
from .tokenizer import VQTokenizer

DEAD_CODE_EVERY = 100  # steps between dead-code restarts


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


def _pixel_stage(build: Callable[[], torch.nn.Module], cfg: FitConfig, state_stem: Path,
                 device: str | torch.device, buffers: dict | None = None):
    """The setup the two pixel-space stages (tokenizer, refiner) share: the module built from the
    seed on `device`, its AdamW, the perceptual-loss backbone, and the step a saved train state
    (with `buffers`) resumes at. -> (device, module, optimizer, perceptual, start)."""
    device = torch.device(device)
    dist.check_batch(cfg.batch_size)
    torch.manual_seed(cfg.seed)
    model = build().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.tokenizer_lr, betas=(0.9, 0.95), weight_decay=0.0)
    perceptual = Backbone(BackboneConfig(strides=(8,))).to(device)
    start = 0
    if state_stem.with_suffix(".safetensors").is_file():
        start = load_state(state_stem, model, opt, buffers=buffers)[0]
    return device, model, opt, perceptual, start


def fit_tokenizer(corpus: Corpus, cfg: FitConfig, state_stem: Path,
                  on_step: Callable[[float], None] | None = None, device: str | torch.device = "cpu") -> VQTokenizer:
    """Train the VQ tokenizer on `device`; under torchrun each process takes its slice of every
    global batch (distributed.py). Returns the model on `device`, in eval mode."""
    # code usage since the last dead-code restart: part of the train state, so a resume between two
    # restarts re-seeds the same codes as an uninterrupted fit
    usage = torch.zeros(cfg.tokenizer.codebook_size, dtype=torch.long)
    device, model, opt, perceptual, start = _pixel_stage(lambda: VQTokenizer(cfg.tokenizer), cfg, state_stem, device,
                                                         {"usage": usage})
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
    device, model, opt, perceptual, start = _pixel_stage(lambda: Refiner(cfg.refiner), cfg, state_stem, device)
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
