"""Issue 32, hand-edited and broken model and run files (items 9 and 14).

Each test failed on the code before the fix: NaN and Infinity read from and written into JSON,
100k-deep nesting ending in a RecursionError, wrong types, nulls and lists taken into configs,
empty and NaN memory banks and NaN thresholds loaded, safetensors files written 0600.
"""
import json
import math
import os
import stat
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from qarad import runs
from qarad.checkpoint import CheckpointError, build_config, load_config, load_tensors, read_numbers, save
from qarad.data.io import OutputError
from qarad.data.resolution import ResolutionPolicy
from qarad.detection.patchcore import PatchCore, PatchCoreConfig
from qarad.detection.head import SegmentationHead
from qarad.detection.segmenter import Segmenter, SegmenterConfig

CHANNELS = 152  # EfficientNet-Lite0 stride 8 + 16 features


def strict_json(path):
    """The file parsed as every other JSON reader would: no NaN, no Infinity."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


# ---- reading JSON: NaN, Infinity, nesting, huge numbers ------------------------------------------


@pytest.mark.parametrize("text", ['{"threshold": NaN}', '{"threshold": Infinity}', '{"a": [1, -Infinity]}',
                                  '{"threshold": 1e999}', '{"a": {"b": -1e400}}'])
def test_nan_and_infinity_in_a_config_are_refused_by_name(tmp_path, text):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(CheckpointError) as e:
        load_config(tmp_path / "c")
    assert str(tmp_path / "c.json") in str(e.value) and "NaN or infinity" in str(e.value)


@pytest.mark.parametrize("depth", [100_000, 900, 40])
def test_deeply_nested_config_is_refused_cleanly(tmp_path, depth):
    """100k-deep nesting raised RecursionError in json; 900 loaded, to recurse later in whatever
    walks it. Real configs nest 5 deep."""
    (tmp_path / "c.json").write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(CheckpointError) as e:
        load_config(tmp_path / "c")
    assert str(tmp_path / "c.json") in str(e.value) and "nested" in str(e.value)


def test_a_number_too_long_to_read_is_refused_by_name(tmp_path):
    (tmp_path / "c.json").write_text('{"seed": ' + "9" * 5000 + "}")
    with pytest.raises(CheckpointError) as e:
        load_config(tmp_path / "c")
    assert str(tmp_path / "c.json") in str(e.value)


# ---- building configs: every value checked against its field's type ------------------------------


@dataclass(frozen=True)
class Settings:
    steps: int
    lr: float = 1e-3
    name: str = "x"
    residual: bool = True
    negatives: tuple[str, ...] = ("synthetic",)
    channels: tuple[int, ...] = (8, 16)
    limit: int | None = None
    folder: dict | None = None
    category: str | list[str] | None = None


@pytest.mark.parametrize("values, key, words", [
    ({"steps": "100"}, "steps", "an integer"),
    ({"steps": None}, "steps", "an integer"),
    ({"steps": [100]}, "steps", "an integer"),
    ({"steps": 1.5}, "steps", "an integer"),
    ({"steps": True}, "steps", "an integer"),
    ({"steps": 1, "lr": "0.1"}, "lr", "a number"),
    ({"steps": 1, "lr": None}, "lr", "a number"),
    ({"steps": 1, "lr": False}, "lr", "a number"),
    ({"steps": 1, "lr": float("nan")}, "lr", "a number"),
    ({"steps": 1, "lr": float("inf")}, "lr", "a number"),
    ({"steps": 1, "name": 3}, "name", "a string"),
    ({"steps": 1, "name": ["a"]}, "name", "a string"),
    ({"steps": 1, "residual": 1}, "residual", "true or false"),
    ({"steps": 1, "residual": "false"}, "residual", "true or false"),
    ({"steps": 1, "negatives": "synthetic"}, "negatives", "a list"),
    ({"steps": 1, "negatives": [1]}, "negatives", "a list of strings"),
    ({"steps": 1, "negatives": None}, "negatives", "a list"),
    ({"steps": 1, "channels": [8, "16"]}, "channels", "a list of integers"),
    ({"steps": 1, "channels": {"a": 1}}, "channels", "a list"),
    ({"steps": 1, "limit": "5"}, "limit", "an integer or null"),
    ({"steps": 1, "limit": [5]}, "limit", "an integer or null"),
    ({"steps": 1, "folder": []}, "folder", "an object or null"),
    ({"steps": 1, "folder": "x"}, "folder", "an object or null"),
    ({"steps": 1, "category": 5}, "category", "a string, a list of strings or null"),
])
def test_wrong_types_nulls_and_lists_are_refused_naming_file_and_key(values, key, words):
    with pytest.raises(CheckpointError) as e:
        build_config(Settings, values, "runs/a/config.json")
    message = str(e.value)
    assert message.startswith("runs/a/config.json: ") and f"Settings.{key} must be {words}" in message


def test_values_of_the_right_types_are_taken():
    cfg = build_config(Settings, {"steps": 3, "lr": 1, "name": "n", "residual": False, "negatives": ["a", "b"],
                                  "channels": [1, 2], "limit": None, "folder": {"k": [1]}, "category": ["a"]}, "s")
    assert cfg == Settings(3, 1, "n", False, ("a", "b"), (1, 2), None, {"k": [1]}, ("a",))
    assert build_config(Settings, {"steps": 3, "limit": 7, "category": "a"}, "s") == Settings(3, limit=7, category="a")


# ---- run config.json, hand-edited (item 9) -----------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    """A run folder's config.json as api.train writes it (a PatchCore run)."""
    folder = tmp_path / "run"
    folder.mkdir()
    detector = {"coreset_ratio": 0.1, "memory_limit": None, "batch_size": 8, "seed": 0, "search": "exact",
                "backbone": "efficientnet_lite0"}
    config = runs.config_json("patchcore", runs.RunData(str(tmp_path / "data"), "bottle", None, 0),
                              ResolutionPolicy(size=64), detector)
    (folder / runs.CONFIG).write_text(json.dumps(config))
    runs.read_config(folder)  # as written, it reads
    return folder, config


