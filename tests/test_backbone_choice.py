"""`qarad train --backbone`: both detectors on EfficientNet-Lite2, the setting stored with the run and
reused by eval / predict / export, and runs saved before the setting existed loading as Lite0."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import make_mvtec_tree
from qarad import runs
from qarad.backbone import Backbone, BackboneConfig
from qarad.cli import main, main_parser
from qarad.detection.patchcore import PatchCore, PatchCoreConfig
from qarad.detection.segmenter import Segmenter, SegmenterConfig

pytestmark = pytest.mark.usefixtures("one_thread")

LITE0, LITE2 = "efficientnet-lite0", "efficientnet-lite2"
CHANNELS = {LITE0: 152, LITE2: 168}  # stride 8 + 16 taps: 40 + 112, 48 + 120
METHODS = {
    "patchcore": ["--method", "patchcore", "--coreset-ratio", "0.5"],
    "qarad": ["--method", "qarad", "--negatives", "perlin", "--steps", "6", "--perlin-samples", "3"],
}
SETTINGS_KEY = {"patchcore": "patchcore", "qarad": "segmenter"}  # the detector's settings in model.json


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("backbone") / "data")


def _train(data, run, method, *extra):
    return main(["train", "--data", str(data), "--category", "widget", "--out", str(run), "--size", "32",
                 *METHODS[method], *extra])


@pytest.mark.parametrize("method", list(METHODS))
def test_lite2_detector_trains_evaluates_predicts_and_exports(data, tmp_path, method, capsys):
    run = tmp_path / method
    assert _train(data, run, method, "--backbone", LITE2) == 0, capsys.readouterr().err
    assert runs.read_config(run)["detector"]["backbone"] == LITE2
    assert json.loads((run / "model.json").read_text())[SETTINGS_KEY[method]]["backbone"] == LITE2
    detector = runs.load_detector(run)
    assert detector.config.backbone == LITE2 and detector.memory_.shape[1] == CHANNELS[LITE2]

    assert main(["eval", str(run)]) == 0, capsys.readouterr().err
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["overall"]["image_auroc"])
    assert main(["predict", str(run), str(data / "widget" / "test" / "good")]) == 0, capsys.readouterr().err
    assert len(list((run / "predictions").glob("*_overlay.png"))) == 3
    assert main(["export", str(run)]) == 0, capsys.readouterr().err
    assert json.loads((run / "model.onnx.json").read_text())["backbone"] == LITE2
    views = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    view_map = session.run(["view_map"], {"views": views.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(view_map, detector.view_maps(views).numpy(), atol=1e-3)


@pytest.mark.parametrize("method", list(METHODS))
def test_run_saved_without_a_backbone_setting_loads_as_lite0(data, tmp_path, method, capsys):
    run = tmp_path / method
    assert _train(data, run, method) == 0, capsys.readouterr().err
    assert runs.read_config(run)["detector"]["backbone"] == LITE0  # the default, recorded
    for name, part in ((runs.CONFIG, "detector"), ("model.json", SETTINGS_KEY[method])):
        content = json.loads((run / name).read_text())
        del content[part]["backbone"]  # as runs were written before the setting existed
        (run / name).write_text(json.dumps(content))
    assert "backbone" not in runs.read_config(run)["detector"]
    detector = runs.load_detector(run)
    assert detector.config.backbone == LITE0 and detector.memory_.shape[1] == CHANNELS[LITE0]
    assert main(["eval", str(run)]) == 0, capsys.readouterr().err


def test_a_bank_of_the_other_backbone_is_refused_in_one_line(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run, "qarad", "--backbone", LITE2) == 0, capsys.readouterr().err
    content = json.loads((run / "model.json").read_text())
    content["segmenter"]["backbone"] = LITE0  # 168-channel bank and head under a Lite0 label
    (run / "model.json").write_text(json.dumps(content))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err


def test_unknown_backbone_and_mismatched_backbone_module_are_refused(capsys):
    with pytest.raises(SystemExit):
        main_parser().parse_args(["train", "--data", "d", "--category", "c", "--out", "o", "--backbone", "resnet"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown backbone"):
        SegmenterConfig(backbone="resnet")
    lite0 = Backbone(BackboneConfig(LITE0), pretrained=False)
    with pytest.raises(ValueError, match="configured for"):
        PatchCore(PatchCoreConfig(backbone=LITE2), backbone=lite0)
    with pytest.raises(ValueError, match="configured for"):
        Segmenter(SegmenterConfig(backbone=LITE2), backbone=lite0).embed(torch.rand(1, 3, 32, 32))
