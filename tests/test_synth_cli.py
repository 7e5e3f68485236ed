"""`qarad synth` / `qarad score` end to end on a tiny random ARAS model: locality, determinism, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_aras, texture
from qarad.owned import is_bookkeeping
from qarad.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    model = make_tiny_aras(base / "model")
    rng = np.random.default_rng(0)
    images, masks = base / "images", base / "masks"
    images.mkdir()
    masks.mkdir()
    for i, size in enumerate([(80, 120), (64, 64), (150, 90)]):  # any size and aspect ratio
        Image.fromarray(texture(rng, size)).save(images / f"{i}.png")
        m = np.zeros(size, np.uint8)
        m[20:34, 30:41] = 255
        Image.fromarray(m).save(masks / f"{i}.png")
    return base, model, images, masks


def _synth(model, images, out, *extra):
    return main(["synth", str(model), "--images", str(images), "--prompts", "a thin dark scratch", "a round hole",
                 "--n", "4", "--out", str(out), "--seed", "3", *extra])


def test_pixels_outside_the_dilated_mask_are_bit_identical(setup):
    base, model, images, masks = setup
    out = base / "out_masks"
    assert _synth(model, images, out, "--masks", str(masks)) == 0
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["id"] for e in entries] == [0, 1, 2, 3]
    for e in entries:
        src = np.asarray(Image.open(e["source"]).convert("RGB"))
        new = np.asarray(Image.open(out / e["image"]))
        changed = np.asarray(Image.open(out / e["mask"])) > 0
        user = np.asarray(Image.open(e["user_mask"])) > 0
        grown = np.zeros_like(user)
        ys, xs = np.nonzero(user)
        d = 4  # SamplerConfig.dilate_px
        grown[max(ys.min() - d, 0):ys.max() + d + 1, max(xs.min() - d, 0):xs.max() + d + 1] = True
        assert np.array_equal(new[~grown], src[~grown])
        assert not changed[~grown].any()
        assert e["steps"] > 0 and e["prompt"] in ("a thin dark scratch", "a round hole")


def test_same_seed_gives_identical_files(setup):
    base, model, images, _ = setup
    a, b = base / "det_a", base / "det_b"
    assert _synth(model, images, a, "--auto-masks") == 0
    assert _synth(model, images, b, "--auto-masks") == 0
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    for f in sorted((a / "images").iterdir()):
        assert f.read_bytes() == (b / "images" / f.name).read_bytes()


def test_killed_synth_resumes_to_the_uninterrupted_result(setup):
    base, model, images, _ = setup
    whole, killed = base / "whole", base / "killed"
    args = [sys.executable, "-m", "qarad.cli", "synth", str(model), "--images", str(images), "--prompts",
            "a thin dark scratch", "--auto-masks", "--n", "8", "--seed", "5", "--out"]
    subprocess.run(args + [str(whole)], check=True, capture_output=True)
    proc = subprocess.Popen(args + [str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "manifest.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not manifest.exists() or len(manifest.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(manifest.read_text().splitlines())
    assert 2 <= done_before < 8, "the kill should land mid-run"
    subprocess.run(args + [str(killed)], check=True, capture_output=True)
    assert manifest.read_bytes() == (whole / "manifest.jsonl").read_bytes()
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (whole / sub).iterdir())
        assert sorted(p.name for p in (killed / sub).iterdir() if not p.name.startswith(".")) == names
        assert all((whole / sub / n).read_bytes() == (killed / sub / n).read_bytes() for n in names)


def test_score_writes_a_score_into_every_line(setup):
    base, model, images, masks = setup
    out = base / "to_score"
    assert _synth(model, images, out, "--masks", str(masks)) == 0
    assert main(["score", str(out)]) == 0
    scores = [json.loads(line)["score"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(scores) == 4 and all(-1.0 <= s <= 1.0 for s in scores)


def test_synth_writes_a_gallery_that_score_fills_in(setup):
    base, model, images, masks = setup
    out = base / "gallery"
    assert _synth(model, images, out, "--masks", str(masks)) == 0
    html = (out / "gallery.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == 4 and "http" not in html
    assert "\u201ca thin dark scratch\u201d" in html and "\u201ca round hole\u201d" in html
    assert "Not scored yet" in html and "(not scored)" in html
    assert main(["score", str(out)]) == 0
    html = (out / "gallery.html").read_text()
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    best = max(entries, key=lambda e: e["score"])
    assert "Not scored yet" not in html and f"#{best['id']} (QAW {best['score']:.2f})" in html
    assert html.index(f"#{best['id']} (QAW") < min(html.index(f"#{e['id']} (QAW") for e in entries if e is not best)
    assert "<th class=r>mean QAW</th>" in html
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and not is_bookkeeping(p.name)]  # written atomically


@pytest.mark.parametrize("prompt,problem", [("", "prompt is empty"), ("   ", "prompt is empty"),
                                            ("x" * 10_000, "300"), ("bad\x1bprompt", "control character")])
def test_bad_prompts_are_refused_before_any_output(setup, prompt, problem, capsys):
    base, model, images, _ = setup
    out = base / "bad_prompt"
    assert main(["synth", str(model), "--images", str(images), "--prompts", prompt, "--auto-masks",
                 "--out", str(out)]) == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()


def test_non_ascii_prompt_is_fine(setup):
    base, model, images, _ = setup
    assert main(["synth", str(model), "--images", str(images), "--prompts", "Kratzer, länglich und dunkel",
                 "--auto-masks", "--n", "1", "--out", str(base / "umlaut")]) == 0


def test_output_folder_with_another_run_is_refused(setup, capsys):
    base, model, images, _ = setup
    out = base / "other"
    assert _synth(model, images, out, "--auto-masks") == 0
    assert main(["synth", str(model), "--images", str(images), "--prompts", "a crack", "--auto-masks",
                 "--out", str(out)]) == 2
    assert "different settings" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["synth", "fit"])
def test_out_below_a_regular_file_names_the_file(setup, tmp_path, capsys, verb):
    from conftest import make_mvtec_tree

    base, model, images, _ = setup
    (tmp_path / "file.txt").write_text("a regular file\n")
    out = tmp_path / "file.txt" / "sub"
    argv = {"synth": ["synth", str(model), "--images", str(images), "--prompts", "a scratch", "--auto-masks",
                      "--n", "1", "--out", str(out)],
            "fit": ["fit", "--data", str(make_mvtec_tree(base / "fit_data", size=(64, 64), n_train=2)),
                    "--category", "widget", "--out", str(out), "--size", "64", "--corpus-size", "4"]}[verb]
    assert main(argv) == 2
    assert f"cannot create output folder {out}: {tmp_path / 'file.txt'} is a file, not a folder" in \
        capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_fit_on_a_bad_image_leaves_no_model_folder(tmp_path, capsys):
    from conftest import make_mvtec_tree

    data = make_mvtec_tree(tmp_path / "data", size=(64, 64), n_train=2)
    bad = data / "widget" / "train" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    out = tmp_path / "model"
    assert main(["fit", "--data", str(data), "--category", "widget", "--out", str(out), "--size", "64",
                 "--corpus-size", "4"]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()


def test_fit_refuses_a_zoom_below_one_before_any_work(tmp_path, capsys):
    from conftest import make_mvtec_tree

    data = make_mvtec_tree(tmp_path / "data", size=(64, 64), n_train=2)
    out = tmp_path / "model"
    assert main(["fit", "--data", str(data), "--category", "widget", "--out", str(out), "--max-zoom", "0.5"]) == 2
    assert "--max-zoom: the value must be a finite number >= 1" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("where", [(), ("fit",), ("fit", "tokenizer"), ("fit", "prior"), ("policy",), ("data",)])
def test_aras_json_with_an_unknown_key_is_refused(setup, tmp_path, capsys, where):
    import shutil

    base, model, images, _ = setup
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    meta = json.loads((copy / "aras.json").read_text())
    part = meta
    for key in where:
        part = part[key]
    part["bogus_key"] = 1
    (copy / "aras.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert main(["synth", str(copy), "--images", str(images), "--prompts", "a scratch", "--auto-masks",
                 "--n", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(copy / "aras.json") in err and "bogus_key" in err
    assert not out.exists()


def test_workers_split_the_job_and_merge_to_the_single_process_result(setup, one_thread):
    base, model, images, masks = setup
    single, parallel = base / "w1", base / "w2"
    assert _synth(model, images, single, "--masks", str(masks)) == 0
    assert _synth(model, images, parallel, "--masks", str(masks), "--workers", "2") == 0
    one = (single / "manifest.jsonl").read_text().splitlines()
    two = (parallel / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(a)["id"] for a in two] == [0, 1, 2, 3]
    assert [json.loads(a)["seed"] for a in one] == [json.loads(b)["seed"] for b in two]
    for e in map(json.loads, one):
        a = np.asarray(Image.open(single / e["image"]))
        b = np.asarray(Image.open(parallel / e["image"]))
        assert np.array_equal(a, b)  # one thread on both sides: same arithmetic, same draws
    assert (parallel / "gallery.html").read_text().count("<img src='data:image/png;base64,") == 4  # after the merge


# ---- prompt interpolation (--prompt-b, --mix) and --strength ----------------------------------
def test_prompt_b_and_mix_reach_every_record_worker_and_the_gallery(setup, one_thread):
    base, model, images, masks = setup
    single, parallel = base / "mix_w1", base / "mix_w2"
    extra = ("--masks", str(masks), "--prompt-b", "a  large stain", "--mix", "0.25")
    assert _synth(model, images, single, *extra) == 0
    assert _synth(model, images, parallel, *extra, "--workers", "2") == 0
    settings = json.loads((single / "synth.json").read_text())
    assert settings["prompt_b"] == "a large stain" and settings["mix"] == 0.25  # validated like --prompts
    one = [json.loads(line) for line in (single / "manifest.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (parallel / "manifest.jsonl").read_text().splitlines()]
    assert [(e["prompt_b"], e["mix"]) for e in one + two] == [("a large stain", 0.25)] * 8
    for e in one:  # the workers drew the same interpolated samples
        assert Image.open(single / e["image"]).tobytes() == Image.open(parallel / e["image"]).tobytes()
    html = (single / "gallery.html").read_text()
    assert "\u201ca thin dark scratch\u201d -&gt; \u201ca large stain\u201d @ 0.25" in html
    assert "<td class='l'>a round hole -&gt; a large stain @ 0.25</td>" in html  # the prompt table


def test_mix_one_is_prompt_b_alone_end_to_end_and_scored_against_it(setup):
    base, model, images, masks = setup
    mixed, alone = base / "mix_one", base / "b_alone"
    common = ["synth", str(model), "--images", str(images), "--masks", str(masks), "--n", "3", "--seed", "3"]
    assert main(common + ["--prompts", "a thin dark scratch", "--prompt-b", "a round hole", "--mix", "1",
                          "--out", str(mixed)]) == 0
    assert main(common + ["--prompts", "a round hole", "--out", str(alone)]) == 0
    for folder in (mixed, alone):
        assert main(["score", str(folder)]) == 0
    a = [json.loads(line) for line in (mixed / "manifest.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (alone / "manifest.jsonl").read_text().splitlines()]
    for x, y in zip(a, b):
        assert Image.open(mixed / x["image"]).tobytes() == Image.open(alone / y["image"]).tobytes()
        assert x["score"] == y["score"]  # QAW scores the description the sample was drawn with
    assert "prompt_b" not in b[0] and "prompt_b" not in json.loads((alone / "synth.json").read_text())


@pytest.mark.parametrize("extra,problem", [
    (["--mix", "0.5"], "--mix 0.5 needs --prompt-b TEXT"),
    (["--prompt-b", "a round hole"], "--prompt-b needs --mix F in [0, 1]"),
    (["--prompt-b", "a round hole", "--mix", "1.5"], "--mix must be in [0, 1]"),
    (["--prompt-b", "a round hole", "--mix", "-0.1"], "--mix must be in [0, 1]"),
    (["--prompt-b", "a round hole", "--mix", "nan"], "--mix must be in [0, 1]"),
    (["--prompt-b", " ", "--mix", "0.5"], "prompt is empty"),
    (["--prompt-b", "bad\x1bprompt", "--mix", "0.5"], "control character"),
    (["--prompt-b", "x" * 400, "--mix", "0.5"], "300"),
    (["--strength", "1.5"], "--strength must be in [0, 1]"),
    (["--strength", "-1"], "--strength must be in [0, 1]"),
])
def test_bad_interpolation_or_strength_is_refused_before_any_output(setup, extra, problem, capsys):
    base, model, images, _ = setup
    out = base / "bad_mix"
    assert main(["synth", str(model), "--images", str(images), "--prompts", "a scratch", "--auto-masks",
                 "--out", str(out), *extra]) == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()
