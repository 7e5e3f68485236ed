import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import defect_box, make_mvtec_tree
from qarad.cli import main
from qarad.data.resolution import ResolutionPolicy
from qarad.data.stream import load
from qarad.detection.anomaly_map import gaussian_blur
from qarad.detection.export import export_onnx
from qarad.detection.inference import score_images
from qarad.detection.head import cell_targets
from qarad.detection.segmenter import Segmenter, SegmenterConfig
from qarad.detection.views import ViewSet
from qarad.runs import load_detector

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

PARITY = 1e-4  # allowed |onnx - torch|, relative to the largest map value


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_mvtec_tree(tmp_path_factory.mktemp("export") / "data", size=(64, 96), n_train=4)
    return root, sorted((root / "widget" / "test").rglob("*.png"))


def _train(data, tmp_path_factory, policy: str):
    run = tmp_path_factory.mktemp("export") / f"run-{policy}"
    assert main(["train", "--data", str(data[0]), "--category", "widget", "--out", str(run), "--size", "64",
                 "--policy", policy, "--overlap", "16"]) == 0
    return run


@pytest.fixture(scope="module")
def resize_run(data, tmp_path_factory):
    return _train(data, tmp_path_factory, "resize")


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _close(actual: np.ndarray, expected: np.ndarray) -> float:
    diff = float(np.abs(actual - expected).max())
    assert diff <= PARITY * max(1.0, float(np.abs(expected).max())), diff
    return diff


def test_patchcore_export_matches_torch_on_views_and_images(data, resize_run, capsys):
    assert main(["export", str(resize_run), "--format", "onnx"]) == 0
    out = resize_run / "model.onnx"
    assert str(out) in capsys.readouterr().out
    onnx.checker.check_model(str(out))
    meta = json.loads((resize_run / "model.onnx.json").read_text())
    detector = load_detector(resize_run)
    assert meta["method"] == "patchcore" and meta["policy"] == detector.policy.to_dict()
    assert meta["threshold"] == pytest.approx(detector.threshold_)
    assert meta["inputs"]["views"]["shape"] == ["batch", 3, 64, 64]
    assert list(meta["outputs"]) == [o.name for o in _session(out).get_outputs()]

    session = _session(out)
    views = torch.cat([load(i, p, detector.policy).views for i, p in enumerate(data[1])])  # (6, 3, 64, 64)
    view_map, anomaly_map, score = session.run(None, {"views": views.numpy()})
    with torch.no_grad():
        expected = detector.view_maps(views)
    _close(view_map, expected.numpy())
    _close(anomaly_map, detector.smooth(expected).numpy())
    # resize: one view per image, so the graph's outputs are the image's final map and score
    for i, result in enumerate(score_images(detector, data[1])):
        _close(anomaly_map[i], result.anomaly_map)
        _close(score[i:i + 1], np.float32([result.score]))


@pytest.mark.parametrize("policy", ["keep-aspect", "tile"])
def test_stitching_outside_the_graph_reproduces_image_maps(data, tmp_path_factory, policy):
    run = _train(data, tmp_path_factory, policy)
    assert main(["export", str(run), "--out", str(run / "exported" / "det.onnx")]) == 0
    meta = json.loads((run / "exported" / "det.onnx.json").read_text())
    session = _session(run / "exported" / "det.onnx")
    detector = load_detector(run)
    for i, result in enumerate(score_images(detector, data[1])):
        item = load(i, data[1][i], detector.policy)
        assert len(item.views) == (2 if policy == "tile" else 1)  # 64 x 96 image: two 64 px tiles
        view_map = session.run(["view_map"], {"views": item.views.numpy()})[0]
        work = gaussian_blur(item.layout.stitch(torch.from_numpy(view_map)), meta["blur_sigma"])
        _close(work.numpy(), result.anomaly_map)
        _close(work.max().numpy(), np.float32(result.score))


@pytest.mark.parametrize("residual,fusion", [(True, True), (True, False), (False, True), (False, False)])
def test_qarad_segmenter_export_matches_torch(data, tmp_path, residual, fusion):
    policy = ResolutionPolicy(size=64)
    config = SegmenterConfig(hidden=16, steps=30, batch_size=4, residual=residual, fusion=fusion,
                             negatives=("synthetic", "feature"))
    detector = Segmenter(config, policy)
    views = torch.cat([load(i, p, policy).views for i, p in enumerate(data[1])])
    normal = detector.embed(views[:3])
    defect = views.clone()
    mask = torch.zeros(len(views), 64, 64, dtype=torch.bool)
    for i in range(len(views)):
        y0, y1, x0, x1 = defect_box(i, (64, 64))
        defect[i, :, y0:y1, x0:x1], mask[i, y0:y1, x0:x1] = 1.0, True
    ones = torch.ones(8, 8, dtype=torch.bool)
    as_views = lambda f, t=None, w=None: ViewSet(list(f), [ones] * len(f), torch.arange(len(f)),  # noqa: E731
                                                 None if t is None else list(t), w)
    detector.fit(as_views(normal),
                 {"synthetic": as_views(detector.embed(defect), cell_targets(mask), torch.ones(len(views)))})

    export_onnx(detector, tmp_path / "qarad.onnx")
    view_map, anomaly_map, score = _session(tmp_path / "qarad.onnx").run(None, {"views": defect.numpy()})
    with torch.no_grad():
        expected = detector.view_maps(defect)
    assert expected.std() > 1e-3  # a map that varies, so parity means something
    _close(view_map, expected.numpy())
    _close(anomaly_map, detector.smooth(expected).numpy())
    _close(score, detector.smooth(expected).flatten(1).amax(1).numpy())


def test_export_of_a_folder_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not a qarad run folder" in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_export_refuses_to_replace_a_different_file(resize_run, tmp_path, capsys):
    out = tmp_path / "det.onnx"
    out.write_bytes(b"something else")
    assert main(["export", str(resize_run), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"something else" and sorted(p.name for p in tmp_path.iterdir()) == ["det.onnx"]
    assert main(["export", str(resize_run), "--out", str(out), "--overwrite"]) == 0
    onnx.checker.check_model(str(out))
    assert main(["export", str(resize_run), "--out", str(out)]) == 0  # the same model again is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.onnx", "det.onnx.json"]
    assert main(["export", str(resize_run), "--out", str(tmp_path / "det.bin")]) == 2
    assert ".onnx" in capsys.readouterr().err
