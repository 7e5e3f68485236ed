"""Past one machine: data-parallel `qarad fit` under torchrun (2 gloo processes on the CPU) and
merging `qarad synth --shard i/n` folders written apart.

Two processes each take half of every global batch and DDP averages their gradients, so they fit
what one process fits on the same global batches, up to float rounding (the reductions add in
another order): the logged losses agree to ~1e-7. AdamW divides each step by the gradient's own
running scale, so a weight whose gradient is near zero moves by up to the learning rate (3e-4) in
a direction the rounding picks: seen once, 2.1e-4 on one bias after 20 steps. Hence two checks on
the weights: every element within MAX_DIFF (a few such steps), and the mean within MEAN_DIFF.
The launches run tests/scale_worker.py through torch.distributed.run as a subprocess.
"""
import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_mvtec_tree
from qarad import checkpoint
from qarad.cli import main
from qarad.testing import make_synth_setup
from qarad.data.resolution import ResolutionPolicy
from qarad.synthesis import corpus as C
from qarad.synthesis import loops as L
from qarad.synthesis import model as M
from qarad.synthesis.prior import PriorConfig
from qarad.synthesis.tokenizer import TokenizerConfig, VQTokenizer

STEPS, EVERY, CRASH_AFTER = 20, 5, 12  # a crash after step 12 resumes from the step-10 train state
DEAD_CODE_EVERY = 10  # dead-code restarts inside the fit (after steps 10 and 20): usage and z_e gathered
LOSS_ATOL = 1e-5
MAX_DIFF, MEAN_DIFF = 2e-3, 1e-6
WORKER = Path(__file__).with_name("scale_worker.py")


def fit_config() -> M.FitConfig:
    return M.FitConfig(window=64, corpus_size=16, tokenizer_steps=STEPS, prior_steps=STEPS, batch_size=4,
                       warmup_steps=5, checkpoint_every=EVERY, seed=3,
                       tokenizer=TokenizerConfig(codebook_size=64, code_dim=8, channels=(8, 16, 16),
                                                 source_conditioned=True),
                       prior=PriorConfig(vocab_size=64, grid=8, d_model=32, n_layers=1, n_heads=2))


def ema_config() -> M.FitConfig:
    """fit_config() with an EMA codebook: its per-code sums are all-reduced, every process keeps the same codebook."""
    cfg = fit_config()
    return replace(cfg, tokenizer=replace(cfg.tokenizer, ema_decay=0.9))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, n: int = 2) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "QARAD_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *args]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


class Steps:
    def __init__(self, crash_after: int | None = None):
        self.crash_after, self.losses = crash_after, []

    def __call__(self, loss: float) -> None:
        self.losses.append(loss)
        if len(self.losses) == self.crash_after:
            raise KeyboardInterrupt  # stands in for a crash; not an Exception, so nothing swallows it


def assert_close(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    assert sorted(own) == sorted(weights)
    diff = torch.cat([(own[k].float() - weights[k].float()).abs().flatten() for k in own])
    assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF, f"weights differ: max {diff.max():.1e}, mean {diff.mean():.1e}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The corpus and prior inputs on disk (for the workers) and the one-process fits of both stages."""
    base = tmp_path_factory.mktemp("scale")
    root = make_mvtec_tree(base / "mvtec", size=(64, 64), n_train=4)
    paths = sorted((root / "widget" / "train" / "good").glob("*.png"))
    cfg = fit_config()
    corpus = C.build_corpus(paths, ResolutionPolicy(size=64), cfg)
    C.save_corpus(base / "corpus", corpus)
    torch.manual_seed(0)
    codes, token_masks = L.encode_corpus(VQTokenizer(cfg.tokenizer).eval(), corpus, cfg)
    text = L.text_embeddings(corpus.prompts)
    checkpoint.save(base / "prior_inputs", {"codes": codes, "token_masks": token_masks.to(torch.uint8), "text": text},
                    {})
    return base, corpus, (codes, token_masks, text)


@pytest.fixture(scope="module")
def one_process(inputs, tmp_path_factory):
    base, corpus, (codes, token_masks, text) = inputs
    out, losses = tmp_path_factory.mktemp("one"), {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L, "DEAD_CODE_EVERY", DEAD_CODE_EVERY)
        losses["tokenizer"] = Steps()
        tokenizer = L.fit_tokenizer(corpus, fit_config(), out / "tokenizer", losses["tokenizer"])
        losses["tokenizer_ema"] = Steps()
        tokenizer_ema = L.fit_tokenizer(corpus, ema_config(), out / "tokenizer_ema", losses["tokenizer_ema"])
    losses["prior"] = Steps()
    prior = L.fit_prior(codes, token_masks, text, fit_config(), out / "prior", losses["prior"])
    return ({"tokenizer": tokenizer, "tokenizer_ema": tokenizer_ema, "prior": prior},
            {k: v.losses for k, v in losses.items()})


def test_two_processes_fit_what_one_fits_and_resume_in_one(inputs, one_process, tmp_path, monkeypatch):
    base, corpus, _ = inputs
    models, losses = one_process
    torchrun(str(WORKER), str(base), str(tmp_path), "tokenizer:tokenizer", "prior:prior",
             f"tokenizer:crashed:{CRASH_AFTER}", "tokenizer_ema:tokenizer_ema")
    for stage in ("tokenizer", "prior", "tokenizer_ema"):
        assert_close(models[stage].state_dict(), checkpoint.read_tensors(tmp_path / f"{stage}-weights"))
        two = json.loads((tmp_path / f"{stage}-losses.json").read_text())
        assert np.allclose(two, losses[stage], atol=LOSS_ATOL), "the logged loss is the global batch's"

    # the 2-process train state (unwrapped module, step 10) resumes in one process
    assert json.loads((tmp_path / "crashed.json").read_text())["step"] == 10
    monkeypatch.setattr(L, "DEAD_CODE_EVERY", DEAD_CODE_EVERY)
    rest = Steps()
    resumed = L.fit_tokenizer(corpus, fit_config(), tmp_path / "crashed", rest)
    assert len(rest.losses) == STEPS - 10
    assert_close(resumed.state_dict(), models["tokenizer"].state_dict())


def test_a_one_process_train_state_resumes_in_two(inputs, one_process, tmp_path):
    base, _, (codes, token_masks, text) = inputs
    models, losses = one_process
    with pytest.raises(KeyboardInterrupt):
        L.fit_prior(codes, token_masks, text, fit_config(), tmp_path / "crashed", Steps(crash_after=CRASH_AFTER))
    torchrun(str(WORKER), str(base), str(tmp_path), "prior:crashed")
    assert json.loads((tmp_path / "crashed-losses.json").read_text()) == pytest.approx(losses["prior"][10:],
                                                                                      abs=LOSS_ATOL)
    assert_close(models["prior"].state_dict(), checkpoint.read_tensors(tmp_path / "crashed-weights"))


def test_batch_that_does_not_split_over_the_processes_is_refused(monkeypatch, inputs):
    from qarad import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="--batch-size 4 does not split over 3 processes"):
        L.fit_tokenizer(inputs[1], fit_config(), inputs[0] / "never")


