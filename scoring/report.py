"""The backtest report as one self-contained HTML page people can read and trust.

:func:`write_html` turns one backtest report (or two, for ``--compare``) as
built by :func:`scoring.backtest.run_backtest` into a single HTML file: inline
CSS, every chart a base64 PNG drawn with matplotlib's Agg renderer, no
external URL, so it opens offline and can be mailed around.

What a reader sees, top to bottom:

- the headline: per score kind, labels, positives, AUC, top-decile lift and
  the top/bottom decile ratio for the online model, the rule baseline and the
  weekly batch logistic regression, with one computed sentence saying how the
  online model stands against each;
- per score kind: lift by decile, cumulative gains, calibration, weekly AUC
  and log loss (prequential), the score distribution per band over time and,
  when the backtest ran with ``group_by``, the fairness table;
- alerts and triggers per day, drift events and data quality.

Every chart is a ``<figure class="chart" data-chart="NAME-KIND" data-report="I">``
(``id="rI-NAME-KIND"``), so tests and scripts can find them; a chart that has
no data becomes a ``<p class="note" data-missing="NAME-KIND">`` saying why.

Missing data never crashes the page:

>>> import tempfile
>>> from pathlib import Path
>>> path = write_html([{"kinds": {}}], Path(tempfile.mkdtemp()) / "report.html")
>>> html = path.read_text()
>>> html.startswith("<!DOCTYPE html>"), "http://" in html or "https://" in html
(True, False)
"""

from __future__ import annotations

import base64
import html
import io
import math
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from features.spec import DAY_MS, parse_duration_ms
from scoring.metrics import USEFUL_RATIO, loose_ratio_bound, ratio_ceiling

__all__ = ["chart_ids", "compare_sentence", "versus_sentence", "write_html"]

ONLINE, RULE, BATCH = "#1f5fa8", "#8c8c8c", "#e07b00"
CONFIG_COLOURS = ("#1f5fa8", "#2a9d3c")
BAND_COLOURS = {"cold": "#9ecae1", "warm": "#fdae6b", "hot": "#d94801"}
OTHER_BANDS = ("#bcbddc", "#a1d99b", "#fdd0a2", "#c7e9c0")
# Below this AUC difference two scores rank "about as well"; weekly AUCs on a
# few hundred labels wobble by more than that.
AUC_TIE = 0.01
# Fewer outcomes (or non-outcomes) than this: the headline gives no verdict against a baseline.
MIN_VERDICT_OUTCOMES = 30
MIN_WEEK_CLASS = 5  # a weekly AUC needs this many positives and negatives, or it is not drawn
MIN_WEEK_LABELS = 20  # and a weekly log loss this many labels
MIN_GROUP = 30  # smaller groups are shown but left out of max/min ratios

# Charts every labelled kind gets, and the global ones (see :func:`chart_ids`).
KIND_CHARTS = ("lift", "gains", "calibration", "weekly-auc", "weekly-log-loss", "bands")
GLOBAL_CHARTS = ("activity",)


