"""`qarad fit` interrupted and resumed: the resumed weights equal an uninterrupted fit's, bit for bit.

The in-process tests drive `fit_tokenizer` / `fit_prior` with tiny models and a checkpoint every
5 steps, crash them from the `on_step` callback after step 12 and run them again, which resumes
from the step-10 train state. Batches, augmentations and prompt dropout are drawn from
(seed, step)-seeded generators, so the resumed run must see exactly what the uninterrupted one saw.
The subprocess test runs the real `qarad fit` (default model sizes, 2 steps per stage).
"""
import json
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_mvtec_tree
from qarad.data.resolution import ResolutionPolicy
from qarad.synthesis import corpus as C
from qarad.synthesis import loops as L
from qarad.synthesis import model as M
from qarad.synthesis.prior import PriorConfig
from qarad.synthesis.refiner import Refiner, RefinerConfig
from qarad.synthesis.tokenizer import TokenizerConfig, VQTokenizer

STEPS, EVERY, CRASH_AFTER = 20, 5, 12  # the crash lands after the step-10 checkpoint, before the step-15 one


def tiny_config(codebook_size: int = 16, **prior_overrides) -> M.FitConfig:
    return M.FitConfig(window=64, corpus_size=16, tokenizer_steps=STEPS, prior_steps=STEPS, batch_size=2,
                       warmup_steps=5, checkpoint_every=EVERY, seed=3,
                       tokenizer=TokenizerConfig(codebook_size=codebook_size, code_dim=8, channels=(8, 16, 16),
                                                 source_conditioned=True),
                       prior=PriorConfig(vocab_size=codebook_size, grid=8, d_model=32, n_layers=1, n_heads=2,
                                         **prior_overrides))


class Crash(RuntimeError):
    """Stands in for a crash (power loss, OOM kill) in the middle of a stage."""


class Steps:
    """on_step callback: records losses and raises Crash once `crash_after` steps have run."""

    def __init__(self, crash_after: int | None = None):
        self.crash_after, self.losses = crash_after, []

    def __call__(self, loss: float) -> None:
        self.losses.append(loss)
        if self.crash_after is not None and len(self.losses) == self.crash_after:
            raise Crash(f"simulated crash after step {self.crash_after}")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"tensors differ after resume: {different}"