def test_device_names(monkeypatch):
    from qarad.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    for name in ("tpu", "cuda:x", "cuda:-1", "cuda:", 0):  # refused before torch.device sees them
        with pytest.raises(ValueError, match="cpu, cuda, cuda:N or auto"):
            resolve_device(name)


def test_fit_command_under_torchrun_writes_one_model_like_one_process(tmp_path):
    data = make_mvtec_tree(tmp_path / "mvtec", size=(64, 64), n_train=4)
    args = ["fit", "--data", str(data), "--category", "widget", "--size", "64", "--corpus-size", "8",
            "--tokenizer-steps", "3", "--prior-steps", "3", "--qaw-steps", "2", "--batch-size", "4", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    run = torchrun("-m", "qarad", *args, "--out", str(tmp_path / "two"))
    assert run.stdout.count("ARAS model:") == 1, run.stdout  # rank 0 reports, the other is quiet
    assert (tmp_path / "two" / "aras.json").read_text() == (tmp_path / "one" / "aras.json").read_text()
    for part in ("tokenizer", "prior", "dual_encoder"):
        assert_close(*(checkpoint.read_tensors(tmp_path / w / part) for w in ("one", "two")))


# --- sharded synthesis on several machines, then one merge -------------------------------------
@pytest.fixture(scope="module")
def synth_setup(tmp_path_factory):
    return make_synth_setup(tmp_path_factory.mktemp("merge"), [(80, 120), (64, 64)])


def _synth(setup, out: Path, *extra: str) -> int:
    base, model, images = setup
    return main(["synth", str(model), "--images", str(images), "--prompts", "a thin dark scratch", "a round hole",
                 "--auto-masks", "--n", "5", "--out", str(out), "--seed", "4", *extra])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*s/*.png"))}


@pytest.mark.usefixtures("one_thread")
def test_shards_made_apart_merge_into_the_single_run(synth_setup, tmp_path, capsys):
    assert _synth(synth_setup, tmp_path / "single") == 0
    for i in range(3):  # three "machines", one shard folder each
        assert _synth(synth_setup, tmp_path / f"shard{i}", "--shard", f"{i}/3") == 0
    assert main(["merge", *(str(tmp_path / f"shard{i}") for i in (2, 0)), "--out", str(tmp_path / "merged")]) == 0
    assert "planned samples are in none of the folders yet" in capsys.readouterr().out  # shard 1 not merged
    assert main(["merge", str(tmp_path / "shard1"), "--out", str(tmp_path / "merged")]) == 0  # into itself: resumes
    single = (tmp_path / "single" / "manifest.jsonl").read_text()
    assert (tmp_path / "merged" / "manifest.jsonl").read_text() == single
    assert _files(tmp_path / "merged") == _files(tmp_path / "single")
    assert (tmp_path / "merged" / "gallery.html").is_file()

    # a two-way split merged into one of its own folders gives the same manifest
    for i in range(2):
        assert _synth(synth_setup, tmp_path / f"half{i}", "--shard", f"{i}/2") == 0
    assert main(["merge", str(tmp_path / "half0"), str(tmp_path / "half1"), "--out", str(tmp_path / "half0")]) == 0
    assert (tmp_path / "half0" / "manifest.jsonl").read_text() == single


def test_merge_refuses_shards_of_another_job(synth_setup, tmp_path, capsys):
    assert _synth(synth_setup, tmp_path / "a", "--shard", "0/2") == 0
    assert _synth(synth_setup, tmp_path / "b", "--shard", "1/2", "--temperature", "0.9") == 0
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and "'sampler'" in err
    assert main(["merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 2
    assert "not a qarad synth output" in capsys.readouterr().err