@pytest.mark.parametrize("part, key, value", [
    ("data", "seed", "0"), ("data", "seed", None), ("data", "max_train_images", [5]), ("data", "root", 7),
    ("policy", "size", None), ("policy", "size", "256"), ("policy", "scale", [1.0]),
    ("detector", "batch_size", 8.5), ("detector", "memory_limit", "100"), ("detector", "coreset_ratio", None),
])
def test_a_hand_edited_run_config_is_refused_naming_file_and_key(run, part, key, value):
    folder, config = run
    config[part][key] = value
    (folder / runs.CONFIG).write_text(json.dumps(config))
    with pytest.raises(runs.RunError) as e:
        runs.read_config(folder)
    assert str(folder / runs.CONFIG) in str(e.value) and f".{key} must be" in str(e.value)


def test_a_run_config_nested_100k_deep_is_refused_cleanly(run):
    folder, config = run
    text = json.dumps(config)
    (folder / runs.CONFIG).write_text(text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises((runs.RunError, CheckpointError)) as e:
        runs.read_config(folder)
    assert str(folder / runs.CONFIG) in str(e.value)


# ---- saved detectors: banks and thresholds (item 14) --------------------------------------------------


def bank(rows=12):
    g = torch.Generator().manual_seed(0)
    return torch.rand(rows, CHANNELS, generator=g), torch.arange(rows) // 3


@pytest.fixture(scope="module")
def patchcore():
    model = PatchCore(PatchCoreConfig(search="exact"), ResolutionPolicy(size=64))
    model._set_memory(*bank())
    model.threshold_, model.calibration_scores_ = 1.5, np.array([1.0, 1.25])
    return model


@pytest.fixture(scope="module")
def segmenter():
    model = Segmenter(SegmenterConfig(hidden=4, search="exact"), ResolutionPolicy(size=64))
    model.head_ = SegmentationHead(model.config).eval()
    model.set_bank(*bank())
    model.threshold_, model.calibration_scores_ = 1.5, np.array([1.0, 1.25])
    return model


@pytest.fixture(params=["patchcore", "segmenter"])
def saved(request, tmp_path):
    """(stem, loader) of a small saved detector of each kind."""
    model = request.getfixturevalue(request.param)
    stem = tmp_path / "model"
    model.save(stem)
    return stem, type(model).load


def edit_json(stem, **changes):
    path = stem.with_suffix(".json")
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))  # NaN written as json.dumps does


def edit_bank(stem, memory, source):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(stem.with_suffix(".safetensors")))
    save_file({**tensors, "memory": memory, "memory_source": source}, str(stem.with_suffix(".safetensors")))


def test_a_saved_detector_loads_as_saved(saved):
    stem, load = saved
    model = load(stem)
    assert model.threshold_ == 1.5 and len(model.memory_) == 12