def crash_then_resume(run, state: Path):
    """run(state, on_step) once with a crash after CRASH_AFTER steps, then again to completion.

    Returns (model, losses before the crash, losses of the resumed run)."""
    first = Steps(crash_after=CRASH_AFTER)
    with pytest.raises(Crash):
        run(state, first)
    saved = json.loads(state.with_suffix(".json").read_text())["step"]
    assert saved == (CRASH_AFTER // EVERY) * EVERY == 10
    second = Steps()
    model = run(state, second)
    assert len(second.losses) == STEPS - saved, "the rerun should continue from the saved step, not restart"
    return model, first.losses, second.losses


def assert_resumes_exactly(run, tmp_path: Path) -> list[float]:
    """An uninterrupted run and a crashed-then-resumed one: same losses, same weights. -> losses."""
    whole_steps = Steps()
    whole = run(tmp_path / "whole", whole_steps)
    resumed, before, after = crash_then_resume(run, tmp_path / "crashed")
    assert before == whole_steps.losses[:CRASH_AFTER]
    assert after == whole_steps.losses[10:]
    assert_same_weights(whole, resumed)
    return whole_steps.losses


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = make_mvtec_tree(tmp_path_factory.mktemp("fit_resume") / "mvtec", size=(64, 64), n_train=4)
    return sorted((root / "widget" / "train" / "good").glob("*.png"))


@pytest.fixture(scope="module")
def corpus(paths):
    return C.build_corpus(paths, ResolutionPolicy(size=64), tiny_config())


@pytest.fixture
def restarts(monkeypatch):
    """Counts of codes re-seeded by each dead-code restart."""
    counts, original = [], VQTokenizer.restart_dead_codes

    def spy(self, *args, **kwargs):
        counts.append(original(self, *args, **kwargs))
        return counts[-1]

    monkeypatch.setattr(VQTokenizer, "restart_dead_codes", spy)
    return counts


def test_tokenizer_resumes_to_the_uninterrupted_weights(corpus, tmp_path, monkeypatch, restarts):
    # Dead-code restarts every 10 steps, a multiple of checkpoint_every as with the defaults (100 and
    # 100): usage counts are zeroed at each restart, so a resume from a checkpoint loses none of them.
    # One restart falls on the resume point itself (step 10).
    monkeypatch.setattr(L, "DEAD_CODE_EVERY", 10)
    cfg = tiny_config(codebook_size=64)  # more codes than these windows use: some die and restart
    whole_steps = Steps()
    whole = L.fit_tokenizer(corpus, cfg, tmp_path / "whole", on_step=whole_steps)
    assert len(whole_steps.losses) == STEPS
    assert len(restarts) == 2 and sum(restarts) > 0, "the test should exercise dead-code restarts"

    resumed, before, after = crash_then_resume(
        lambda state, cb: L.fit_tokenizer(corpus, cfg, state, on_step=cb), tmp_path / "crashed")
    assert before == whole_steps.losses[:CRASH_AFTER]
    assert after == whole_steps.losses[10:], "the resumed run should see the same batches, lr and codebook"
    assert_same_weights(whole, resumed)


def test_tokenizer_resume_with_dead_code_restarts_between_checkpoints(paths, tmp_path, monkeypatch, restarts):
    # The usage counts since the last restart are part of the train state, so the restart after step 16
    # re-seeds the same codes whether or not the fit was resumed at step 10 in between.
    monkeypatch.setattr(L, "DEAD_CODE_EVERY", 8)  # restarts after steps 8 and 16; the resume point is 10
    cfg = tiny_config(codebook_size=64)  # a codebook larger than one batch's tokens: codes go unused
    corpus = C.build_corpus(paths, ResolutionPolicy(size=64), cfg)
    whole = L.fit_tokenizer(corpus, cfg, tmp_path / "whole")
    assert sum(restarts) > 0
    resumed, _, _ = crash_then_resume(lambda state, cb: L.fit_tokenizer(corpus, cfg, state, on_step=cb),
                                      tmp_path / "crashed")
    assert_same_weights(whole, resumed)


def test_tokenizer_with_an_ema_codebook_resumes_to_the_uninterrupted_weights(paths, tmp_path, monkeypatch, restarts):
    # The EMA counts and sums are buffers of the tokenizer, so they are in its train state; the
    # restart after step 8 resets those of the codes it re-seeds, the resume point is 10, the next restart 16.
    monkeypatch.setattr(L, "DEAD_CODE_EVERY", 8)
    cfg = tiny_config(codebook_size=64)
    cfg = replace(cfg, tokenizer=replace(cfg.tokenizer, ema_decay=0.9))
    corpus = C.build_corpus(paths, ResolutionPolicy(size=64), cfg)
    whole = L.fit_tokenizer(corpus, cfg, tmp_path / "whole")
    assert sum(restarts) > 0
    torch.testing.assert_close(whole.normalized_codebook(), torch.nn.functional.normalize(whole.ema_embed_sum, dim=1))
    resumed, _, _ = crash_then_resume(lambda state, cb: L.fit_tokenizer(corpus, cfg, state, on_step=cb),
                                      tmp_path / "crashed")
    assert {"ema_cluster_size", "ema_embed_sum"} <= set(resumed.state_dict())
    assert_same_weights(whole, resumed)


def test_a_tokenizer_saved_before_ema_codebooks_still_loads_and_its_fit_resumes(tmp_path):
    from conftest import make_tiny_aras
    from qarad.synthesis import model as M

    folder = make_tiny_aras(tmp_path / "legacy", refiner=False)
    for name, drop in (("aras.json", lambda c: c["fit"]["tokenizer"]), ("tokenizer.json", lambda c: c)):
        content = json.loads((folder / name).read_text())
        del drop(content)["ema_decay"]  # as written before the setting existed
        (folder / name).write_text(json.dumps(content))
    config = M.read_config(folder)
    tokenizer = M.load_networks(folder, config).tokenizer  # strict: its weights have no EMA buffers
    assert config.fit.tokenizer.ema_decay == tokenizer.config.ema_decay == 0.0
    assert not any(k.startswith("ema_") for k in tokenizer.state_dict())
    assert M.prepare_folder(folder, config) is False  # the same fit: kept, so `qarad fit` reruns resume it

    # one with an EMA codebook keeps its EMA state beside its weights
    ema = VQTokenizer(replace(tokenizer.config, ema_decay=0.99))
    q = ema.encode(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    ema.ema_update(q.z_e, q.codes)
    M.save_part(tmp_path / "ema", M.TOKENIZER, ema)
    loaded = M.load_tokenizer(tmp_path / "ema")
    assert loaded.config.ema_decay == 0.99
    assert_same_weights(ema, loaded)


def test_a_train_state_without_the_usage_counts_is_refused(corpus, tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    from qarad.checkpoint import CheckpointError

    cfg = replace(tiny_config(), tokenizer_steps=EVERY)
    L.fit_tokenizer(corpus, cfg, tmp_path / "state")
    tensors = load_file(str(tmp_path / "state.safetensors"))
    del tensors["buffer.usage"]  # as written before the counts were saved
    save_file(tensors, str(tmp_path / "state.safetensors"))
    with pytest.raises(CheckpointError, match=r"state\.safetensors: train state holds buffers \[\], "
                                              r"expected \['usage'\]"):
        L.fit_tokenizer(corpus, cfg, tmp_path / "state")


@pytest.fixture(scope="module")
def prior_inputs(corpus):
    cfg = tiny_config()
    torch.manual_seed(0)
    tokenizer = VQTokenizer(cfg.tokenizer).eval()  # untrained: any codes do for fitting a prior
    codes, token_masks = L.encode_corpus(tokenizer, corpus, cfg)
    return codes, token_masks, L.text_embeddings(corpus.prompts)


def test_prior_resumes_to_the_uninterrupted_weights(prior_inputs, tmp_path):
    codes, token_masks, text = prior_inputs
    cfg = tiny_config()
    assert_resumes_exactly(lambda state, cb: L.fit_prior(codes, token_masks, text, cfg, state, on_step=cb), tmp_path)


def test_a_continued_prior_with_real_samples_resumes_to_the_uninterrupted_weights(prior_inputs, tmp_path):
    """`qarad fit --init`: the prior starts from a fitted one, a share of every batch is real samples;
    a resumed run loads its train state over the initial weights and ends where an uninterrupted one does."""
    from qarad.synthesis.prior import Prior

    codes, token_masks, text = prior_inputs
    cfg = replace(tiny_config(), real_share=0.5)
    torch.manual_seed(7)
    init = Prior(cfg.prior)
    losses = assert_resumes_exactly(lambda state, cb: L.fit_prior(codes, token_masks, text, cfg, state, on_step=cb,
                                                                  n_real=4, init=init), tmp_path)
    fresh = Steps()
    L.fit_prior(codes, token_masks, text, cfg, tmp_path / "fresh", on_step=fresh, n_real=4)
    assert fresh.losses[0] != losses[0], "the continued prior should start from the given weights"


def test_prior_with_dropout_resumes_to_the_uninterrupted_weights(prior_inputs, tmp_path):
    # Dropout draws from torch's global RNG, which each step seeds from (seed, step) (training.step_rng).
    codes, token_masks, text = prior_inputs
    cfg = tiny_config(dropout=0.1)
    whole = L.fit_prior(codes, token_masks, text, cfg, tmp_path / "whole")
    resumed, _, _ = crash_then_resume(
        lambda state, cb: L.fit_prior(codes, token_masks, text, cfg, state, on_step=cb), tmp_path / "crashed")
    assert_same_weights(whole, resumed)


def test_refiner_resumes_to_the_uninterrupted_weights(corpus, tmp_path):
    cfg = replace(tiny_config(), refiner_steps=STEPS, refiner=RefinerConfig(channels=(8, 16, 16)))
    torch.manual_seed(0)
    tokenizer = VQTokenizer(cfg.tokenizer).eval()
    text = L.text_embeddings(corpus.prompts)
    assert_resumes_exactly(lambda state, cb: L.fit_refiner(tokenizer, corpus, text, cfg, state, on_step=cb),
                           tmp_path)
    # it learns: over the whole corpus (a step's loss sees a batch of 2, too noisy to compare two steps)
    torch.manual_seed(cfg.seed)  # the initial weights, as fit_refiner draws them
    untrained = Refiner(cfg.refiner).eval()
    trained = L.fit_refiner(tokenizer, corpus, text, cfg, tmp_path / "again")
    assert _refiner_error(trained, tokenizer, corpus, text, cfg) < _refiner_error(untrained, tokenizer, corpus,
                                                                                  text, cfg)


@torch.no_grad()
def _refiner_error(refiner, tokenizer, corpus, text, cfg) -> float:
    """Mean absolute error of the refined encode/decode against the renders, inside the masks."""
    idx = torch.arange(len(corpus.prompts))
    target, clean = corpus.images(idx, "defect"), corpus.images(idx, "clean")
    decoded = tokenizer(target, clean, L._edit_tokens(corpus.mask[idx], 0, cfg)).recon.clamp(0, 1)
    mask = corpus.mask[idx].float()
    out = refiner(decoded, clean, mask, text)
    return float(((out - target).abs() * mask[:, None]).sum() / mask.sum().clamp_min(1))


# --- the real command, default model sizes, two steps per stage ---------------------------------

MODEL_FILES = ["aras.json", "timings.json"] + [f"{stem}.{ext}" for stem in ("tokenizer", "prior", "refiner",
                                                                            "dual_encoder")
                                                for ext in ("safetensors", "json")]


def _fit(data: Path, out: Path, prior_steps: int = 2, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qarad.cli", "fit", "--data", str(data), "--category", "widget",
                           "--out", str(out), "--size", "64", "--corpus-size", "8", "--tokenizer-steps", "2",
                           "--prior-steps", str(prior_steps), "--refiner-steps", "2", "--qaw-steps", "2", *extra],
                          capture_output=True, text=True, timeout=600)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fit_command_writes_a_model_and_a_rerun_is_a_no_op(tmp_path):
    data = make_mvtec_tree(tmp_path / "mvtec", size=(64, 64), n_train=4)
    out = tmp_path / "model"
    first = _fit(data, out)
    assert first.returncode == 0, first.stderr
    for name in MODEL_FILES:
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    assert set(json.loads((out / "timings.json").read_text())) >= {"corpus", "tokenizer", "prior", "refiner",
                                                                   "dual_encoder"}
    before = _snapshot(out)

    again = _fit(data, out)
    assert again.returncode == 0, again.stderr
    assert not any(f"fit {i}/5" in again.stderr for i in (2, 3, 4, 5)), "a finished fit should not retrain"
    assert _snapshot(out) == before, "rerunning a finished fit changed files"

    other = _fit(data, out, prior_steps=3)
    assert other.returncode == 2
    message = other.stderr.strip().splitlines()[-1]
    assert str(out) in message and "other settings" in message
    assert "Traceback" not in other.stderr
    assert _snapshot(out) == before


def test_fit_source_conditioned_makes_a_model_that_synthesizes_locally(tmp_path):
    from conftest import assert_synthesizes_locally
    from qarad.synthesis.pipeline import ARAS

    data = make_mvtec_tree(tmp_path / "mvtec", size=(64, 64), n_train=4)
    run = _fit(data, tmp_path / "model", 2, "--source-conditioned")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "model" / "tokenizer.json").read_text())["source_conditioned"] is True
    assert_synthesizes_locally(ARAS.load(tmp_path / "model"), (64, 64), (20, 24, 30, 40))


def test_tokenizer_weights_defect_pixels_and_their_edge_only_on_the_defect_half():
    import torch

    from qarad.synthesis.corpus import Corpus
    from qarad.synthesis.loops import _pixel_weights

    mask = torch.zeros(4, 16, 16, dtype=torch.uint8)
    mask[:, 8, 8] = 1
    corpus = Corpus(clean=torch.zeros(4, 16, 16, 3, dtype=torch.uint8), defect=torch.zeros(4, 16, 16, 3, dtype=torch.uint8),
                    mask=mask, prompts=["a"] * 4, families=["scratch"] * 4)
    w = _pixel_weights(corpus, torch.arange(4), half=2, defect_weight=10.0)
    assert w.shape == (4, 1, 16, 16)
    assert torch.all(w[:2] == 1.0)  # clean windows: plain reconstruction
    assert torch.all(w[2:, 0, 6:11, 6:11] == 11.0) and w[2:].sum() == 2 * (256 + 25 * 10)
