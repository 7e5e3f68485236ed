"""Few-shot with real defects end to end on tiny data: `qarad fit --init --real-defects` continues a
model whose prompts then include the real types (`qarad synth --prompts blowhole`), and `qarad train
--real-defects` + `qarad eval` leave exactly the shots out of the test split and say so."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_mvtec_tree, make_tiny_aras
from qarad.cli import main
from qarad.testing import make_defect_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("fewshot")
    root = make_mvtec_tree(base / "mvtec", size=(64, 64), n_train=4, n_good=3, n_defect=6)
    shots = make_defect_folder(base / "blowhole", n=3, size=(64, 64))
    model = make_tiny_aras(base / "init", refiner=False,
                           corpus_from=sorted((root / "widget" / "train" / "good").glob("*.png")))
    return base, root, shots, model


def _fit(base, root, shots, model, out, *extra):
    return main(["fit", "--data", str(root), "--category", "widget", "--out", str(out), "--init", str(model),
                 "--real-defects", str(shots), "--shots", "2", "--prior-steps", "3", "--batch-size", "4",
                 "--real-samples-per-shot", "4", *extra])


def test_fit_init_with_real_defects_learns_the_type_and_synth_draws_it(data, capsys):
    from qarad.synthesis import model as M
    from qarad.synthesis.corpus import load_corpus

    base, root, shots, init = data
    out = base / "fewshot-model"
    assert _fit(base, root, shots, init, out, "--defect-prompt", "blowhole=a small round dark blowhole") == 0
    assert "qarad synth --prompts blowhole" in capsys.readouterr().out
    config = M.read_config(out)
    assert config.real_types == ("blowhole",) and config.data.init == str(init.resolve())
    assert len(config.real_defects.defects) == 2
    assert config.fit.prior_steps == 3 and config.fit.tokenizer == M.read_config(init).fit.tokenizer
    corpus = load_corpus(out / M.CORPUS)
    assert corpus.n_real == 8 and len(corpus.prompts) == 8 + 8  # the model's 8 renders + 2 shots x 4
    assert set(corpus.prompts[-8:]) == {"a small round dark blowhole"}
    # the tokenizer and QAW scorer are the model's own; the prior trained on from the model's
    for part in (M.TOKENIZER, M.DUAL_ENCODER):
        assert (out / f"{part}.safetensors").read_bytes() == (init / f"{part}.safetensors").read_bytes()
    before, after = M.load_prior(init).state_dict(), M.load_prior(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    synth = base / "synth-blowhole"
    assert main(["synth", str(out), "--images", str(root / "widget" / "train" / "good"), "--prompts", "blowhole",
                 "a thin dark scratch", "--auto-masks", "--n", "4", "--out", str(synth)]) == 0
    entries = [json.loads(line) for line in (synth / "manifest.jsonl").read_text().splitlines()]
    assert [e.get("real_type") for e in entries] == ["blowhole", None, "blowhole", None]
    assert entries[0]["prompt"] == "a small round dark blowhole"  # the name is the type's fitted prompt
    from PIL import Image

    real_area = np.mean([np.asarray(Image.open(d.mask)).astype(bool).sum() for d in config.real_defects.defects])
    for e in entries[::2]:  # the real type's masks take the real masks' shape: a square as large (+-25%)
        from qarad.synthesis.jobs import read_settings

        assert read_settings(synth)["prompts"] == ["a small round dark blowhole", "a thin dark scratch"]
        changed = np.asarray(Image.open(synth / e["mask"])) > 0
        assert changed.any() and changed.sum() < 2.5 * real_area

    # a rerun is a no-op; a changed shot choice is a different fit
    assert _fit(base, root, shots, init, out, "--defect-prompt", "blowhole=a small round dark blowhole") == 0
    assert _fit(base, root, shots, init, out, "--shot-seed", "5") == 2
    assert "other settings" in capsys.readouterr().err


def test_a_fit_from_scratch_puts_the_shots_in_its_corpus(data, capsys):
    """Without --init every stage is fitted, the real shots' samples last in the corpus (default model
    sizes, two steps per stage)."""
    from qarad.synthesis import model as M
    from qarad.synthesis.corpus import load_corpus

    base, root, shots, _ = data
    out = base / "scratch"
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(out), "--size", "64",
                 "--corpus-size", "6", "--tokenizer-steps", "2", "--prior-steps", "2", "--qaw-steps", "2",
                 "--real-defects", str(shots), "--shots", "1", "--real-samples-per-shot", "3"]) == 0
    corpus = load_corpus(out / M.CORPUS)
    assert corpus.n_real == 3 and corpus.prompts[-3:] == ["blowhole"] * 3 and len(corpus.prompts) == 9
    assert M.read_config(out).real_types == ("blowhole",) and M.read_config(out).data.init is None
    assert all(M.has(out, part) for part in (M.TOKENIZER, M.PRIOR, M.DUAL_ENCODER))


def test_fit_init_refuses_what_it_cannot_change(data, capsys):
    base, root, shots, init = data
    assert _fit(base, root, shots, init, base / "bad1", "--window", "32") == 2
    assert "--window: a fit continuing --init" in capsys.readouterr().err
    assert main(["fit", "--data", str(root), "--category", "widget", "--out", str(base / "bad2"),
                 "--init", str(init)]) == 2
    assert "give --real-defects" in capsys.readouterr().err
    assert _fit(base, root, shots, init, base / "bad3", "--shots", "0") == 2
    assert "--shots must be at least 1" in capsys.readouterr().err
    assert _fit(base, root, shots, init, base / "bad4", "--defect-prompt", "pit=a pit") == 2
    assert "--defect-prompt pit: no such defect type" in capsys.readouterr().err


def test_a_plain_fit_labels_real_types_for_the_qaw_encoder():
    from qarad.defects.vocab import FAMILIES
    from qarad.synthesis.corpus import Corpus, family_labels

    z = torch.zeros(5, 8, 8, 3, dtype=torch.uint8)
    corpus = Corpus(z, z, z[..., 0], ["a thin scratch", "a hole", "crack", "blowhole", "blowhole"],
                    ["scratch", "hole", "crack", "blowhole", "blowhole"], n_real=3)
    assert family_labels(corpus).tolist() == [0, 2, FAMILIES.index("crack"), len(FAMILIES), len(FAMILIES)]


def test_real_batches_take_their_share_and_none_change_nothing():
    from qarad.synthesis.loops import _batch

    plain = torch.randint(100, (8,), generator=torch.Generator().manual_seed(3 * 1_000_003 + 7))
    assert torch.equal(_batch(100, 8, 3, 7), plain)  # as before real samples existed
    idx = _batch(100, 8, 3, 7, n_real=10, real_share=0.25)
    assert (idx[:6] < 90).all() and (idx[6:] >= 90).all()


def test_train_with_real_defects_and_eval_leave_out_exactly_the_shots(data, capsys):
    from qarad import runs

    base, root, _, _ = data
    run = base / "run"
    assert main(["train", "--method", "qarad", "--negatives", "perlin", "--perlin-samples", "4", "--steps", "3",
                 "--size", "64", "--data", str(root), "--category", "widget", "--out", str(run),
                 "--real-defects", str(root / "widget"), "--shots", "1", "--real-weight", "2"]) == 0
    assert "real defect shots: 2 images of 2 types (crack, scratch)" in capsys.readouterr().out
    config = runs.read_config(run)
    real = runs.RunData(**config["data"]).real
    assert config["detector"]["negatives"] == ["perlin", "real"] and config["detector"]["real_weight"] == 2.0
    assert len(real.defects) == 2

    assert main(["eval", str(run)]) == 0
    assert "the 2 real defect images this run trained on" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["excluded_real_defects"] == {"count": 2, "images": sorted(d.image for d in real.defects)}
    assert metrics["overall"]["n_images"] == 3 + 6 - 2
    assert {t: m["n_images"] for t, m in metrics["per_type"].items()} == {"crack": 3 + 2, "scratch": 3 + 2}
    scored = [line.split(",")[0] for line in (run / "scores.csv").read_text().splitlines()[1:]]
    assert not set(scored) & {d.image for d in real.defects}
    html = (run / "report.html").read_text()  # the report says which shots were left out, and why
    assert "<h2>Real defect shots left out of the test split</h2>" in html and "7 test images (2 real" in html
    assert "the 2 below were left out of the test split" in html and "trained on real defect shots" in html
    for d in real.defects:
        assert f"<td class='l'>{d.defect_type}/{Path(d.image).name}</td>" in html and d.image not in html


def test_train_refuses_real_defects_where_they_do_not_belong(data, capsys):
    base, root, _, _ = data
    assert main(["train", "--method", "patchcore", "--size", "64", "--data", str(root), "--category", "widget",
                 "--out", str(base / "pc"), "--real-defects", str(root / "widget")]) == 2
    assert "PatchCore learns from normal images only" in capsys.readouterr().err


def test_a_run_written_before_real_weight_still_holds(tmp_path):
    from qarad import api, runs
    from qarad.detection.segmenter import SegmenterConfig

    make_mvtec_tree(tmp_path / "d")
    method, config = api.run_config(tmp_path / "d", "widget", SegmenterConfig(negatives=("perlin",)))
    old = json.loads(json.dumps(config))
    del old["detector"]["real_weight"]
    del old["data"]["real_defects"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runs.CONFIG).write_text(json.dumps({"qarad_version": "0", **old}))
    assert runs.holds(tmp_path / "run", config)
