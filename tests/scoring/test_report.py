"""report.html: rendered by a real headless Chromium, every chart present and not blank.

Chromium is found on PATH; on a fresh Debian machine the session fixture
installs it with apt-get when running as root, and skips (saying why) otherwise.
"""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from scoring.backtest import BacktestConfig, run_backtest
from scoring.parallel import fork_cores
from scoring.report import change_sentence, chart_ids, compare_sentence, versus_sentence, write_html
from scoring.simulator import SimulationConfig, simulate

INSTALL_TIMEOUT_S = 900


# ----------------------------------------------------------------- chromium
@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Debian ``chromium``; installed with apt-get if missing and root, else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("chromium is not on PATH and the tests are not root: "
                    "install it with `sudo apt-get install chromium` to render report.html")
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not on PATH and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       env=env, check=True, capture_output=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"apt-get install chromium failed: {exc.stderr.decode(errors='replace')[-400:]}")
    except subprocess.TimeoutExpired:
        pytest.skip(f"apt-get install chromium took longer than {INSTALL_TIMEOUT_S}s")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found


def _chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


class _Figures(HTMLParser):
    """Collects ``figure.chart`` elements and their images from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, Any]] = {}
        self.missing: list[str] = []
        self.notes: list[str] = []
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and "chart" in (a.get("class") or "").split():
            self._current = a.get("id") or ""
            self.figures[self._current] = {"chart": a.get("data-chart"), "images": []}
        elif tag == "img" and self._current is not None:
            self.figures[self._current]["images"].append(a.get("src") or "")
        elif a.get("data-missing"):
            self.missing.append(str(a["data-missing"]))
        if a.get("data-note"):
            self.notes.append(str(a["data-note"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._current = None


def _figures(dom: str) -> _Figures:
    parser = _Figures()
    parser.feed(dom)
    return parser


def _png_pixels(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return imread(io.BytesIO(base64.b64decode(src[len(prefix):])), format="png")


def _not_blank(pixels: np.ndarray, min_ink: float = 0.01) -> tuple[bool, str]:
    """An image with several colours and some ink (non-white pixels)."""
    rgb = pixels[..., :3].reshape(-1, 3)
    colours = len(np.unique((rgb * 255).astype(np.uint8), axis=0))
    ink = float((rgb.min(axis=1) < 0.9).mean())
    return colours > 8 and ink >= min_ink, f"{colours} colours, {ink:.1%} ink"


# ------------------------------------------------------------------ reports
CHANGE_MS = 1_707_955_200_000  # 2024-02-15T00:00:00Z


@pytest.fixture(scope="module")
def reports() -> list[dict[str, Any]]:
    """A small seeded history with a regime change, backtested in process (two 'configs')."""
    events = [json.dumps(e) for e in simulate(
        SimulationConfig(customers=150, days=90, seed=11, regime_change=True))]
    # The simulator's regime changes halfway: day 45 of 90, from 2024-01-01.
    report = run_backtest(events, BacktestConfig(group_by="segment", change_at_ms=CHANGE_MS))
    report["config"]["name"] = "default"
    report["input"] = "simulated.jsonl"
    other = copy.deepcopy(report)
    other["config"]["name"] = "variant"
    return [report, other]


@pytest.fixture(scope="module")
def single_page(reports: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_html(reports[:1], tmp_path_factory.mktemp("report") / "report.html")


@pytest.fixture(scope="module")
def compare_page(reports: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_html(reports, tmp_path_factory.mktemp("compare") / "report.html")


def test_page_is_self_contained(single_page: Path) -> None:
    text = single_page.read_text()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "<script" not in text and "<link" not in text
    assert text.count("data:image/png;base64,") >= 10


def test_charts_drawn_in_several_processes_are_the_ones_drawn_in_one(
    reports: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing
    import re

    import scoring.report as report

    pages = {}
    for name, at_least in (("forked", 1), ("here", 10_000)):
        monkeypatch.setattr(report, "PARALLEL_MIN_CHARTS", at_least)
        pages[name] = re.sub(r"generated [^.]*\.", "", write_html(reports, tmp_path / f"{name}.html").read_text())
    assert pages["forked"] == pages["here"], "the same page, chart for chart"
    assert pages["here"].count("data:image/png;base64,") >= 10
    assert not multiprocessing.active_children(), "the drawing processes ended"


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_every_chart_renders_in_chromium(
    chromium: str, single_page: Path, reports: list[dict[str, Any]], tmp_path: Path
) -> None:
    dom = _chromium(chromium, tmp_path, "--dump-dom", single_page.as_uri()).stdout
    found = _figures(dom)
    expected = chart_ids(reports[:1])
    # the kind with the most labels must have every chart, whatever chart_ids says
    must = {f"r0-{c}-purchase_propensity" for c in ("lift", "gains", "calibration", "weekly-auc",
                                                    "weekly-log-loss", "bands", "fairness")}
    assert must <= set(expected) and "r0-activity" in expected
    assert set(expected) <= set(found.figures), f"missing: {sorted(set(expected) - set(found.figures))}"
    # a chart left out for lack of data is a note saying so, never an empty figure
    assert not {f"r0-{m}" for m in found.missing} & set(expected)
    for cid, fig in found.figures.items():
        assert len(fig["images"]) == 1, cid
        ok, why = _not_blank(_png_pixels(fig["images"][0]))
        assert ok, f"{cid} looks blank: {why}"
    # kinds without outcomes (points scores) get a note, not a crash
    assert "no-labels-engagement" in found.notes

    shot = tmp_path / "report.png"
    _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000",
              single_page.as_uri())
    pixels = _png_pixels("data:image/png;base64," + base64.b64encode(shot.read_bytes()).decode())
    assert pixels.shape[:2] == (4000, 1280)
    ok, why = _not_blank(pixels, min_ink=0.05)
    assert ok, f"screenshot looks blank: {why}"


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_compare_page_shows_both_configurations(
    chromium: str, compare_page: Path, reports: list[dict[str, Any]], tmp_path: Path
) -> None:
    dom = _chromium(chromium, tmp_path, "--dump-dom", compare_page.as_uri()).stdout
    found = _figures(dom)
    expected = chart_ids(reports)
    assert "r0-compare-weekly-auc-purchase_propensity" in expected
    assert "r1-lift-purchase_propensity" in expected
    assert set(expected) <= set(found.figures), f"missing: {sorted(set(expected) - set(found.figures))}"
    for cid, fig in found.figures.items():
        ok, why = _not_blank(_png_pixels(fig["images"][0]))
        assert ok, f"{cid} looks blank: {why}"
    assert "A: default" in dom and "B: variant" in dom


# -------------------------------------------------------- graceful and computed
def test_missing_data_gives_notes_not_crashes(tmp_path: Path) -> None:
    report = {
        "events": 3, "kinds": {"churn_risk": {"labels": 0, "positives": 0, "auc": None}},
        "bands_per_week": {"engagement": []}, "per_day": {}, "drifts": [],
    }
    text = write_html([report], tmp_path / "r.html").read_text()
    assert 'data-note="no-labels-churn_risk"' in text
    assert 'data-missing="bands-engagement"' in text and 'data-missing="activity"' in text
    assert 'class="chart"' not in text
    assert write_html([], tmp_path / "empty.html").exists()


def test_headline_sentences_follow_the_numbers(reports: list[dict[str, Any]], tmp_path: Path) -> None:
    assert "better" in versus_sentence(0.8, 0.7, "x") and "worse" in versus_sentence(0.6, 0.7, "x")
    assert "about as well" in versus_sentence(0.705, 0.7, "x")
    assert "variant ranks worse" in compare_sentence("default", 0.8, "variant", 0.7)
    rep = copy.deepcopy(reports[0])
    k = rep["kinds"]["purchase_propensity"]
    k["sources"], k["labels"], k["positives"] = {"model": 900, "cold_start": 100}, 1000, 100  # a model that served
    rule = k["baselines"]["rule"]
    k["auc"], rule["auc"], rule["online_minus_rule_ci95"] = 0.9, 0.6, [0.25, 0.35]
    text = write_html([rep], tmp_path / "a.html").read_text()
    assert "ranks better than the rule baseline (AUC 0.900 vs 0.600, +0.300 (95%: +0.250 to +0.350))" in text
    k["auc"], rule["online_minus_rule_ci95"] = 0.55, [-0.08, -0.02]
    text = write_html([rep], tmp_path / "b.html").read_text()
    assert "ranks worse than the rule baseline (AUC 0.550 vs 0.600, -0.050 (95%: -0.080 to -0.020))" in text
    # An interval that holds 0 is a tie, however large the difference looks.
    rule["online_minus_rule_ci95"] = [-0.09, 0.004]
    text = write_html([rep], tmp_path / "c.html").read_text()
    assert "ranks about as well as the rule baseline (AUC 0.550 vs 0.600, -0.050 (95%: -0.090 to +0.004))" in text
    # Reports from before the intervals: differences below AUC_TIE read as a tie.
    del rule["online_minus_rule_ci95"]
    text = write_html([rep], tmp_path / "d.html").read_text()
    assert "ranks worse than the rule baseline (AUC 0.550 vs 0.600, -0.050)" in text


def test_headline_claims_no_more_than_its_examples_hold() -> None:
    """A model that never served was called "the online model", verdicts rested on 8 outcomes,
    and a bottom decile without an outcome gave a ratio of 1,245.9x "above the rule of thumb"."""
    from scoring.report import _headline_sentence

    served = {"labels": 89_220, "positives": 4_000, "auc": 0.657, "sources": {"model": 89_220},
              "baselines": {"rule": {"auc": 0.6, "online_minus_rule_ci95": [0.04, 0.07]}},
              "top_bottom_decile_ratio": 1245.9, "top_bottom_ratio_low": 2.4, "bottom_decile_positives": 0}
    text = _headline_sentence(served)
    assert "ranks better than the rule baseline" in text
    assert "1,245.9× as often" not in text and "at least 2.4× as often (95% bound)" in text
    assert "cannot tell whether it passes the 3× rule of thumb" in text and "above the 3×" not in text
    firm = {**served, "top_bottom_decile_ratio": 9.0, "top_bottom_ratio_low": 6.5, "bottom_decile_positives": 45}
    assert "has the outcome 9.0× as often as its bottom decile, above the 3× rule" in _headline_sentence(firm)
    loose_but_clear = {**served, "top_bottom_ratio_low": 4.1, "bottom_decile_positives": 3}
    assert "at least 4.1× as often (95% bound), above the 3× rule" in _headline_sentence(loose_but_clear)

    rule_only = {**served, "sources": {"cold_start": 89_220},
                 "baselines": {"rule": {"auc": 0.657, "online_minus_rule_ci95": [0.0, 0.0]},
                               "batch_weekly": {"auc": 0.6, "online_on_same_examples": {"auc": 0.657},
                                                "online_minus_batch_ci95": [0.03, 0.08]}}}
    text = _headline_sentence(rule_only)
    assert text.startswith("The model never took over from the cold-start rule")
    assert "The online model" not in text and "than the rule baseline" not in text
    assert "The rule ranks better than the weekly batch LR" in text

    warming = {**served, "model_only": {"labels": 75_000, "auc": 0.858, "rule_auc": 0.728}}
    assert ("on the model's own 84% its AUC is 0.858, the rule's on the same examples 0.728."
            in _headline_sentence(warming))

    few = {**served, "labels": 366, "positives": 8}
    text = _headline_sentence(few)
    assert "With 8 labels with the outcome and 358 without, too few (fewer than 30 of each) for a verdict" in text
    assert "ranks better" not in text
    # The smaller class may be the labels without the outcome: it is the one named.
    assert "With 32 labels with the outcome and 6 without" in _headline_sentence({**served, "labels": 38,
                                                                                   "positives": 32})
    # A bound below 1x says nothing: no "at least 0.2x" as if it were a figure.
    flat = {**served, "top_bottom_ratio_low": 0.2, "bottom_decile_positives": 2}
    assert "too few to tell its top/bottom ratio (1,245.9× as a point figure) from 1× at 95%" in (
        _headline_sentence(flat)) and "at least 0.2" not in _headline_sentence(flat)


def test_change_sentence_verdict_follows_its_interval() -> None:
    pooled = {"online_auc": 0.78, "batch_auc": 0.76, "online_minus_batch_ci95": [-0.001, 0.041]}
    change = {"at": "2024-07-01", "weeks": 4, "after": [], "after_pooled": pooled}
    # +0.020 is past AUC_TIE, but the interval holds 0: a tie, and said once.
    text = change_sentence(change)
    assert "ranks about as well as the weekly batch LR" in text and "better" not in text
    assert text.count("95%") == 1
    pooled["online_minus_batch_ci95"] = [0.004, 0.036]
    assert "ranks better than the weekly batch LR (AUC 0.780 vs 0.760, +0.020 (95%: +0.004 to +0.036)" in (
        change_sentence(change))
    del pooled["online_minus_batch_ci95"]  # reports from before the intervals
    assert "ranks better than the weekly batch LR (AUC 0.780 vs 0.760, +0.020, on the same" in change_sentence(change)


def test_known_change_has_its_table_and_sentence(reports: list[dict[str, Any]], single_page: Path) -> None:
    text = single_page.read_text()
    change = reports[0]["kinds"]["purchase_propensity"]["change"]
    assert change["at"].startswith("2024-02-15")
    assert 'data-change="purchase_propensity"' in text
    assert html.escape(change_sentence(change)) in text
    assert "weeks after, pooled" in text
    assert "by_moment" in reports[0]["kinds"]["churn_risk"] or "by_moment" in reports[0]["kinds"]["purchase_propensity"]
    assert 'data-moments="' in text and "an idle rescore" in text


def test_each_learned_kind_shows_its_models_largest_weights(reports: list[dict[str, Any]], single_page: Path) -> None:
    text = single_page.read_text()
    weighed = [kind for kind, model in reports[0]["models"].items() if model.get("weights")]
    assert weighed
    for kind in weighed:
        model = reports[0]["models"][kind]
        section = text.split(f'data-weights="{kind}"', 1)[1].split("</div>", 1)[0]
        first = model["weights"][0]
        assert f"<td>{html.escape(first['feature'])}</td><td>{first['weight']:.3f}</td>" in section


def test_cli_backtest_writes_report_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import main

    history = tmp_path / "h.jsonl"
    assert main(["simulate", "--customers", "40", "--days", "30", "--seed", "2", "--out", str(history)]) == 0
    assert main(["backtest", str(history), "--out", str(tmp_path / "bt"), "--no-batch-baseline"]) == 0
    text = (tmp_path / "bt" / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and 'data-chart="activity"' in text
    assert main(["backtest", str(history), "--out", str(tmp_path / "bc"), "--change-at", "2024-01-15"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "bc" / "report.json").read_text())
    checked = 0
    for kind, k in report["kinds"].items():
        pooled = k.get("change", {}).get("after_pooled", {})
        if pooled.get("online_auc") is not None and pooled.get("batch_auc") is not None:
            diff = f"online - batch {pooled['online_auc'] - pooled['batch_auc']:+.3f}"
            assert f"after the change, {kind}: {diff}" in printed
            checked += 1
    assert checked  # the command line says how each kind fared after the change
    assert all(k["change"]["at"].startswith("2024-01-15") for k in report["kinds"].values() if k.get("labels"))



def test_a_ratio_no_score_can_reach_is_not_judged_against_the_rule_of_thumb() -> None:
    from scoring.report import _headline_sentence, _model_rows

    # One-time buyers: nearly every churn label is positive, so the bottom decile holds outcomes too.
    capped = {"auc": 0.74, "labels": 1000, "positives": 986, "top_bottom_decile_ratio": 1.0, "baselines": {}}
    sentence = _headline_sentence(capped)
    assert "at a 98.6% outcome rate no score can reach more than 1.16×" in sentence
    assert "below the 3× rule of thumb" not in sentence
    assert 'class="weak"' not in "".join(_model_rows(capped)[0])
    free = {**capped, "positives": 726, "top_bottom_decile_ratio": 2.4}
    assert "below the 3× rule of thumb" in _headline_sentence(free)
    assert 'class="weak"' in "".join(_model_rows(free)[0])


def test_compare_says_when_the_two_configurations_label_a_kind_differently(tmp_path) -> None:
    from scoring.report import write_html

    def rep(horizon: str, auc: float) -> dict:
        kind = {"labels": 100, "positives": 30, "auc": auc, "top_bottom_decile_ratio": 2.0}
        return {"kinds": {"purchase_propensity": kind}, "config": {"name": horizon,
                "kind_settings": {"purchase_propensity": {"horizon": horizon, "model": "logistic"}}}}

    path = write_html([rep("7d", 0.728), rep("14d", 0.735)], tmp_path / "report.html")
    text = path.read_text()
    assert "label this kind differently (horizon 7d against 14d)" in text


def test_a_pooled_decile_ratio_that_no_population_reaches_is_said_to_be_pooled() -> None:
    from scoring.report import _headline_sentence

    k = {"labels": 1000, "positives": 300, "auc": 0.7, "top_bottom_decile_ratio": 3.3,
         "by_moment": {"event": {"top_bottom_decile_ratio": 2.1}, "idle": {"top_bottom_decile_ratio": 2.6}}}
    text = _headline_sentence(k)
    assert "has the outcome 3.3× as often" in text and "converts" not in text
    assert "but only pooled: within each population it is below (2.1×" in text
    k["top_bottom_decile_ratio"] = 2.96
    assert "2.96× as often as its bottom decile, below" in _headline_sentence(k)


@pytest.mark.skipif(fork_cores() < 2, reason="charts are drawn in one process on one core")
def test_chart_processes_do_not_run_the_callers_sigterm_handler() -> None:
    """`leadpulse backtest` turns SIGTERM into a clean stop; the chart pool's workers inherited
    that handler, and the pool's own SIGTERM at its end printed a traceback after a report."""
    import signal

    from scoring.report import PARALLEL_MIN_CHARTS, _render_all

    def handler(signum: int, frame: Any) -> None:
        raise RuntimeError("the caller's handler")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        drawn = _render_all([lambda: str(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)] * PARALLEL_MIN_CHARTS)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert drawn == [(False, "True")] * PARALLEL_MIN_CHARTS


def test_the_page_carries_the_history_notes_the_command_line_prints(reports: list[dict[str, Any]],
                                                                    tmp_path: Path) -> None:
    """Several currencies and same-instant events were said on the command line only."""
    rep = copy.deepcopy(reports[0])
    rep["purchase_currencies"] = {"EUR": 5011, "USD": 2766, "GBP": 1983}
    rep["same_instant_events"] = rep["events"] // 5
    rep["gaps"] = [{"from": "2024-02-01T00:00:00.000+00:00", "to": "2024-03-15T00:00:00.000+00:00", "days": 43.0,
                    "events_after": 10}]
    text = html.unescape(write_html([rep], tmp_path / "notes.html").read_text())
    assert "purchases in 3 currencies (EUR 5,011, USD 2,766, GBP 1,983) are summed as given" in text
    assert "of events fall at the very instant of an earlier event of the same customer" in text
    assert "no events from 2024-02-01 to 2024-03-15 (43 days)" in text
