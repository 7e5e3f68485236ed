"""RUN/report.html from `qarad eval`: sections, worst cases found while streaming, self-contained and atomic."""
import csv
import json
import re
import shutil
import subprocess

import pytest

from qarad.owned import is_bookkeeping
from qarad import api, runs
from qarad.cli import main
from qarad.data.mvtec import scan_mvtec
from qarad.data.resolution import ResolutionPolicy
from qarad.detection.evaluate import _Highest, evaluate
from qarad.detection.patchcore import PatchCoreConfig
from qarad.testing import make_mvtec_tree

SECTIONS = ("Metrics per defect type", "ROC and PRO curves", "Highest-scored normal images",
            "Lowest-scored defect images")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reports")
    root = make_mvtec_tree(base / "data", size=(64, 64), n_train=4, n_good=5, n_defect=6)
    return api.train(root, "widget", base / "run", PatchCoreConfig(), policy=ResolutionPolicy(size=64)).run


def _report(run) -> str:
    return (run / "report.html").read_text()


def test_eval_writes_a_report_with_every_section(run, capsys):
    assert main(["eval", str(run)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {run / 'report.html'}" in printed and "pixel metrics: exact" in printed
    html, metrics = _report(run), json.loads((run / "metrics.json").read_text())
    assert metrics["pixel_metrics"]["mode"] == "exact" and metrics["pixel_metrics"]["pixels"] == 11 * 64 * 64
    for section in SECTIONS:
        assert f"<h2>{section}" in html
    assert "left out" not in html  # a run without real defect shots left no test image out
    for label in ("crack", "scratch", "ALL"):
        assert f"<td class='l'>{label}</td>" in html
    for m in [metrics["overall"], *metrics["per_type"].values()]:  # the table holds metrics.json's numbers
        assert f"<td class=''>{m['aupro']:.3f}</td>" in html and f"<td class=''>{m['image_auroc']:.3f}</td>" in html
    assert html.count("<svg") == 3  # image ROC, pixel ROC, PRO
    assert html.count("<img src='data:image/png;base64,") == 8  # 4 false alarms + 4 misses
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", html)  # self-contained: nothing to fetch
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") and not is_bookkeeping(p.name)]  # no temp file left behind


def test_worst_cases_are_the_extreme_scores_in_order(run):
    detector = runs.load_detector(run)
    test = scan_mvtec(run.parent / "data", "widget", "test")
    ev = evaluate(detector, test, worst_cases=2)
    normal = sorted((r for r in ev.records if r["defect_type"] == "good"), key=lambda r: -r["score"])
    defect = sorted((r for r in ev.records if r["defect_type"] != "good"), key=lambda r: r["score"])
    assert [str(c.path) for c in ev.false_alarms] == [r["path"] for r in normal[:2]]
    assert [str(c.path) for c in ev.misses] == [r["path"] for r in defect[:2]]
    for case in ev.false_alarms + ev.misses:
        assert case.anomaly_map.shape == (64, 64)  # source resolution, what the heat map is drawn on
    assert all(c.mask is None for c in ev.false_alarms) and all(c.mask is not None for c in ev.misses)
    assert evaluate(detector, test, worst_cases=0).misses == []


def test_keeper_keeps_the_k_highest_and_the_earlier_of_ties():
    keep = _Highest(3)
    for i, key in enumerate([0.5, 0.9, 0.1, 0.9, 0.7, 0.2, 0.9]):
        if keep.wants(key):
            keep.push(key, i)
    assert keep.items() == [1, 3, 6]


def test_streaming_and_exact_eval_agree(run):
    exact = api.evaluate(run, pixel_metrics="exact")
    streamed = api.evaluate(run, pixel_metrics="streaming")
    assert streamed["pixel_metrics"]["mode"] == "streaming" and exact["pixel_metrics"]["mode"] == "exact"
    for got, want in [(streamed["overall"], exact["overall"]),
                      *[(streamed["per_type"][t], exact["per_type"][t]) for t in exact["per_type"]]]:
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-9), k
    assert "streaming" in _report(run)
    with open(run / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 11


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_opens_in_a_headless_browser(run):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (chromium) on this machine")
    api.evaluate(run)
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (run / "report.html").resolve().as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    for section in SECTIONS:
        assert section in dom


def test_eval_pixel_metrics_choices_are_the_modes():
    from qarad import metrics
    from qarad.cli import main_parser

    sub = next(a for a in main_parser()._actions if a.dest == "verb").choices["eval"]
    flag = next(a for a in sub._actions if a.dest == "pixel_metrics")
    assert tuple(flag.choices) == metrics.PIXEL_MODES and flag.default == "auto"


def test_report_says_which_shots_were_left_out_and_when_none_were(tmp_path):
    from types import SimpleNamespace

    from qarad.report.pages import run_report

    from qarad.metrics import METRICS

    metrics = {"n_images": 5, **{m: 0.5 for m in METRICS}}
    result = {"category": "widget", "method": "qarad", "threshold": 0.5, "policy": {"mode": "resize", "size": 64},
              "pixel_metrics": {"mode": "exact", "pixels": 1}, "overall": metrics, "per_type": {}}
    ev = SimpleNamespace(overall=metrics, curves={}, false_alarms=[], misses=[])
    plain = run_report(result, ev, tmp_path).render()
    shots = {"count": 2, "images": ["/d/widget/test/crack/001.png", "/d/widget/test/scratch/000.png"]}
    shown = run_report({**result, "excluded_real_defects": shots}, ev, tmp_path).render()
    none = run_report({**result, "excluded_real_defects": {"count": 0, "images": []}}, ev, tmp_path).render()
    assert "left out" not in plain
    assert "5 test images (2 real defect shots left out)" in shown and "the 2 below were left out" in shown
    assert "<td class='l'>crack/001.png</td>" in shown and "<td class='l'>scratch/000.png</td>" in shown
    assert "no test image was left out" in none