def test_an_empty_memory_bank_is_refused(saved):
    stem, load = saved
    edit_bank(stem, torch.zeros(0, CHANNELS), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(CheckpointError) as e:
        load(stem)
    assert str(stem.with_suffix(".safetensors")) in str(e.value) and "empty" in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_memory_bank_with_nan_or_infinity_is_refused(saved, bad):
    stem, load = saved
    memory, source = bank()
    memory[3, 7] = bad
    edit_bank(stem, memory, source)
    with pytest.raises(CheckpointError) as e:
        load(stem)
    assert str(stem.with_suffix(".safetensors")) in str(e.value) and "'memory'" in str(e.value)


@pytest.mark.parametrize("key, value", [
    *[("threshold", v) for v in (float("nan"), float("inf"), "1.5", True, [1.5], {"t": 1})],
    *[("calibration_scores", v) for v in ([1.0, None], ["1.0"], [[1.0]], 1.0, {"a": 1.0}, [True])]])
def test_a_threshold_or_calibration_scores_that_are_not_finite_numbers_are_refused(saved, key, value):
    stem, load = saved
    edit_json(stem, **{key: value})
    with pytest.raises(CheckpointError) as e:
        load(stem)
    assert str(stem.with_suffix(".json")) in str(e.value) and key in str(e.value)


@pytest.mark.parametrize("kind", ["patchcore", "segmenter"])
def test_no_threshold_is_saved_as_null_and_read_back(kind, request, tmp_path):
    """A detector fitted on one image has no threshold (infinity): JSON has no infinity."""
    model = request.getfixturevalue(kind)
    model.threshold_ = float("inf")
    try:
        model.save(tmp_path / "m")
    finally:
        model.threshold_ = 1.5
    assert strict_json(tmp_path / "m.json")["threshold"] is None
    assert type(model).load(tmp_path / "m").threshold_ == float("inf")


@pytest.mark.parametrize("kind", ["patchcore", "segmenter"])
def test_a_detector_with_a_nan_threshold_is_not_saved(kind, request, tmp_path):
    model = request.getfixturevalue(kind)
    model.threshold_ = float("nan")
    try:
        with pytest.raises(OutputError) as e:
            model.save(tmp_path / "m")
    finally:
        model.threshold_ = 1.5
    assert str(tmp_path / "m.json") in str(e.value) and "threshold" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no weights without their config


@pytest.mark.parametrize("key, value", [("logit_std", 0.0), ("dist_std", -1.0), ("dist_scale", 0.0),
                                        ("logit_mean", "0"), ("dist_mean", None)])
def test_a_segmenter_reference_that_would_divide_by_zero_or_is_no_number_is_refused(segmenter, tmp_path, key, value):
    message = _load_edited(segmenter, tmp_path, "reference", key, value)
    assert str(tmp_path / "m.json") in message and key in message


@pytest.mark.parametrize("key, value", [("coreset_ratio", "0.1"), ("batch_size", None), ("seed", [0])])
def test_a_patchcore_setting_of_the_wrong_type_is_refused(patchcore, tmp_path, key, value):
    message = _load_edited(patchcore, tmp_path, "patchcore", key, value)
    assert str(tmp_path / "m.json") in message and f"PatchCoreConfig.{key} must be" in message


def _load_edited(detector, folder, part: str, key: str, value) -> str:
    """Save `detector`, set m.json[part][key] = value by hand, load it: the CheckpointError's message."""
    detector.save(folder / "m")
    cfg = json.loads((folder / "m.json").read_text())
    cfg[part][key] = value
    (folder / "m.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        type(detector).load(folder / "m")
    return str(e.value)


# ---- weights: NaN anywhere, permissions ----------------------------------------------------------------


def test_weights_holding_nan_are_refused_naming_the_tensor(tmp_path):
    save(tmp_path / "m", {"head.weight": torch.tensor([1.0, float("nan")]), "steps": torch.tensor([3])}, {})
    with pytest.raises(CheckpointError) as e:
        load_tensors(tmp_path / "m", {"head.weight": (2,), "steps": (1,)})
    assert str(tmp_path / "m.safetensors") in str(e.value) and "'head.weight'" in str(e.value)


def test_safetensors_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save(tmp_path / "m", {"w": torch.zeros(2)}, {"a": 1})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"m.safetensors": 0o644, "m.json": 0o644}


def test_a_config_that_json_cannot_hold_writes_nothing(tmp_path):
    with pytest.raises(OutputError, match="step"):
        save(tmp_path / "m", {"w": torch.zeros(2)}, {"step": math.nan})
    assert list(tmp_path.iterdir()) == []


def test_an_old_model_saved_with_infinity_is_refused_with_a_clear_error(saved):
    """Models written before strict JSON could hold `Infinity`: the error says what is wrong."""
    stem, load = saved
    path = stem.with_suffix(".json")
    path.write_text(path.read_text().replace('"threshold": 1.5', '"threshold": Infinity'))
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        load(stem)


@pytest.mark.parametrize("text, keys", [('{"fit_s": "12"}', ("fit_s",)), ('{"fit_s": true}', ("fit_s",)),
                                        ('{"other": 1}', ("fit_s",)), ('{"fit_s": null, "x": [1]}', None),
                                        ('[1.0]', None), ('{"fit_s": NaN}', None)])
def test_a_hand_edited_file_of_numbers_is_refused_by_name(tmp_path, text, keys):
    """benchmark's fit.json and row.json, the demo's synth_speed.json, a model's timings.json."""
    path = tmp_path / "fit.json"
    path.write_text(text)
    with pytest.raises(CheckpointError, match="fit.json"):
        read_numbers(path, keys)


def test_a_file_of_numbers_reads_back(tmp_path):
    path = tmp_path / "row.json"
    path.write_text('{"image_auroc": 0.5, "aupro": null, "n": 3}')
    assert read_numbers(path) == {"image_auroc": 0.5, "aupro": None, "n": 3}