# --------------------------------------------------------------------- helpers
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    """A number for a table cell; ``None`` / NaN become an en dash.

    >>> _num(0.71234), _num(None), _num(12345, 0)
    ('0.712', '–', '12,345')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if digits == 0:
        return f"{int(value):,}"
    return f"{float(value):,.{digits}f}"


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * float(value):.{digits}f}%"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_fig(width: float = 6.2, height: float = 3.6, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


def _week_dates(rows: Sequence[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromisoformat(r["week"]) for r in rows]


def _format_dates(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _drift_marks(ax: Any, drifts: Sequence[dict[str, Any]], kind: str | None) -> bool:
    marked = False
    for d in drifts:
        if kind is not None and d.get("kind") != kind:
            continue
        try:
            when = datetime.fromisoformat(str(d["ts"])).replace(tzinfo=None)
        except (KeyError, ValueError):
            continue
        ax.axvline(when, color="#b2182b", linestyle=":", linewidth=1.2,
                   label=None if marked else "drift detected")
        marked = True
    return marked


def _gains_from_deciles(summary: dict[str, Any]) -> list[list[float]]:
    """A 10-point gains curve from ``decile_rates`` and ``labels`` (reports without ``gains``).

    >>> _gains_from_deciles({"labels": 4, "decile_rates": [1.0, 0.0], "positives": 2})[-1]
    [1.0, 1.0]
    """
    rates = summary.get("decile_rates") or []
    n = int(summary.get("labels") or 0)
    if not rates or n == 0:
        return []
    sizes = [len(chunk) for chunk in np.array_split(np.arange(n), len(rates))]
    positives = np.cumsum([r * s for r, s in zip(rates, sizes, strict=True)])
    if positives[-1] <= 0:
        return []
    shares = np.cumsum(sizes) / n
    return [[0.0, 0.0]] + [[float(s), float(p / positives[-1])] for s, p in zip(shares, positives, strict=True)]


def _gains(summary: dict[str, Any]) -> list[list[float]]:
    return list(summary.get("gains") or _gains_from_deciles(summary))


def _base_rate(summary: dict[str, Any]) -> float | None:
    n = summary.get("labels") or 0
    return (summary.get("positives") or 0) / n if n else None


# ------------------------------------------------------------------- sentences
def versus_sentence(
    online: float | None, baseline: float | None, name: str, where: str = "",
    ci: list[float] | None = None,
) -> str:
    """How the online model ranks against a baseline, from the two AUCs.

    With ``ci``, the 95% interval of the difference, the verdict is the interval's:
    better or worse only when it excludes 0. Without one, differences below
    ``AUC_TIE`` read as a tie.

    >>> versus_sentence(0.74, 0.63, "the rule baseline")
    'ranks better than the rule baseline (AUC 0.740 vs 0.630, +0.110)'
    >>> versus_sentence(0.735, 0.74, "the weekly batch LR", ", on the same examples")
    'ranks about as well as the weekly batch LR (AUC 0.735 vs 0.740, on the same examples)'
    >>> versus_sentence(0.745, 0.74, "the rule baseline", ci=[0.002, 0.008])
    'ranks better than the rule baseline (AUC 0.745 vs 0.740, +0.005 (95%: +0.002 to +0.008))'
    >>> versus_sentence(0.765, 0.75, "the rule baseline", ci=[-0.004, 0.034])
    'ranks about as well as the rule baseline (AUC 0.765 vs 0.750, +0.015 (95%: -0.004 to +0.034))'
    >>> versus_sentence(None, 0.7, "the rule baseline")
    'cannot be compared with the rule baseline (AUC undefined: one class only)'
    """
    if online is None or baseline is None:
        return f"cannot be compared with {name} (AUC undefined: one class only)"
    diff = online - baseline
    if ci:
        tie = ci[0] <= 0 <= ci[1]
        told = f", {diff:+.3f}{interval_text(ci)}"
    else:
        tie = abs(diff) < AUC_TIE
        told = "" if tie else f", {diff:+.3f}"
    if tie:
        return f"ranks about as well as {name} (AUC {online:.3f} vs {baseline:.3f}{told}{where})"
    verb = "better" if diff > 0 else "worse"
    return f"ranks {verb} than {name} (AUC {online:.3f} vs {baseline:.3f}{told}{where})"


def change_sentence(change: dict[str, Any]) -> str:
    """How the online model fared against the batch LR right after a known change.

    >>> change_sentence({"at": "2024-07-01T00:00:00.000+00:00", "weeks": 4,
    ...     "before": {"online_auc": 0.80, "batch_auc": 0.80},
    ...     "after_pooled": {"online_auc": 0.78, "batch_auc": 0.74},
    ...     "after": [{"week": 1, "online_auc": 0.75, "batch_auc": 0.70}]})
    'In the 4 weeks after the change on 2024-07-01, the online model ranks better than the weekly batch LR (AUC 0.780 vs 0.740, +0.040, on the same examples). In the week right after it: AUC 0.750 vs 0.700.'
    >>> change_sentence({"at": "2024-07-01", "weeks": 4, "after": [], "after_pooled": {
    ...     "online_auc": 0.80, "batch_auc": 0.80, "frozen_auc": 0.70, "hindsight_auc": 0.78}})[-67:]
    'AUC 0.780: about +0.080 over the frozen model was there to recover.'
    >>> change_sentence({"at": "2024-07-01", "weeks": 4, "after": [], "after_pooled": {
    ...     "online_auc": 0.765, "batch_auc": 0.75, "online_minus_batch_ci95": [-0.004, 0.034]}})[47:]
    'the online model ranks about as well as the weekly batch LR (AUC 0.765 vs 0.750, +0.015 (95%: -0.004 to +0.034), on the same examples).'
    >>> change_sentence({"at": "2024-07-01", "weeks": 4, "after": [],
    ...     "after_pooled": {"online_auc": 0.80, "batch_auc": 0.80, "frozen_auc": 0.79}})[-74:]
    "at AUC 0.790: learning on after it moved the online model's AUC by +0.010."
    """
    pooled = change.get("after_pooled") or {}
    # The verdict is the interval's when there is one (resampling customers), as in the headline.
    text = (f"In the {change.get('weeks')} weeks after the change on {str(change.get('at'))[:10]}, the online "
            "model " + versus_sentence(pooled.get("online_auc"), pooled.get("batch_auc"),
                                        "the weekly batch LR", ", on the same examples",
                                        ci=pooled.get("online_minus_batch_ci95")) + ".")
    first = (change.get("after") or [{}])[0]
    if first.get("online_auc") is not None and first.get("batch_auc") is not None:
        text += f" In the week right after it: AUC {first['online_auc']:.3f} vs {first['batch_auc']:.3f}."
    frozen, online = pooled.get("frozen_auc"), pooled.get("online_auc")
    if frozen is not None and online is not None:
        text += (f" A model frozen at the change (the weekly LR's last fit before it) ranks the same examples"
                 f" at AUC {frozen:.3f}: learning on after it moved the online model's AUC by {online - frozen:+.3f}.")
    hindsight = pooled.get("hindsight_auc")
    if hindsight is not None and frozen is not None:
        gain = hindsight - frozen
        text += (f" A logistic regression fitted on these weeks' own labels, in hindsight (out of fold by"
                 f" customer), ranks them at AUC {hindsight:.3f}: "
                 + (f"about {gain:+.3f} over the frozen model was there to recover." if gain > 0.005 else
                    "no better than the frozen model, so there was next to nothing to recover."))
    return text


MOMENT_HEAD = ("scored at", "labels", "positives", "AUC", "top/bottom decile",
               "same examples: online / batch AUC", "same examples: online / batch top/bottom")


def _moment_rows(moments: dict[str, Any]) -> list[list[str]]:
    rows = []
    for moment, name in (("event", "an event"), ("idle", "an idle rescore")):
        f = moments.get(moment)
        if not f:
            continue
        on, ba = f.get("online_on_batch_examples") or {}, f.get("batch_weekly") or {}
        rows.append([
            name, _num(f.get("labels"), 0), _num(f.get("positives"), 0), _num(f.get("auc")),
            _ratio_html(f),
            f"{_num(on.get('auc'))} / {_num(ba.get('auc'))}",
            f"{_ratio_html(on)} / {_ratio_html(ba)}",
        ])
    return rows


CHANGE_HEAD = ("period", "labels", "positives", "online AUC", "weekly batch LR AUC", "online - batch",
               "frozen at the change AUC", "online - frozen", "fitted on these weeks, in hindsight AUC")


def _change_rows(change: dict[str, Any]) -> list[list[str]]:
    weeks = change.get("weeks")
    periods = [(f"{weeks} weeks before", change.get("before") or {})]
    periods += [(f"week {r.get('week')} after", r) for r in change.get("after") or []]
    periods.append((f"{weeks} weeks after, pooled", change.get("after_pooled") or {}))
    rows = []
    for name, f in periods:
        on, ba, fr = f.get("online_auc"), f.get("batch_auc"), f.get("frozen_auc")
        rows.append([_e(name), _num(f.get("labels"), 0), _num(f.get("positives"), 0), _num(on), _num(ba),
                     _signed_diff(on, ba) + interval_text(f.get("online_minus_batch_ci95")), _num(fr),
                     _signed_diff(on, fr) + interval_text(f.get("online_minus_frozen_ci95")),
                     _num(f.get("hindsight_auc"))])
    return rows


def interval_text(ci: list[float] | None) -> str:
    """A 95% interval after a difference, or nothing (the report's and the command line's).

    >>> interval_text([-0.012, 0.0205]), interval_text(None)
    (' (95%: -0.012 to +0.021)', '')
    """
    if not ci:
        return ""
    return f" (95%: {ci[0]:+.3f} to {ci[1]:+.3f})"


def _signed_diff(a: float | None, b: float | None) -> str:
    """``a - b`` to 3 places with its sign, or a dash.

    >>> _signed_diff(0.8, 0.75), _signed_diff(0.7, 0.7), _signed_diff(None, 0.7)
    ('+0.050', '+0.000', '–')
    """
    if a is None or b is None:
        return "–"
    return f"{round(a - b, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"


def compare_sentence(a_name: str, a_auc: float | None, b_name: str, b_auc: float | None) -> str:
    """Which of two configurations ranks better on one kind.

    >>> compare_sentence("default", 0.70, "tree", 0.75)
    'tree ranks better than default (AUC 0.750 vs 0.700, +0.050).'
    """
    if a_auc is None or b_auc is None:
        return f"{b_name} and {a_name} cannot be compared (AUC undefined)."
    diff = b_auc - a_auc
    if abs(diff) < AUC_TIE:
        return f"{b_name} and {a_name} rank about as well (AUC {b_auc:.3f} vs {a_auc:.3f})."
    verb = "better" if diff > 0 else "worse"
    return f"{b_name} ranks {verb} than {a_name} (AUC {b_auc:.3f} vs {a_auc:.3f}, {diff:+.3f})."


def _headline_sentence(k: dict[str, Any]) -> str:
    """The headline of one learned kind: its baselines, then its top/bottom decile ratio.

    >>> k = {"labels": 366, "positives": 14, "auc": 0.688, "sources": {"cold_start": 366},
    ...      "baselines": {"rule": {"auc": 0.688}}, "top_bottom_decile_ratio": 5.8,
    ...      "top_bottom_ratio_low": 0.9, "bottom_decile_positives": 1}
    >>> print(_headline_sentence(k))  # doctest: +NORMALIZE_WHITESPACE
    The model never took over from the cold-start rule (too few labels of a class, or it did not
    beat the rule on trial): every score here is the rule's. With 14 labels with the outcome and
    352 without, too few (fewer than 30 of each) for a verdict against a baseline. Its bottom
    decile holds 1 outcome, too few to tell its top/bottom ratio (5.8× as a point figure) from
    1× at 95%.
    """
    base = k.get("baselines") or {}
    sources = k.get("sources") or {}
    never_served = bool(sources) and not sources.get("model")
    positives, labels = k.get("positives") or 0, k.get("labels") or 0
    few = min(positives, labels - positives) < MIN_VERDICT_OUTCOMES
    if never_served:
        sentence = ("The model never took over from the cold-start rule (too few labels of a class, or it did "
                    "not beat the rule on trial): every score here is the rule's.")
        if few:
            sentence += f" {_too_few(positives, labels)}"
        elif (batch := base.get("batch_weekly")) is not None:
            same = batch.get("online_on_same_examples") or {}
            sentence += " The rule " + versus_sentence(same.get("auc"), batch.get("auc"), "the weekly batch LR",
                                                       ", on the same examples",
                                                       ci=batch.get("online_minus_batch_ci95")) + "."
        return sentence + _ratio_sentence(k)
    if few:
        return _too_few(positives, labels) + _ratio_sentence(k)
    parts = []
    rule = base.get("rule")
    if rule is not None:
        parts.append(versus_sentence(k.get("auc"), rule.get("auc"), "the rule baseline",
                                     ci=rule.get("online_minus_rule_ci95")))
    batch = base.get("batch_weekly")
    if batch is not None:
        same = batch.get("online_on_same_examples") or {}
        cov = batch.get("coverage")
        where = ", on the same examples" if cov is None else f", on the {_pct(cov, 0)} of examples both scored"
        parts.append(versus_sentence(same.get("auc"), batch.get("auc"), "the weekly batch LR", where,
                                     ci=batch.get("online_minus_batch_ci95")))
    else:
        parts.append("has no batch baseline to compare with (not run, or no week with both classes)")
    # "ranks worse than A (...) and worse than B (...)": one verb for both baselines.
    rest = [p.removeprefix("ranks ") if parts[0].startswith("ranks ") else p for p in parts[1:]]
    sentence = "The online model " + " and ".join(parts[:1] + rest) + "."
    warm = k.get("model_only")
    if warm and warm.get("auc") is not None and k.get("labels"):
        share = warm["labels"] / k["labels"]
        sentence += (f" The first {_pct(1 - share, 0)} of examples were scored by the cold-start rule;"
                     f" on the model's own {_pct(share, 0)} its AUC is {warm['auc']:.3f}")
        rule_there = warm.get("rule_auc")
        sentence += "." if rule_there is None else f", the rule's on the same examples {rule_there:.3f}."
    return sentence + _ratio_sentence(k)


def _too_few(positives: int, labels: int) -> str:
    """Why the headline gives no verdict: the smaller class, named.

    >>> _too_few(32, 38)
    'With 32 labels with the outcome and 6 without, too few (fewer than 30 of each) for a verdict against a baseline.'
    """
    return (f"With {positives:,} labels with the outcome and {labels - positives:,} without, too few (fewer than "
            f"{MIN_VERDICT_OUTCOMES} of each) for a verdict against a baseline.")


def _ratio_sentence(k: dict[str, Any]) -> str:
    sentence = ""
    ratio = k.get("top_bottom_decile_ratio")
    low, bottom = loose_ratio_bound(k), k.get("bottom_decile_positives")
    if ratio is not None:
        ceiling = ratio_ceiling(k.get("labels"), k.get("positives"))
        if low is not None and low < 1.0:
            sentence += (
                f" Its bottom decile holds {bottom:,} outcome{'' if bottom == 1 else 's'}, too few to tell its "
                f"top/bottom ratio ({_ratio_text(ratio)}× as a point figure) from 1× at 95%"
            )
        elif low is not None:
            # The bottom decile's rate is the ratio's denominator: a few outcomes (or none, half
            # a case) make the point figure say more than the examples do.
            judged = ("above" if low >= USEFUL_RATIO else "below" if ratio < USEFUL_RATIO else None)
            verdict = (f"{judged} the {USEFUL_RATIO:.0f}× rule of thumb for a useful score" if judged else
                       f"which cannot tell whether it passes the {USEFUL_RATIO:.0f}× rule of thumb for a useful score")
            sentence += (
                f" Its bottom decile holds {bottom:,} outcome{'' if bottom == 1 else 's'}, too few for a firm "
                f"top/bottom ratio ({_ratio_text(ratio)}×): its top decile has the outcome at least "
                f"{_ratio_text(low)}× as often (95% bound), {verdict}"
            )
        elif ceiling is not None and ceiling < USEFUL_RATIO:
            sentence += (
                f" Its top decile has the outcome {ratio:.1f}× as often as its bottom decile; at a "
                f"{_pct(k['positives'] / k['labels'])} "
                f"outcome rate no score can reach more than {ceiling:.2f}×, so the {USEFUL_RATIO:.0f}× rule "
                "of thumb does not apply"
            )
        else:
            useful = "above" if ratio >= USEFUL_RATIO else "below"
            sentence += (
                f" Its top decile has the outcome {_ratio_text(ratio)}× as often as its bottom decile, "
                f"{useful} the {USEFUL_RATIO:.0f}× rule of thumb for a useful score"
            )
            parts_below = [(name, m["top_bottom_decile_ratio"]) for name, m in (k.get("by_moment") or {}).items()
                           if m.get("top_bottom_decile_ratio") is not None]
            if ratio >= USEFUL_RATIO and len(parts_below) > 1 and all(r < USEFUL_RATIO for _, r in parts_below):
                # Two populations pooled (active customers, silent ones): the ratio is in the mix.
                within = " and ".join(f"{r:.1f}× {_MOMENTS.get(name, name)}" for name, r in parts_below)
                sentence += (f", but only pooled: within each population it is below ({within}), so it "
                             "mostly tells active customers from silent ones")
        sentence += "."
    return sentence


def _ratio_text(ratio: float | None) -> str:
    """A top/bottom decile ratio to one place, or two near the rule of thumb: a red 3.0 beside
    a green 3.3 read as a contradiction (it was 2.96).

    >>> _ratio_text(2.96), _ratio_text(12.34), _ratio_text(None)
    ('2.96', '12.3', '–')
    """
    return _num(ratio, 2 if ratio is not None and abs(ratio - USEFUL_RATIO) < 0.05 else 1)


_MOMENTS = {"event": "among customers scored at their own events", "idle": "among silent customers rescored on schedule"}


# ---------------------------------------------------------------------- charts
class _Page:
    """Collects HTML fragments and the ids of the charts drawn."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.charts: list[str] = []
        # Charts not yet drawn: (index of their part, report, name, title, caption, draw).
        self._drafts: list[tuple[int, int, str, str, str, Callable[[], Figure | str]]] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def chart(
        self, report: int, name: str, title: str, caption: str, draw: Callable[[], Figure | str]
    ) -> None:
        """A chart, drawn by :meth:`render`; ``draw`` returns a figure, or a string saying why there is none."""
        self._drafts.append((len(self.parts), report, name, title, caption, draw))
        self.add("")  # its place, filled by render()

    def render(self) -> None:
        """Draw every chart, on several cores where there are (they are independent)."""
        drafts, self._drafts = self._drafts, []
        results = _render_all([draw for *_, draw in drafts])
        for (at, report, name, title, caption, _), (drawn, result) in zip(drafts, results, strict=True):
            cid = f"r{report}-{name}"
            if not drawn:
                self.parts[at] = (
                    f'<div class="chart-missing" data-missing="{_e(name)}" data-report="{report}">'
                    f"<h4>{_e(title)}</h4><p class=\"note\">{_e(result)}</p></div>"
                )
                continue
            self.charts.append(cid)
            self.parts[at] = (
                f'<figure class="chart" id="{_e(cid)}" data-chart="{_e(name)}" data-report="{report}">'
                f"<h4>{_e(title)}</h4>"
                f'<img alt="{_e(title)}" src="data:image/png;base64,{result}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )


# Charts to draw, for the processes render() forks: they inherit the callables, not pickles.
_PENDING: list[Callable[[], Figure | str]] = []
# Fewer charts than this are drawn in this process: forking costs more than it saves.
PARALLEL_MIN_CHARTS = 6
MAX_CHART_PROCESSES = 4


def _chart_worker() -> None:
    # Forked with the caller's handlers: the pool ends its workers with SIGTERM, which
    # `leadpulse backtest` turns into an exception (a traceback after every report).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the caller stops the pool


def _render_one(i: int) -> tuple[bool, str]:
    result = _PENDING[i]()
    return (False, result) if isinstance(result, str) else (True, _png(result))


def _render_all(draws: list[Callable[[], Figure | str]]) -> list[tuple[bool, str]]:
    """Each chart as (drawn, base64 PNG) or (False, why not), in order.

    Matplotlib draws about 8 charts a second on one core, and a report has 7-25 of them.

    >>> _render_all([lambda: "no data"])
    [(False, 'no data')]
    """
    global _PENDING
    import multiprocessing

    from scoring.parallel import fork_cores

    cores = fork_cores()
    _PENDING = draws
    try:
        if len(draws) >= PARALLEL_MIN_CHARTS and cores > 1:
            try:
                with multiprocessing.get_context("fork").Pool(min(cores, MAX_CHART_PROCESSES), _chart_worker) as pool:
                    return pool.map(_render_one, range(len(draws)), chunksize=1)
            except OSError:
                pass  # no process to fork: draw them here
        return [_render_one(i) for i in range(len(draws))]
    finally:
        _PENDING = []


def _lift_chart(k: dict[str, Any]) -> Figure | str:
    series = [("online model", k, ONLINE)]
    base = k.get("baselines") or {}
    if base.get("rule"):
        series.append(("rule baseline", base["rule"], RULE))
    if base.get("batch_weekly"):
        series.append(("weekly batch LR", base["batch_weekly"], BATCH))
    series = [(n, s, c) for n, s, c in series if s.get("decile_rates") and _base_rate(s)]
    if not series:
        return "Not enough labelled examples (at least 10, with a positive) for deciles."
    fig, axes = _new_fig()
    ax = axes[0, 0]
    width = 0.8 / len(series)
    for i, (name, s, colour) in enumerate(series):
        lifts = [r / (_base_rate(s) or 1) for r in s["decile_rates"]]
        x = np.arange(1, len(lifts) + 1) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, lifts, width=width, color=colour, label=name)
    ax.axhline(1.0, color="#333333", linewidth=1, linestyle="--", label="no model (lift 1)")
    ax.set_xticks(range(1, 11))
    ax.set_xlabel("score decile (1 = highest scores)")
    ax.set_ylabel("outcome rate / overall rate")
    ax.legend(frameon=False, fontsize=8)
    return fig


