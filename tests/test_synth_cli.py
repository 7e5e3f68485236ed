"""`qarad synth` / `qarad score` end to end on a tiny random ARAS model: locality, determinism, resume."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_aras, texture
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
