"""The pure helpers of benchmarks/ scripts (the scripts themselves run on ../shared/data, not here)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation  # noqa: E402
import speed  # noqa: E402

SETTINGS = {"data": "/a", "models": {"x": "/m"}, "seeds": [0, 1, 2], "n_synth": 300, "steps": 1000,
            "work": "/w", "methods": ["qarad"], "backbone": "efficientnet-lite0"}


def _old(settings=SETTINGS):
    return {"command": "python benchmarks/ablation.py --datasets a", "date": "d0", "machine": "m0",
            "settings": settings, "results": {"a": {"qarad": 1}, "b": {"qarad": 2, "run": {"command": "c"}}}}


def test_merge_keeps_other_datasets_with_the_run_that_made_them():
    new = {"b": {"qarad": 3, "run": {"command": "new"}}, "c": {"qarad": 4, "run": {"command": "new"}}}
    # where things lie (data, work, models) and the methods asked for may differ
    settings = {**SETTINGS, "data": "/elsewhere", "work": "/w2", "models": {}, "methods": ["qarad", "x"]}
    out = ablation.merged(_old(), new, settings)
    assert out["a"] == {"qarad": 1, "run": {"command": "python benchmarks/ablation.py --datasets a",
                                            "date": "d0", "machine": "m0"}}
    assert out["b"] == new["b"] and out["c"] == new["c"]  # this run's datasets replace the old ones


def test_merge_refuses_results_of_other_settings():
    with pytest.raises(SystemExit, match="seeds"):
        ablation.merged(_old({**SETTINGS, "seeds": [0]}), {}, SETTINGS)


def test_spaced_picks_evenly_over_the_split_ends_included():
    assert speed.spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert speed.spaced([1, 2], 5) == [1, 2]


def test_measure_available_skips_datasets_not_on_disk(tmp_path, capsys):
    import common

    (tmp_path / "mpdd" / "metal_plate" / "train" / "good").mkdir(parents=True)
    out = common.measure_available(tmp_path, ["mpdd/metal_plate", "deeppcb/deeppcb"], lambda key: key.upper())
    assert out == {"mpdd/metal_plate": "MPDD/METAL_PLATE"}
    assert "skip deeppcb/deeppcb" in capsys.readouterr().out


def test_selection_spearman_ranks_each_validation_source_against_test():
    import selection

    def cand(v_aras, v_perlin, test):
        by = {"aras": {"image_auroc": v_aras, "aupro": v_aras}, "perlin": {"image_auroc": v_perlin, "aupro": v_perlin},
              "both": {"image_auroc": (v_aras + v_perlin) / 2, "aupro": (v_aras + v_perlin) / 2}}
        return {"validation_by_source": by, "test_criterion": test}

    trained = [cand(0.1, 0.4, 0.1), cand(0.2, 0.3, 0.2), cand(0.3, 0.2, 0.3), cand(0.4, 0.1, 0.4)]
    rho = selection.spearman(trained)
    assert rho["aras"] == pytest.approx(1.0) and rho["perlin"] == pytest.approx(-1.0)
    assert rho["procedural"] is None  # a source no candidate was validated on
    assert selection.spearman(trained[:2]) == {"aras": None, "perlin": None, "procedural": None,
                                               "both": None}  # too few to rank
    perlin_only = [{**c, "validation_by_source": {"perlin": c["validation_by_source"]["perlin"]}} for c in trained]
    assert selection.spearman(perlin_only)["aras"] is None


def test_the_ablation_trains_what_qarad_train_trains(tmp_path, monkeypatch):
    """A head the ablation fits on its shared bank (Segmenter.fit(..., bank=)) is the head
    `train_qarad` fits on the same images and settings: same weights, same threshold."""
    import argparse

    import common  # noqa: E402
    import torch

    from qarad.detection.segmenter import Segmenter, SegmenterConfig
    from qarad.detection.train import train_qarad
    from qarad.detector_config import QaradTraining
    from qarad.testing import make_mvtec_tree

    make_mvtec_tree(tmp_path / "data" / "tiny", n_train=4, n_good=2, n_defect=2, size=(64, 64))
    monkeypatch.setitem(common.DATASETS, "tiny/widget", ("tiny", "widget"))
    args = argparse.Namespace(data=tmp_path / "data", limit_train=None, limit_test=None, models={},
                              backbone=SegmenterConfig().backbone, work=tmp_path / "work", seeds=[0], steps=4,
                              methods=["qarad_perlin_only"], perlin_samples=3, n_synth=1)
    out = ablation.run_detectors(args, "tiny/widget")
    assert out["speed_method"] == "qarad_perlin_only" and "qarad" in out["skipped"]  # no ARAS model: skipped
    head = Segmenter.load(out["speed_head"])
    train, _ = ablation.splits(args, "tiny/widget")
    config = SegmenterConfig(steps=4, negatives=("perlin",))
    trained = train_qarad(config, QaradTraining(perlin_samples=3, max_normal_views=ablation.MAX_NORMAL_VIEWS,
                                                batch_size=ablation.FEATURE_BATCH),
                          ablation.policy_of("tiny/widget"), [s.image for s in train]).model
    assert head.threshold_ == trained.threshold_ and head.reference_ == trained.reference_
    assert torch.equal(head.memory_, trained.memory_)
    for k, v in trained.head_.state_dict().items():
        assert torch.equal(head.head_.state_dict()[k], v), k


def test_fewshot_sets_and_heads_run_through_the_library(tmp_path, monkeypatch):
    """fewshot.py's few-shot set is `qarad synth --auto-masks` + `qarad score` (api.synth, api.score),
    and its three heads fit through Segmenter.fit on one bank: the stages run on tiny data."""
    import argparse
    import json

    import common  # noqa: E402
    import fewshot

    from qarad.detection.segmenter import SegmenterConfig
    from qarad.testing import make_mvtec_tree, make_tiny_aras

    make_mvtec_tree(tmp_path / "data" / "tiny", n_train=4, n_good=2, n_defect=4, size=(64, 64))
    monkeypatch.setitem(common.DATASETS, "tiny/widget", ("tiny", "widget"))
    key = "tiny/widget"
    args = argparse.Namespace(data=tmp_path / "data", limit_train=None, limit_test=None,
                              models={key: make_tiny_aras(tmp_path / "model")}, backbone=SegmenterConfig().backbone,
                              work=tmp_path / "work", seeds=[0], shots=[1], steps=3, perlin_samples=3, n_synth=4,
                              prior_steps=1)
    real = fewshot.selection(args, key, 1, 0)
    make_tiny_aras(fewshot.model_dir(args, key, 1, 0))  # stands in for the few-shot fit
    train_paths = [s.image for s in ablation.splits(args, key)[0]]
    few = fewshot.fewshot_set(args, key, 1, 0, real, train_paths)
    entries = [json.loads(x) for x in (few / "manifest.jsonl").read_text().splitlines()]
    assert [e["prompt"] for e in entries] == [real.types[i % len(real.types)] for i in range(4)]  # types in turn
    assert all(e["score"] is not None for e in entries) and (few / "gallery.html").is_file()
    paste = fewshot.copy_paste_set(args, key, 1, 0, real, train_paths)
    args.generated = {f"{key}|generate|k1|s0": {"fewshot_set": str(few), "copy_paste_set": str(paste)}}
    done = fewshot.run_detectors(args, key)["per"]["k1|s0"]
    assert set(done["arms"]) == set(fewshot.ARMS) and done["n_views"]["aras_fewshot"] > 0


def test_speed_reuse_takes_a_finished_run_as_found_and_fits_nothing(tmp_path, monkeypatch):
    key = "magnetic_tile/magnetic_tile"
    folder = tmp_path / key.replace("/", "__")
    for method in ("patchcore", "qarad"):
        (folder / f"{method}-efficientnet-lite0-256").mkdir(parents=True)
        (folder / f"{method}-efficientnet-lite0-256" / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(speed, "MODELS", tmp_path)
    runs, fit_s = speed.fitted_runs(tmp_path / "no-data", key, "efficientnet-lite0", 256, reuse=True)
    assert runs == {m: folder / f"{m}-efficientnet-lite0-256" for m in ("patchcore", "qarad")}
    assert fit_s == {"patchcore": None, "qarad": None}


def test_stage_profile_times_functions_that_exist_in_this_checkout():
    import stage_profile

    # a renamed or moved function is skipped silently by the profiler (older checkouts lack some):
    # on this checkout every target must be found, or its time falls into `other`
    missing = [(stage, getattr(owner, "__name__", owner), name) for stage, targets in stage_profile._targets().items()
               for owner, name in targets if name not in vars(owner)]
    assert not missing


def test_eval_check_compares_every_metric_and_names_the_worst():
    import eval_check

    before = {"r": {"overall": {"image_auroc": 0.9, "aupro": 0.5}, "per_type": {"x": {"aupro": float("nan")},
                                                                                "y": {"aupro": 0.7}},
                    "images_per_s": 10.0, "src": "old/src"}}
    after = {"r": {"overall": {"image_auroc": 0.9, "aupro": 0.502}, "per_type": {"x": {"aupro": float("nan")},
                                                                               "y": {"aupro": 0.6995}},
                   "images_per_s": 20.0, "src": "src"}}
    out = eval_check.compare(before, after)["r"]
    assert out["at"] == "aupro" and out["max_abs_diff"] == pytest.approx(0.002)
    assert out["metrics"] == 3  # the NaN per-type metric is not comparable
    assert out["src"] == ["old/src", "src"] and out["images_per_s"] == [10.0, 20.0]
