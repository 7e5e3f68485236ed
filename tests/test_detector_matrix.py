"""Every detector x every resolution policy on images of mixed sizes and aspect ratios.

train, eval, predict and export through the CLI; any uncaught exception is a failure, and an
expected error must be one line on stderr with exit code 2. (Issue: the synthesis-trained
detector crashed under keep-aspect when views of different shapes were concatenated.)
"""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import DEFECT_TYPES, defect_box, make_tiny_aras, texture
from qarad.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(48, 64), (64, 40), (40, 96), (56, 56)]  # four shapes, landscape, portrait, long, square
POLICIES = {"resize": [], "keep-aspect": [], "tile": ["--overlap", "16"]}
DETECTORS = {
    "patchcore": ["--method", "patchcore", "--coreset-ratio", "0.5"],
    "qarad-synthetic": ["--method", "qarad", "--steps", "6", "--perlin-samples", "3"],  # the default negatives
    "qarad-no-synthesis": ["--method", "qarad", "--negatives", "perlin", "feature", "--steps", "6",
                           "--perlin-samples", "3"],
    "qarad-head-only": ["--method", "qarad", "--negatives", "synthetic", "--no-residual", "--no-fusion",
                        "--steps", "6"],
}
NEEDS_SYNTH = {"qarad-synthetic", "qarad-head-only"}


def make_mixed_tree(root):
    """An MVTec tree (category "mixed") whose images cycle through SIZES."""
    rng = np.random.default_rng(7)
    cat = root / "mixed"
    for i in range(6):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, SIZES[i % 4])).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        (cat / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, SIZES[(i + 1) % 4])).save(cat / "test" / "good" / f"{i:03d}.png")
    for i in range(4):
        kind, size = DEFECT_TYPES[i % 2], SIZES[(i + 2) % 4]
        image, mask = texture(rng, size), np.zeros(size, np.uint8)
        y0, y1, x0, x1 = defect_box(i, size)
        image[y0:y1, x0:x1], mask[y0:y1, x0:x1] = 255, 255
        for folder in (cat / "test" / kind, cat / "ground_truth" / kind):
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(cat / "test" / kind / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("matrix")
    data = make_mixed_tree(base / "data")
    model = make_tiny_aras(base / "aras", window=32)
    synth = base / "synth"
    assert main(["synth", str(model), "--images", str(data / "mixed" / "train" / "good"), "--prompts",
                 "a thin dark scratch", "--auto-masks", "--n", "6", "--out", str(synth)]) == 0
    assert main(["score", str(synth)]) == 0
    return base, data, synth


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("detector", list(DETECTORS))
def test_every_verb_works_for_every_detector_and_policy(setup, detector, policy, capsys):
    base, data, synth = setup
    run = base / f"{detector}-{policy}"
    train = ["train", "--data", str(data), "--category", "mixed", "--out", str(run), "--policy", policy,
             "--size", "32", *POLICIES[policy], *DETECTORS[detector]]
    if detector in NEEDS_SYNTH:
        train += ["--synth", str(synth)]
    assert main(train) == 0, capsys.readouterr().err
    assert main(["eval", str(run)]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["overall"]["n_images"] == 7 and np.isfinite(metrics["overall"]["image_auroc"])
    test_images = data / "mixed" / "test"
    assert main(["predict", str(run), str(test_images / "good"), str(test_images / "crack")]) == 0
    assert len(list((run / "predictions").glob("*_overlay.png"))) == 5
    assert main(["export", str(run)]) == 0, capsys.readouterr().err
    assert (run / "model.onnx").is_file()


def test_qarad_without_synth_but_asking_for_synthetic_negatives_is_one_clear_line(setup, capsys):
    base, data, _ = setup
    code = main(["train", "--method", "qarad", "--data", str(data), "--category", "mixed",
                 "--out", str(base / "nosynth"), "--size", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--synth" in err
    assert not (base / "nosynth").exists()