def _gains_chart(k: dict[str, Any]) -> Figure | str:
    base = k.get("baselines") or {}
    series = [("online model", _gains(k), ONLINE)]
    if base.get("rule"):
        series.append(("rule baseline", _gains(base["rule"]), RULE))
    if base.get("batch_weekly"):
        series.append(("weekly batch LR", _gains(base["batch_weekly"]), BATCH))
    series = [s for s in series if s[1]]
    if not series:
        return "No positive outcome yet: a gains curve needs at least one."
    fig, axes = _new_fig()
    ax = axes[0, 0]
    for name, points, colour in series:
        xs, ys = zip(*points, strict=True)
        ax.plot([100 * x for x in xs], [100 * y for y in ys], color=colour, linewidth=2, label=name)
    ax.plot([0, 100], [0, 100], color="#333333", linestyle="--", linewidth=1, label="random targeting")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_xlabel("% of examples targeted, highest scores first")
    ax.set_ylabel("% of positive outcomes captured")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return fig


def _calibration_chart(k: dict[str, Any]) -> Figure | str:
    cal = [c for c in (k.get("calibration") or []) if c[2] > 0]
    if not cal:
        return "No labelled examples to calibrate against."
    fig, axes = _new_fig()
    ax = axes[0, 0]
    pred = [c[0] for c in cal]
    obs = [c[1] for c in cal]
    counts = np.asarray([c[2] for c in cal], dtype=float)
    ax.plot([0, 1], [0, 1], color="#333333", linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot(pred, obs, color=ONLINE, linewidth=1.5, label="online model")
    ax.scatter(pred, obs, s=20 + 300 * counts / counts.max(), color=ONLINE, alpha=0.75,
               edgecolor="white", zorder=3)
    for p, o, n in zip(pred, obs, counts, strict=True):
        ax.annotate(f"{int(n):,}", (p, o), textcoords="offset points", xytext=(6, -10), fontsize=7,
                    color="#555555")
    top = max(1e-3, max(pred), max(obs))
    lim = min(1.0, top * 1.1)
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed outcome rate")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    return fig


def _enough(row: dict[str, Any], auc: bool) -> bool:
    """Whether a week has labels enough for its figure to be more than noise."""
    pos = int(row.get("positives") or 0)
    neg = int(row.get("labels") or 0) - pos
    return (pos >= MIN_WEEK_CLASS and neg >= MIN_WEEK_CLASS) if auc else pos + neg >= MIN_WEEK_LABELS


def _has_weekly(rows: Sequence[dict[str, Any]], keys: Sequence[str], auc: bool) -> bool:
    return any(_enough(r, auc) and r.get(key) is not None for r in rows for key in keys)


def _weekly_chart(
    rows: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str, str]], ylabel: str,
    drifts: Sequence[dict[str, Any]], kind: str, counts: bool = True, ref: float | None = None,
    auc: bool = True, change_at: str | None = None,
) -> Figure | str:
    rows = [r if _enough(r, auc) else {"week": r["week"], "labels": r.get("labels", 0)} for r in rows]
    present = [(key, name, colour) for key, name, colour in keys
               if any(r.get(key) is not None for r in rows)]
    if not rows or not present:
        return "No week with both outcomes yet: weekly figures need positives and negatives."
    fig, axes = _new_fig(width=12.6, height=3.6)
    ax = axes[0, 0]
    dates = _week_dates(rows)
    if counts:
        twin = ax.twinx()
        twin.bar(dates, [r.get("labels", 0) for r in rows], width=5, color="#eeeeee", zorder=0)
        twin.set_ylabel("labels per week", color="#999999")
        twin.tick_params(axis="y", colors="#999999")
        for side in ("top",):
            twin.spines[side].set_visible(False)
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    values = [float(r[key]) for key, _, _ in present for r in rows if r.get(key) is not None]
    # One wild week (a first fit on few labels) must not flatten the rest: clip it, and say so.
    top = max(values) if values else 1.0
    if not auc and len(values) >= 8:
        top = min(top, 1.6 * float(np.percentile(values, 90)))
    for key, name, colour in present:
        ys = np.asarray([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        ax.plot(dates, np.minimum(ys, top), color=colour, linewidth=1.8, marker="o", markersize=3,
                label=name)
        off = [(d, top) for d, y in zip(dates, ys, strict=True) if y > top]
        if off:
            ax.plot(*zip(*off, strict=True), linestyle="none", marker="^", markersize=8, color=colour,
                    label=f"{name}: off scale (clipped)")
    if ref is not None:
        ax.axhline(ref, color="#333333", linestyle="--", linewidth=1, label=f"{ref:g} (coin flip)")
    _drift_marks(ax, drifts, kind)
    if change_at:
        ax.axvline(datetime.fromisoformat(change_at).replace(tzinfo=None), color="#000000",
                   linestyle="--", linewidth=1.4, label="known change")
    _format_dates(ax)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8, ncol=6, loc="lower left", bbox_to_anchor=(0, 1.0))
    return fig


def _bands_chart(rows: Sequence[dict[str, Any]]) -> Figure | str:
    if not rows:
        return "No score was published for this kind."
    names: list[str] = [b for b in BAND_COLOURS if any(b in r for r in rows)]
    names += sorted({k for r in rows for k in r if k != "week"} - set(names))
    totals = np.asarray([sum(float(r.get(b, 0)) for b in names) for r in rows])
    totals[totals == 0] = 1.0
    fig, axes = _new_fig()
    ax = axes[0, 0]
    dates = _week_dates(rows)
    bottom = np.zeros(len(rows))
    others = iter(OTHER_BANDS * 4)
    for band in names:
        share = 100 * np.asarray([float(r.get(band, 0)) for r in rows]) / totals
        colour = BAND_COLOURS.get(band) or next(others)
        ax.bar(dates, share, bottom=bottom, width=6, color=colour, label=band, edgecolor="white",
               linewidth=0.3)
        bottom += share
    _format_dates(ax)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of scores published that week")
    ax.legend(frameon=False, fontsize=8, ncol=len(names), loc="upper center",
              bbox_to_anchor=(0.5, -0.12))
    return fig


def _activity_chart(per_day: dict[str, dict[str, int]]) -> Figure | str:
    if not per_day:
        return "No score, alert or trigger was published."
    days = sorted(per_day)
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    def series(name: str) -> list[int]:
        return [int(per_day.get(d.isoformat(), {}).get(name, 0)) for d in span]
    fig, axes = _new_fig(width=12.6, height=4.2, rows=2)
    top, bottom = axes[0, 0], axes[1, 0]
    top.fill_between(span, series("scores"), step="mid", color="#c6dbef", label="scores published")
    top.set_ylabel("scores / day")
    top.legend(frameon=False, fontsize=8, loc="upper left")
    bottom.plot(span, series("alerts"), color="#d94801", linewidth=1.2, label="alerts (score jumps)")
    bottom.plot(span, series("triggers"), color="#54278f", linewidth=1.2, label="nurturing triggers")
    bottom.set_ylabel("per day")
    bottom.legend(frameon=False, fontsize=8, loc="upper left", ncol=2)
    for ax in (top, bottom):
        _format_dates(ax)
    return fig


def _fairness_chart(fair: dict[str, Any]) -> Figure | str:
    groups = fair.get("groups") or {}
    if not groups:
        return "No group attribute was found on the events."
    names = list(groups)
    fig, axes = _new_fig(width=12.6, height=3.4, cols=2)
    left, right = axes[0, 0], axes[0, 1]
    for i, g in enumerate(names):
        q = groups[g].get("score_quantiles")
        if q and len(q) == 5:
            left.plot([q[0], q[4]], [i, i], color=ONLINE, linewidth=1.2)
            left.add_patch(_rect(q[1], i - 0.25, q[3] - q[1], 0.5))
            left.plot([q[2], q[2]], [i - 0.25, i + 0.25], color="white", linewidth=2)
        left.plot(groups[g]["mean_score"], i, marker="D", color="#111111", markersize=4,
                  label="mean" if i == 0 else None)
    threshold = fair.get("threshold")
    if threshold is not None:
        left.axvline(threshold, color="#b2182b", linestyle="--", linewidth=1,
                     label=f"selection threshold {threshold:.3f}")
    left.set_yticks(range(len(names)), [str(n) for n in names])
    left.set_xlabel("score (box p25–p75, line p10–p90, white = median)")
    left.legend(frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    y = np.arange(len(names))
    right.barh(y + 0.2, [100 * groups[g]["outcome_rate"] for g in names], height=0.4,
               color="#6a51a3", label="outcome rate")
    right.barh(y - 0.2, [100 * groups[g]["selected_rate"] for g in names], height=0.4,
               color=ONLINE, label="selected at threshold")
    right.set_yticks(y, [str(n) for n in names])
    right.set_xlabel("% of the group's examples")
    right.legend(frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    return fig


def _rect(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=ONLINE, alpha=0.7, edgecolor=ONLINE)


def _compare_weekly_chart(
    reports: Sequence[dict[str, Any]], labels: Sequence[str], kind: str
) -> Figure | str:
    fig, axes = _new_fig(width=12.6, height=3.6)
    ax = axes[0, 0]
    drawn = False
    for rep, label, colour in zip(reports, labels, CONFIG_COLOURS, strict=False):
        rows = [r for r in (rep.get("kinds") or {}).get(kind, {}).get("weekly") or [] if _enough(r, True)]
        if not any(r.get("auc") is not None for r in rows):
            continue
        ys = [np.nan if r.get("auc") is None else r["auc"] for r in rows]
        ax.plot(_week_dates(rows), ys, color=colour, linewidth=1.8, marker="o", markersize=3,
                label=f"{label}: online model")
        drawn = True
    rows = [r for r in (reports[0].get("kinds") or {}).get(kind, {}).get("weekly") or [] if _enough(r, True)]
    if any(r.get("batch_auc") is not None for r in rows):
        ys = [np.nan if r.get("batch_auc") is None else r["batch_auc"] for r in rows]
        ax.plot(_week_dates(rows), ys, color=BATCH, linewidth=1.2, linestyle="--",
                label=f"{labels[0]}: weekly batch LR")
    if not drawn:
        return "Neither configuration has a week with both outcomes for this kind."
    ax.axhline(0.5, color="#333333", linestyle="--", linewidth=1)
    _format_dates(ax)
    ax.set_ylabel("weekly AUC")
    ax.legend(frameon=False, fontsize=8, ncol=3, loc="lower left", bbox_to_anchor=(0, 1.0))
    return fig


# ---------------------------------------------------------------------- tables
def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _model_rows(k: dict[str, Any], prefix: str = "") -> list[list[str]]:
    base = k.get("baselines") or {}
    entries: list[tuple[str, dict[str, Any]]] = [("online model", k)]
    if base.get("rule"):
        entries.append(("rule baseline (RFM / engagement points)", base["rule"]))
    if base.get("batch_weekly"):
        b = base["batch_weekly"]
        entries.append((f"weekly batch LR (scored {_pct(b.get('coverage'), 0)} of examples)", b))
        same = b.get("online_on_same_examples")
        if same:
            entries.append(("online model on the batch LR's examples",
                            {"labels": b.get("labels"), "positives": b.get("positives"), **same}))
    rows = []
    for name, s in entries:
        rows.append([
            _e(prefix + name), _num(s.get("labels"), 0), _num(s.get("positives"), 0),
            f"<b>{_num(s.get('auc'))}</b>", _num(s.get("log_loss")),
            _num(s.get("lift_top_decile"), 2), _ratio_html(s),
        ])
    return rows


def _ratio_html(s: dict[str, Any]) -> str:
    """A top/bottom decile ratio for a table: its 95% lower bound (marked) when the bottom
    decile holds too few outcomes, coloured against 3x where 3x is reachable.

    >>> _ratio_html({"top_bottom_decile_ratio": 75.6, "top_bottom_ratio_low": 33.7, "bottom_decile_positives": 2})
    '<span class="good"><span title="point figure 75.6; the bottom decile holds 2 outcomes">≥ 33.7</span></span>'
    """
    ratio = s.get("top_bottom_decile_ratio")
    low, bottom = loose_ratio_bound(s), s.get("bottom_decile_positives")
    if ratio is not None and low is not None:
        if low < 1.0:  # not even "better than flat" at 95%: a bound that says nothing
            return (f'<span title="point figure {_ratio_text(ratio)}; the bottom decile holds {bottom:,} '
                    'outcomes, too few to bound the ratio above 1">?</span>')
        shown = (f'<span title="point figure {_ratio_text(ratio)}; the bottom decile holds {bottom:,} '
                 f'outcomes">≥ {_ratio_text(low)}</span>')
        return f'<span class="good">{shown}</span>' if low >= USEFUL_RATIO else shown
    flag = ""
    ceiling = ratio_ceiling(s.get("labels"), s.get("positives"))
    if ratio is not None and (ceiling is None or ceiling >= USEFUL_RATIO):
        flag = ' class="good"' if ratio >= USEFUL_RATIO else ' class="weak"'
    return f"<span{flag}>{_ratio_text(ratio)}</span>"


MODEL_HEAD = ("score", "labels", "positives", "AUC", "log loss", "top-decile lift", "top/bottom decile")


def _config_name(rep: dict[str, Any], index: int, count: int) -> str:
    name = str((rep.get("config") or {}).get("name") or "default")
    return f"{'AB'[index]}: {name}" if count > 1 else name


# --------------------------------------------------------------------- sections
def _overview(page: _Page, rep: dict[str, Any]) -> None:
    kinds = rep.get("kinds") or {}
    if not kinds:
        page.add('<p class="note" data-note="no-kinds">No score kind produced labelled examples: '
                 "nothing to judge yet (too short a history, or every horizon reaches past its end).</p>")
        return
    rows = []
    for name, k in kinds.items():
        base = k.get("baselines") or {}
        batch = base.get("batch_weekly") or {}
        rows.append([
            f'<a href="#{_e(name)}">{_e(name)}</a>', _num(k.get("labels"), 0), _num(k.get("positives"), 0),
            f"<b>{_num(k.get('auc'))}</b>", _num((base.get("rule") or {}).get("auc")),
            _num(batch.get("auc")), _num(k.get("lift_top_decile"), 2),
            _ratio_html(k), _e(_headline_sentence(k)),
        ])
    page.add(_table(("kind", "labels", "positives", "AUC online", "AUC rule", "AUC batch",
                     "top-decile lift", "top/bottom", "in one sentence"), rows, "headline"))


def kind_definition(ks: dict[str, Any]) -> str:
    """What a learned kind predicts, from its settings in report.json (``config.kind_settings``).

    >>> kind_definition({"type": "learned", "horizon": "60d", "outcome": ["purchase:completed"],
    ...     "label_on_outcome": 0, "requires_purchase": True, "active_within": "60d",
    ...     "score_on": ["purchase:completed"], "tick": "14d"})
    'Predicts: no purchase:completed within 60d of the score (label 1 when none comes). Scored for customers with a purchase, last one within 60d; at purchase:completed and every 14d of silence.'
    >>> kind_definition({"type": "rule"})
    ''
    """
    if ks.get("type") != "learned" or not ks.get("horizon"):
        return ""
    outcome = " or ".join(ks.get("outcome") or ["an outcome"])
    if ks.get("label_on_outcome", 1):
        text = f"Predicts: {outcome} within {ks['horizon']} of the score."
    else:
        text = f"Predicts: no {outcome} within {ks['horizon']} of the score (label 1 when none comes)."
    who = []
    if ks.get("requires_purchase"):
        who.append("customers with a purchase" + (f", last one within {ks['active_within']}"
                                                  if ks.get("active_within") else ""))
    when = []
    if ks.get("only_on"):
        when.append("only at " + ", ".join(ks["only_on"]))
    elif ks.get("score_on"):
        when.append("at " + ", ".join(ks["score_on"]))
    if ks.get("tick"):
        when.append(f"every {ks['tick']} of silence")
    if who or when:
        text += " Scored" + (f" for {who[0]}" if who else "") + ("; " if who and when else " ") + " and ".join(when)
        text = text.rstrip() + "."
    return text


def _kind_section(page: _Page, ri: int, rep: dict[str, Any], kind: str, k: dict[str, Any] | None) -> None:
    page.add(f'<section class="kind" id="{_e(kind) if ri == 0 else f"r{ri}-{_e(kind)}"}" '
             f'data-kind="{_e(kind)}" data-report="{ri}"><h3>{_e(kind)}</h3>')
    drifts = rep.get("drifts") or []
    bands = (rep.get("bands_per_week") or {}).get(kind) or []
    if not k or not k.get("labels"):
        page.add(f'<p class="note" data-note="no-labels-{_e(kind)}">No labelled examples for this '
                 "kind: it has no outcome to judge against (a points score), or no horizon closed "
                 "inside the history. Only its published scores are shown.</p>")
        page.add('<div class="grid">')
        page.chart(ri, f"bands-{kind}", "Score bands over time", _bands_caption(rep, kind),
               lambda: _bands_chart(bands))
        page.add("</div></section>")
        return
    defined = kind_definition((rep.get("config") or {}).get("kind_settings", {}).get(kind) or {})
    if defined:
        page.add(f'<p class="definition" data-definition="{_e(kind)}">{_e(defined)}</p>')
    page.add(f'<p class="sentence">{_e(_headline_sentence(k))}</p>')
    page.add(_table(MODEL_HEAD, _model_rows(k), "models"))
    sources = k.get("sources") or {}
    if sources:
        page.add('<p class="small">Scores by source: ' + ", ".join(
            f"{_e(s)} {_num(n, 0)}" for s, n in sources.items()) +
            " (cold start = rule score until the model has seen enough labels).</p>")
    moments = k.get("by_moment")
    if moments:
        page.add(f'<div class="moments" data-moments="{_e(kind)}">')
        page.add('<p class="small">By scoring moment: at one of the customer\'s events, or at a scheduled '
                 "rescore of a silent customer (two populations: the decile ratio over both mixes them).</p>")
        page.add(_table(MOMENT_HEAD, _moment_rows(moments), "moments"))
        page.add("</div>")
    model = (rep.get("models") or {}).get(kind)
    if model and model.get("weights"):
        page.add(f'<div class="weights" data-weights="{_e(kind)}">')
        page.add(f'<p class="small">The model at the end of the replay: {_num(model["labels"], 0)} labels, '
                 f'{"serving" if model["serving"] else "not serving yet (cold start or on trial)"}. Its largest '
                 "weights, per standard deviation of the log-compressed input; positive raises the "
                 "probability (a name ending in _missing: the input had no value).</p>")
        page.add(_table(("feature", "weight"), [[_e(w["feature"]), _num(w["weight"])] for w in model["weights"]],
                        "weights"))
        page.add("</div>")
    weekly = k.get("weekly") or []
    change = k.get("change")
    change_at = change.get("at") if change else None
    if change:
        page.add(f'<div class="change" data-change="{_e(kind)}"><h4>Before and after the known change</h4>')
        page.add(f'<p class="sentence">{_e(change_sentence(change))}</p>')
        page.add(_table(CHANGE_HEAD, _change_rows(change), "change"))
        page.add("</div>")
    page.add('<div class="grid">')
    page.chart(ri, f"lift-{kind}", "Lift by decile",
               "Outcome rate in each tenth of examples, best-scored first, over the overall rate. "
               "A useful score has a tall first bar and bars that fall to the right.",
               lambda: _lift_chart(k))
    page.chart(ri, f"gains-{kind}", "Cumulative gains",
               "Share of all positive outcomes found by targeting the top x% of scores. "
               "The further above the diagonal, the better.", lambda: _gains_chart(k))
    page.chart(ri, f"calibration-{kind}", "Calibration (online model)",
               "Predicted probability against the observed rate, per probability bin (dot size and "
               "label = examples). On the diagonal, a score of 0.3 means 30%.",
               lambda: _calibration_chart(k))
    page.chart(ri, f"bands-{kind}", "Score bands over time", _bands_caption(rep, kind),
               lambda: _bands_chart(bands))
    page.add("</div>")
    page.chart(ri, f"weekly-auc-{kind}", "Weekly AUC (prequential)",
               "Each week's examples were scored before their outcome was known; AUC per week of the "
               f"scoring time; weeks with fewer than {MIN_WEEK_CLASS} positives or negatives are not "
               "drawn. Grey bars: labels per week (few labels = noisy AUC). Red dotted lines: drift "
               "detected by the online model.",
               lambda: _weekly_chart(weekly, (("auc", "online model", ONLINE), ("rule_auc", "rule baseline", RULE),
                                              ("batch_auc", "weekly batch LR", BATCH)),
                                     "AUC", drifts, kind, ref=0.5, change_at=change_at))
    page.chart(ri, f"weekly-log-loss-{kind}", "Weekly log loss (prequential, lower is better)",
               f"Probability quality per week (weeks with fewer than {MIN_WEEK_LABELS} labels not drawn). "
               "The rule baseline is points mapped to a probability, not a calibrated model, so its "
               "log loss is left out.",
               lambda: _weekly_chart(weekly, (("log_loss", "online model", ONLINE),
                                              ("batch_log_loss", "weekly batch LR", BATCH)),
                                     "log loss", drifts, kind, auc=False, change_at=change_at))
    fair = k.get("fairness")
    if fair:
        _fairness_section(page, ri, kind, fair)
    page.add("</section>")


_BANDS_CAPTION = ("Share of the scores published each week that fell in each band "
                  "(cold / warm / hot thresholds of the kind).")


def _kind_settings(rep: dict[str, Any], kind: str) -> dict[str, Any]:
    """A kind's settings as the report's config gave them (empty in reports from before they were kept)."""
    return ((rep.get("config") or {}).get("kind_settings") or {}).get(kind) or {}


def _bands_caption(rep: dict[str, Any], kind: str) -> str:
    """The bands chart's caption, with the kind's thresholds when the report has them.

    >>> _bands_caption({"config": {"kind_settings": {"k": {"bands": {"warm": 15, "hot": 40}}}}}, "k")
    'Share of the scores published each week that fell in each band: cold below 15, warm from 15, hot from 40 (on the 0-100 value, 100 x the probability; bands are thresholds, not rates).'
    >>> _bands_caption({"config": {"kind_settings": {"r": {"type": "rfm", "bands": {"warm": 40, "hot": 70}}}}}, "r").split("(")[1]
    'on the 0-100 value, the RFM grades on 0-100; bands are thresholds, not rates).'
    """
    bands = _kind_settings(rep, kind).get("bands") or {}
    if "warm" not in bands or "hot" not in bands:
        return _BANDS_CAPTION
    warm, hot = bands["warm"], bands["hot"]
    # An RFM value is its three grades on 0-100 ((R + F + M - 3) / 12), no probability.
    scale = ("the RFM grades on 0-100" if _kind_settings(rep, kind).get("type") == "rfm"
             else "100 x the probability")
    return (f"Share of the scores published each week that fell in each band: cold below {warm:g}, warm from "
            f"{warm:g}, hot from {hot:g} (on the 0-100 value, {scale}; bands are thresholds, not rates).")


def _fairness_section(page: _Page, ri: int, kind: str, fair: dict[str, Any]) -> None:
    groups = fair.get("groups") or {}
    top = fair.get("top_fraction", 0.2)
    page.add(f'<div class="fairness" data-fairness="{_e(kind)}"><h4>Fairness by group</h4>')
    big = {g: r for g, r in groups.items() if r.get("examples", 0) >= MIN_GROUP}
    sel = fair.get("selected_rate_ratio_max_min")
    outcome_rates = [r["outcome_rate"] for r in big.values()]
    out_ratio = (max(outcome_rates) / min(outcome_rates)) if outcome_rates and min(outcome_rates) > 0 else None
    if sel is not None:
        hi = max(big, key=lambda g: big[g]["selected_rate"])
        lo = min(big, key=lambda g: big[g]["selected_rate"])
        page.add(
            f'<p class="sentence">At one threshold for everybody (the top {_pct(top, 0)} of scores, '
            f"score ≥ {_num(fair.get('threshold'))}), {_e(hi)} is selected {sel:.2f}× as often as "
            f"{_e(lo)} ({_pct(big[hi]['selected_rate'])} vs {_pct(big[lo]['selected_rate'])}). "
            f"Outcome rates differ by {_num(out_ratio, 2)}× between the groups with the highest and "
            "lowest rate. A selection ratio far above the outcome ratio means the score favours a "
            "group beyond what outcomes justify.</p>"
        )
    else:
        page.add(f'<p class="note">No max/min ratio: fewer than two groups with {MIN_GROUP}+ examples, '
                 "or a group with nobody selected.</p>")
    rows = []
    for g, r in groups.items():
        q = r.get("score_quantiles") or [None] * 5
        rows.append([
            _e(g) + ("" if r.get("examples", 0) >= MIN_GROUP else " <span class=\"small\">(small)</span>"),
            _num(r.get("examples"), 0), _num(r.get("mean_score")), _num(q[2]),
            _pct(r.get("outcome_rate")), _pct(r.get("selected_rate")), _num(r.get("auc")),
        ])
    page.add(_table(("group", "examples", "mean score", "median score", "outcome rate",
                     f"selected (top {_pct(top, 0)})", "AUC in group"), rows, "fairness"))
    page.chart(ri, f"fairness-{kind}", "Score distribution, outcome and selection per group",
               "Left: score distribution per group against the common threshold. Right: how often "
               "each group's examples had the outcome, and how often they were selected.",
               lambda: _fairness_chart(fair))
    page.add("</div>")


def _horizon_notes(rep: dict[str, Any]) -> list[str]:
    """A churn-like kind (label 1 when no purchase comes) whose horizon is shorter than the
    typical gap between a customer's orders labels most repeat buyers churned before they
    reorder: a wholesaler's accounts reorder every 20-120 days, a gift buyer every year.

    >>> rep = {"order_gap_days": {"gaps": 900, "p25": 40.0, "median": 95.0, "p75": 180.0},
    ...        "config": {"kind_settings": {"churn_risk": {"type": "learned", "horizon": "60d",
    ...        "label_on_outcome": 0, "outcome": ["purchase:completed"]}}}}
    >>> print(_horizon_notes(rep)[0])  # doctest: +NORMALIZE_WHITESPACE
    half of repeat orders come 95 days or more after the customer's order before, longer than
      churn_risk's 60d horizon: a customer who reorders after 60d is labelled churned first; a horizon
      (and active_within) near 180d, in a config (README: your own configuration), fits this business
    """
    gaps = rep.get("order_gap_days") or {}
    if (gaps.get("gaps") or 0) < 30:
        return []
    notes = []
    for name, ks in ((rep.get("config") or {}).get("kind_settings") or {}).items():
        if ks.get("type") != "learned" or ks.get("label_on_outcome", 1) or not ks.get("horizon"):
            continue
        if not any(str(o).startswith("purchase") for o in ks.get("outcome") or ()):
            continue
        try:
            horizon_days = parse_duration_ms(ks["horizon"]) / DAY_MS
        except ValueError:
            continue
        if gaps["median"] > horizon_days:
            notes.append(f"half of repeat orders come {gaps['median']:.0f} days or more after the customer's order "
                         f"before, longer than {name}'s {ks['horizon']} horizon: a customer who reorders after "
                         f"{ks['horizon']} is labelled churned first; a horizon (and active_within) near "
                         f"{gaps['p75']:.0f}d, in a config (README: your own configuration), fits this business")
    return notes


def history_notes(rep: dict[str, Any], currencies: bool = True) -> list[str]:
    """What the history's shape does to the figures: spans without events, same-instant events,
    and (``currencies``) amounts in several currencies summed as given.

    The command line prints these as notes (its currency note among its first lines), and
    the page under its data quality.

    >>> rep = {"events": 46_025, "same_instant_events": 9_100, "gaps": [{"from": "2024-06-28T23:00:00.000+00:00",
    ...        "to": "2024-12-30T09:00:00.000+00:00", "days": 184.4, "events_after": 1}]}
    >>> for line in history_notes(rep): print(line)  # doctest: +NORMALIZE_WHITESPACE
    no events from 2024-06-28 to 2024-12-30 (184 days), and 1 event after it: the customers rescored
      over the gap were all silent, easy negatives that raise AUC and ratios; end the history at 2024-06-28
      (drop the lines after it) for figures of the business as it ran
    19.8% of events fall at the very instant of an earlier event of the same customer (times without
      a time of day?): an outcome at the instant of its score is not counted, as nothing says which came
      first, so same-day responses and repeat orders go uncounted
    """
    notes = []
    events = rep.get("events") or 0
    for gap in rep.get("gaps") or ():
        after = gap["events_after"]
        text = (f"no events from {gap['from'][:10]} to {gap['to'][:10]} ({gap['days']:.0f} days), and "
                f"{after:,} event{'' if after == 1 else 's'} after it")
        if events and after / events < 0.02:
            text += (": the customers rescored over the gap were all silent, easy negatives that raise AUC and "
                     f"ratios; end the history at {gap['from'][:10]} (drop the lines after it) for figures of "
                     "the business as it ran")
        else:
            text += (": the customers rescored over the gap had nothing to do, easy negatives that make the "
                     "figures higher than a continuous history would")
        notes.append(text)
    ties = rep.get("same_instant_events") or 0
    if events and ties / events >= 0.05:
        notes.append(f"{100 * ties / events:.1f}% of events fall at the very instant of an earlier event of "
                     "the same customer (times without a time of day?): an outcome at the instant of its score is "
                     "not counted, as nothing says which came first, so same-day responses and repeat orders go "
                     "uncounted")
    notes.extend(_horizon_notes(rep))
    notes.extend(_backwards_rule_notes(rep))
    held = rep.get("purchase_currencies") or {}
    if currencies and len(held) > 1:
        shown = ", ".join(f"{c} {n:,}" for c, n in list(held.items())[:5])
        notes.append(f"purchases in {len(held)} currencies ({shown}) are summed as given; convert them "
                     "first (import-transactions --convert-to)")
    return notes


def _backwards_rule_notes(rep: dict[str, Any]) -> list[str]:
    """A kind whose rule ranks backwards on this history, beyond noise (its cold-start scores
    follow the rule: calibration keeps its order).

    >>> rule = {"auc": 0.41, "rule_minus_chance_ci95": [-0.12, -0.05]}
    >>> _backwards_rule_notes({"kinds": {"churn_risk": {"baselines": {"rule": rule}}}})[0][:80]
    'churn_risk: its rule of thumb ranks backwards on this history (AUC 0.410, 95%: 0'
    >>> rule["rule_minus_chance_ci95"] = [-0.12, 0.01]  # could be no ranking at all: no note
    >>> _backwards_rule_notes({"kinds": {"churn_risk": {"baselines": {"rule": rule}}}})
    []
    """
    notes = []
    for kind, k in (rep.get("kinds") or {}).items():
        rule = (k.get("baselines") or {}).get("rule") or {}
        ci = rule.get("rule_minus_chance_ci95")
        if not ci or ci[1] is None or ci[1] >= 0:
            continue
        notes.append(f"{kind}: its rule of thumb ranks backwards on this history (AUC {rule['auc']:.3f}, 95%: "
                     f"{0.5 + ci[0]:.3f} to {0.5 + ci[1]:.3f}, where 0.5 is no ranking at all): its points go "
                     "to the customers who have the outcome less often, and so do the cold-start scores until "
                     "the model takes over; check the kind's rule_weights (README: Your own configuration)")
    return notes


def _operations(page: _Page, ri: int, rep: dict[str, Any]) -> None:
    page.add(f'<section class="ops" id="{"ops" if ri == 0 else f"r{ri}-ops"}"><h3>Alerts and triggers</h3>')
    page.add(f"<p>{_num(rep.get('scores_published'), 0)} scores published, "
             f"{_num(rep.get('alerts'), 0)} alerts and {_num(rep.get('triggers'), 0)} nurturing "
             "triggers over the replay.</p>")
    page.chart(ri, "activity", "Scores, alerts and triggers per day",
               "Event time. Alerts are score jumps; triggers are the nurturing actions the policy fired.",
               lambda: _activity_chart(rep.get("per_day") or {}))
    page.add("<h3>Drift events</h3>")
    drifts = rep.get("drifts") or []
    if drifts:
        page.add(_table(("kind", "detected at (event time)", "detector", "model version", "drifts so far"),
                        [[_e(d.get("kind")), _e(str(d.get("ts", ""))[:19].replace("T", " ")),
                          _e(d.get("detector", "")), _num(d.get("model_version"), 0),
                          _num(d.get("drifts_total"), 0)] for d in drifts], "drifts"))
    else:
        page.add('<p class="note" data-note="no-drift">No drift detected by the online models.</p>')
    page.add("<h3>Data quality</h3>")
    rows = [
        ["lines read", _num(rep.get("lines"), 0)],
        ["valid events replayed", _num(rep.get("events"), 0)],
        ["invalid lines (skipped)", _num(rep.get("invalid"), 0)],
        ["duplicates (same event id, counted once)", _num(rep.get("duplicates"), 0)],
        ["late events (beyond allowed lateness)", _num(rep.get("late"), 0)],
        ["dropped by type (--drop-types / --purchases-only)", _num(rep.get("dropped_by_type"), 0)],
    ]
    page.add(_table(("", "count"), rows, "quality"))
    for note in history_notes(rep):
        page.add(f'<p class="note" data-note="history">{_e(note)}</p>')
    reasons = rep.get("invalid_reasons") or {}
    if reasons:
        page.add(_table(("invalid because", "lines"),
                        [[_e(r), _num(n, 0)] for r, n in reasons.items()], "reasons"))
    page.add("</section>")


# What decides a kind's examples and labels: two configurations that differ here score other targets.
_LABEL_SETTINGS = ("horizon", "outcome", "label_on_outcome", "requires_purchase", "active_within", "score_on",
                   "register", "tick", "match_field")


def _label_settings_changed(reports: Sequence[dict[str, Any]], kind: str) -> list[str]:
    """The settings of ``kind`` that decide its labels and differ between two reports' configs.

    >>> a = {"config": {"kind_settings": {"k": {"horizon": "7d", "model": "logistic"}}}}
    >>> b = {"config": {"kind_settings": {"k": {"horizon": "14d", "model": "tree"}}}}
    >>> _label_settings_changed([a, b], "k"), _label_settings_changed([a, a], "k")
    (['horizon 7d against 14d'], [])
    """
    a, b = _kind_settings(reports[0], kind), _kind_settings(reports[1], kind)
    return [f"{key} {a[key]} against {b[key]}" for key in _LABEL_SETTINGS
            if key in a and key in b and a[key] != b[key]]


def _compare(page: _Page, reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    page.add('<section class="compare" id="compare"><h2>Side by side</h2>')
    page.add("<p>Both configurations replayed the same events, judged on their own point-in-time labels.</p>")
    kinds = list(dict.fromkeys(k for rep in reports for k in (rep.get("kinds") or {})))
    if not kinds:
        page.add('<p class="note">Neither configuration has labelled examples.</p>')
    for kind in kinds:
        page.add(f'<div class="compare-kind" data-kind="{_e(kind)}"><h3>{_e(kind)}</h3>')
        ks: list[dict[str, Any] | None] = [(rep.get("kinds") or {}).get(kind) for rep in reports]
        k0, k1 = ks[0], ks[1]
        if k0 and k1:
            sentence = compare_sentence(labels[0], k0.get("auc"), labels[1], k1.get("auc"))
            changed = _label_settings_changed(reports, kind)
            if changed:
                # Other labels (a 14-day against a 7-day outcome): each AUC is over its own examples.
                sentence += (f" The two label this kind differently ({'; '.join(changed)}): each AUC is over its own "
                             "examples and outcome, so they tell how well each ranks its own target, not which is better.")
            page.add(f'<p class="sentence">{_e(sentence)}</p>')
        rows: list[list[str]] = []
        for label, k in zip(labels, ks, strict=True):
            if k:
                rows += _model_rows(k, prefix=f"{label} · ")
            else:
                rows.append([_e(f"{label} · (kind not scored)")] + ["–"] * 6)
        page.add(_table(MODEL_HEAD, rows, "models compare"))
        page.chart(0, f"compare-weekly-auc-{kind}", "Weekly AUC, both configurations",
                   "Online model of each configuration, with the first one's weekly batch LR for reference.",
                   partial(_compare_weekly_chart, reports, labels, kind))
        page.add("</div>")
    page.add("</section>")


def _report_body(page: _Page, ri: int, rep: dict[str, Any], label: str, count: int) -> None:
    if count > 1:
        page.add(f'<section class="config" id="config-{ri}" data-report="{ri}"><h2>Configuration {_e(label)}</h2>')
    period = ""
    if rep.get("first_event"):
        period = (f" from {_e(str(rep['first_event'])[:10])} to {_e(str(rep.get('last_event', ''))[:10])}")
    page.add(f'<p class="meta">{_num(rep.get("events"), 0)} events{period}; '
             f"{_num(rep.get('invalid'), 0)} invalid, {_num(rep.get('duplicates'), 0)} duplicates; "
             f"replayed in {_num(rep.get('seconds'), 1)} s.</p>")
    page.add("<h3>Headline</h3>")
    _overview(page, rep)
    kinds = rep.get("kinds") or {}
    names = list(kinds) + [k for k in (rep.get("bands_per_week") or {}) if k not in kinds]
    for kind in names:
        _kind_section(page, ri, rep, kind, kinds.get(kind))
    _operations(page, ri, rep)
    if count > 1:
        page.add("</section>")


def chart_ids(reports: Sequence[dict[str, Any]]) -> list[str]:
    """The element ids of the charts a page must contain for these reports (what tests check).

    ``r0-lift-purchase_propensity`` is the ``<figure id=...>`` of report 0's lift chart;
    with two reports the side-by-side charts belong to report 0. Weekly charts are
    expected only when some week has labels enough to draw (see ``MIN_WEEK_CLASS``).

    >>> chart_ids([{"kinds": {"churn_risk": {"labels": 10}}, "bands_per_week": {"engagement": [{}]}}])
    ['r0-lift-churn_risk', 'r0-gains-churn_risk', 'r0-calibration-churn_risk', 'r0-bands-churn_risk', 'r0-bands-engagement', 'r0-activity']
    """
    out: list[str] = []
    for ri, rep in enumerate(reports):
        kinds = rep.get("kinds") or {}
        names: list[str] = []
        for kind, k in kinds.items():
            if k.get("labels"):
                weekly = k.get("weekly") or []
                drawn = {"weekly-auc": _has_weekly(weekly, ("auc", "rule_auc", "batch_auc"), True),
                         "weekly-log-loss": _has_weekly(weekly, ("log_loss", "batch_log_loss"), False)}
                names += [f"{c}-{kind}" for c in KIND_CHARTS if drawn.get(c, True)]
                if k.get("fairness"):
                    names.append(f"fairness-{kind}")
        names += [f"bands-{k}" for k in (rep.get("bands_per_week") or {}) if k not in kinds]
        names += list(GLOBAL_CHARTS)
        out += [f"r{ri}-{n}" for n in names]
    if len(reports) > 1:
        kinds = dict.fromkeys(k for rep in reports for k in (rep.get("kinds") or {}))
        out += [f"r0-compare-weekly-auc-{k}" for k in kinds if any(
            _has_weekly((rep.get("kinds") or {}).get(k, {}).get("weekly") or [], ("auc",), True)
            for rep in reports)]
    return out


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1a1a1a;background:#fafafa}
main{max-width:1320px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:22px;margin:36px 0 8px;border-bottom:2px solid #1f5fa8;padding-bottom:4px}
h3{font-size:19px;margin:28px 0 8px}h4{font-size:14px;margin:0 0 6px;color:#333}
.meta{color:#555;margin:4px 0 12px}.small{font-size:12px;color:#666}
nav{font-size:13px;margin:8px 0 16px}nav a{margin-right:14px;color:#1f5fa8}
table{border-collapse:collapse;margin:8px 0 12px;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f0f3f8;font-weight:600}td:first-child,th:first-child{text-align:left}
table.headline td:last-child,table.headline th:last-child{text-align:left;max-width:520px;font-size:12px}
.sentence{font-size:15px;background:#fff;border-left:4px solid #1f5fa8;padding:8px 12px;margin:8px 0}
.note{color:#7a5a00;background:#fff8e1;border-left:4px solid #f2c94c;padding:6px 10px}
.good{color:#1a7f37;font-weight:600}.weak{color:#b2182b;font-weight:600}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:14px}
figure.chart,.chart-missing{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px;margin:10px 0}
figure.chart img{width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;margin-top:4px}
section.kind{border-top:1px solid #ddd;margin-top:20px}
"""


def write_html(reports: list[dict[str, Any]], path: str | Path) -> Path:
    """Write one self-contained HTML page for one report, or two side by side; returns its path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    reports = list(reports)
    count = len(reports)
    labels = [_config_name(rep, i, count) for i, rep in enumerate(reports)]
    page = _Page()
    first = reports[0] if reports else {}
    title = "leadpulse backtest" + (f" — {first['input']}" if first.get("input") else "")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = []
    if count > 1:
        nav.append('<a href="#compare">side by side</a>')
        nav += [f'<a href="#config-{i}">{_e(lab)}</a>' for i, lab in enumerate(labels)]
    else:
        kinds = list(first.get("kinds") or {}) + [
            k for k in (first.get("bands_per_week") or {}) if k not in (first.get("kinds") or {})]
        nav += [f'<a href="#{_e(k)}">{_e(k)}</a>' for k in kinds]
        nav.append('<a href="#ops">alerts, drift, data quality</a>')
    page.add(f"<h1>{_e(title)}</h1>")
    page.add(f'<p class="meta">{" vs ".join(_e(lab) for lab in labels) or "no report"} · generated {generated}. '
             "Prequential: every example was scored before its outcome was known; baselines are scored on "
             "the same examples and the same point-in-time labels. The weekly batch LR is a scikit-learn "
             "logistic regression refitted every week on the labels matured so far.</p>")
    page.add(f"<nav>{''.join(nav)}</nav>")
    if count > 1:
        _compare(page, reports, labels)
    for ri, rep in enumerate(reports):
        _report_body(page, ri, rep, labels[ri], count)
    page.render()
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f'<body><main data-charts="{len(page.charts)}">' + "\n".join(page.parts) + "</main></body></html>\n"
    )
    target.write_text(doc, encoding="utf-8")
    return target
