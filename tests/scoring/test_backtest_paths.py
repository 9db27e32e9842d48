"""Differential tests: one dirty history, the backtest's execution paths, the same answers.

The paths, and what their docs say must agree:

- ``plain``: :func:`run_backtest` on ``ScoringCore.in_memory()``;
- ``redis``: the same core on :class:`RedisFeatureStore` (built as ``scripts/bench_backtest.py``
  builds it) on a real redis-server. Its docs: "Semantics are those of
  InMemoryFeatureStore, exactly", and "the cache can be cold, never wrong". So the whole
  report (timings aside), every labelled example of ``scores_out`` and every customer's
  scores in ``customers_out`` must be byte for byte the plain replay's;
- ``sharded:N``: ``ShardedCore(ScoringCore.in_memory(), N)``. Its docs: "gives the same
  report as any N (tested)", so N = 1, 2, 3 must agree byte for byte (report, scores,
  customers). Against ``plain`` it "differs slightly: it learns labels as they mature ...
  and observes RFM values as it grades them", so probabilities, sources and what got
  published may differ; "which customers were scored when, and what was labelled how,
  may not: the batches, their watermarks and so every moment scored are the same"
  (tests/scoring/test_parallel.py). Counts and the labelled examples (without their
  model probability) must agree.

Histories are random and dirty (seeded, so every run replays the same ones): 1-30
customers, purchases (completed and refunded, equal timestamps), web and campaign
events over up to a year, malformed lines, redeliveries (exact and with another payload),
events out of order within and beyond the lateness, ids differing only by case or
surrounding spaces, decomposed and astral Unicode ids, ids that change the Redis key tag,
amounts at the 1e15 bound, several timestamp formats, more than 64 event ids of one
customer within the lateness (the stores' id forgetting). Plus ``leadpulse simulate
--dirty`` files and a hypothesis search of small histories.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.engine import FeatureEngine
from features.events import ms_to_iso
from features.redis_store import RedisFeatureStore
from scoring.backtest import BacktestConfig, run_backtest
from scoring.core import ScoringCore
from scoring.parallel import ShardedCore, owner
from scoring.state import InMemoryStateStore
from streams.cli import main

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR
WEB = ("page_view", "product_view", "add_to_cart", "remove_from_cart", "search", "signup", "login")
CAMPAIGN = ("sent", "delivered", "opened", "clicked", "converted", "unsubscribed", "bounced")
CHANNELS = ("email", "sms", "push", "web", "ads")
# Ids that read alike or break a Redis key tag: NFC vs NFD "Zoë" (one customer), CJK, an astral
# emoji, braces and a leading "~" (hashed tags), a colon, case, and surrounding spaces (trimmed).
ODD_IDS = ("Zo\u00eb", "Zoe\u0308", "\u5ba2\u6237", "\U0001f600", "a:1", "a{b}", "~x", "C1", "c1 ", " c1")
BAD_LINES = (
    "{not json", "[1, 2]", '{"event_id": "x"}', '{"event_id":"z","customer_id":"c0","ts":0,"type":"web","action":"login"}',
    '{"event_id":"big","customer_id":"c0","ts":1704067200000,"type":"purchase","order_id":"o","amount":1e16,'
    '"currency":"EUR"}',
    '{"event_id":"neg","customer_id":"c0","ts":1704067200000,"type":"purchase","order_id":"o","amount":-1,'
    '"currency":"EUR"}',
    '{"event_id":"sur","customer_id":"c\\ud800","ts":1704067200000,"type":"web","action":"login"}',
)
# What run_backtest's report may change between two runs of one replay.
TIMING = ("seconds", "events_per_second", "labels_per_second", "peak_memory_bytes")
# Report figures that do not depend on what the models learned (see the module docstring).
COUNTS = (
    "lines", "events", "invalid", "invalid_reasons", "duplicates", "late", "out_of_order", "dropped_by_type",
    "purchase_currencies", "buyers", "repeat_buyers", "order_gap_days", "first_event", "last_event", "gaps",
    "same_instant_events", "scored", "idle_rescores",
)


# -- histories --------------------------------------------------------------------------


def _event(r: random.Random, i: int, customer: str, ts: int) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": f"e{i}", "customer_id": customer, "ts": ts}
    roll = r.random()
    if roll < 0.3:
        amount = r.choice([r.uniform(1, 300), round(r.uniform(1, 100), 2), 0, 1e15, 1e15 - 0.125])
        ev.update(type="purchase", order_id=f"o{r.randrange(40)}", amount=amount,
                  currency=r.choice(["EUR", "usd"]), status="refunded" if r.random() < 0.15 else "completed")
    elif roll < 0.7:
        ev.update(type="web", action=r.choice(WEB), session_id=f"s{r.randrange(20)}",
                  category=r.choice(["a", "b", "\u00e9", "c", "d"]), product_id=f"p{r.randrange(9)}")
    else:
        ev.update(type="campaign", campaign_id=f"k{r.randrange(4)}", channel=r.choice(CHANNELS),
                  action=r.choice(CAMPAIGN))
    return ev


def _as_line(r: random.Random, ev: dict[str, Any]) -> str:
    ev = dict(ev)
    fmt = r.random()
    if fmt < 0.25:
        ev["ts"] = ev["ts"] / 1000  # epoch seconds, with milliseconds as a fraction
    elif fmt < 0.45:
        ev["ts"] = ms_to_iso(ev["ts"])
    if r.random() < 0.05:
        ev["event_id"] = f" {ev['event_id']} "  # trimmed: the same id
    return json.dumps(ev, ensure_ascii=r.random() < 0.5)


def dirty_history(seed: int) -> list[str]:
    """A random dirty history: see the module docstring."""
    r = random.Random(seed)
    customers = [f"c{i}" for i in range(r.randint(1, 30))]
    if r.random() < 0.6:
        customers += r.sample(ODD_IDS, r.randint(1, 5))
    span = r.randint(1, 365) * DAY
    events: list[dict[str, Any]] = []
    for i in range(r.randint(1, 300)):
        ts = events[-1]["ts"] if events and r.random() < 0.1 else T0 + r.randrange(span)  # same millisecond
        events.append(_event(r, i, r.choice(customers), ts))
    events.sort(key=lambda e: e["ts"])
    lines: list[str] = []
    for ev in events:
        shifted = dict(ev)
        roll = r.random()
        if roll < 0.05:
            shifted["ts"] -= r.randrange(1, HOUR)  # out of order, within the lateness
        elif roll < 0.08:
            shifted["ts"] -= r.randrange(HOUR, 20 * DAY)  # beyond it: late for its customer
        lines.append(_as_line(r, shifted))
        roll = r.random()
        if roll < 0.05:
            lines.append(lines[-1])  # redelivered as is
        elif roll < 0.08:
            other = {**ev, "ts": ev["ts"] + r.randrange(0, 2 * HOUR)}  # the same id, another payload
            if other["type"] == "purchase":
                other["amount"] = 7.0
            lines.append(json.dumps(other))
        elif roll < 0.10:
            lines.append(r.choice(BAD_LINES))
    if len(lines) > 5 and r.random() < 0.5:  # a few lines moved far
        for _ in range(r.randint(1, 3)):
            lines.insert(r.randrange(len(lines)), lines.pop(r.randrange(len(lines))))
    return lines


def burst_history(seed: int) -> list[str]:
    """Customers with more than 64 event ids within the lateness (the stores then forget the
    old ones), events at the same millisecond, redeliveries within and far beyond the lateness."""
    r = random.Random(seed)
    customers = ["b", "b2", " b ", "B"]
    t = T0 + r.randrange(DAY)
    events: list[dict[str, Any]] = []
    lines: list[str] = []
    for i in range(r.randint(60, 140)):
        t += r.choice([0, 0, 1, 1000, 60_000, r.randrange(HOUR)])
        ev = _event(r, i, r.choice(customers), t)
        if ev["type"] == "purchase":
            ev["order_id"] = f"o{i // 3}"  # a purchase and its refund, often at one instant
        events.append(ev)
        lines.append(json.dumps(ev))
        if r.random() < 0.15:
            old = r.choice(events)
            lines.append(json.dumps(old if r.random() < 0.5 else {**old, "ts": old["ts"] + 5}))
    later = t + r.randrange(2 * HOUR, 40 * DAY)
    for j in range(r.randint(1, 30)):
        if r.random() < 0.5:
            lines.append(json.dumps(r.choice(events)))  # long after: a duplicate, or late once forgotten
        else:
            later += r.randrange(DAY)
            lines.append(json.dumps({"event_id": f"x{j}", "customer_id": r.choice(customers), "ts": later,
                                     "type": "web", "action": "login"}))
    return lines


def history(seed: int) -> list[str]:
    return burst_history(seed) if seed % 4 == 3 else dirty_history(seed)


def config_for(seed: int, tmp: Path, name: str) -> BacktestConfig:
    """Batches of several sizes and spans (every path gets the same ones)."""
    r = random.Random(seed * 7919)
    return BacktestConfig(
        batch_baseline=False, scores_out=tmp / f"{name}.scores.jsonl", customers_out=tmp / f"{name}.customers.csv",
        batch_size=r.choice([1, 3, 17, 500, 500]), max_batch_span_ms=r.choice([1, 60_000, HOUR, HOUR, DAY]),
    )


# -- running the paths -------------------------------------------------------------------


def redis_core(client: redis.Redis, **store: Any) -> ScoringCore:
    """The core scripts/bench_backtest.py replays with on Redis (an emptied server)."""
    client.flushall()
    return ScoringCore(FeatureEngine(), RedisFeatureStore(client, **store), InMemoryStateStore())


def replay(lines: list[str], config: BacktestConfig, core: ScoringCore | ShardedCore) -> dict[str, Any]:
    """The report (timings and the paths of the output files dropped), its scores and customers."""
    assert config.scores_out is not None and config.customers_out is not None
    config.customers_out.unlink(missing_ok=True)  # not written for a history without a valid event
    report = run_backtest(lines, config, core)
    for key in TIMING:
        report.pop(key)
    report["config"].pop("workers")
    report.get("customers_out", {}).pop("path", None)
    scores = [json.loads(line) for line in config.scores_out.read_text(encoding="utf-8").splitlines()]
    customers = config.customers_out.read_text(encoding="utf-8") if config.customers_out.exists() else ""
    return {"report": report, "scores": scores, "customers": customers}


def plain(lines: list[str], seed: int, tmp: Path) -> dict[str, Any]:
    return replay(lines, config_for(seed, tmp, "plain"), ScoringCore.in_memory())


def sharded(lines: list[str], seed: int, tmp: Path, workers: int) -> dict[str, Any]:
    return replay(lines, config_for(seed, tmp, f"w{workers}"), ShardedCore(ScoringCore.in_memory(), workers))


def report_text(run: dict[str, Any]) -> str:
    """report.json's text, key order included, as write_report keeps it."""
    return json.dumps(run["report"])


def assert_workers_agree(runs: dict[int, dict[str, Any]]) -> None:
    for n in (2, 3):
        # The report, the labelled examples in their order and the customers file.
        assert report_text(runs[n]) == report_text(runs[1]), n
        assert runs[n]["scores"] == runs[1]["scores"], n
        assert runs[n]["customers"] == runs[1]["customers"], n


def labelled(run: dict[str, Any]) -> Counter[tuple[Any, ...]]:
    """Every labelled example without what the model made of it (probability, source)."""
    keep = ("example_id", "event_id", "customer_id", "ts", "kind", "rule_probability", "moment", "label")
    return Counter(tuple(rec[k] for k in keep) for rec in run["scores"])


def counts(run: dict[str, Any]) -> dict[str, Any]:
    report = run["report"]
    out = {key: report[key] for key in COUNTS}
    out["labels"] = {k: (v["labels"], v["positives"]) for k, v in report["kinds"].items()}
    out["customers_out"] = report.get("customers_out")
    return out


def assert_plain_matches_sharded(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert counts(one) == counts(other)
    assert labelled(one) == labelled(other)


# Seeds: histories (burst_history for seed % 4 == 3) and their batch configurations.
SEEDS = tuple(range(24))
SHARDED_SEEDS = (0, 1, 2, 3, 5, 7, 11, 13, 15, 18, 19, 23)


class Dirt:
    """What the replays met, summed over the seeds: the histories must be dirty."""

    KEYS = ("invalid", "duplicates", "late", "out_of_order", "same_instant_events", "idle_rescores", "scored")

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()

    def add(self, report: dict[str, Any]) -> None:
        self.total.update({key: report[key] for key in self.KEYS})

    def check(self) -> None:
        missing = [key for key in self.KEYS if not self.total[key]]
        assert not missing, f"the histories never had {missing}"


# -- (a) == (b): the in-process store and Redis ------------------------------------------


def test_redis_store_replays_every_history_exactly_as_the_in_process_store(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    dirt = Dirt()
    for seed in SEEDS:
        lines = history(seed)
        want = plain(lines, seed, tmp_path)
        dirt.add(want["report"])
        # The default store (every customer's state cached) and a cache too small to hold them:
        # "the cache can be cold, never wrong".
        for cache_size in (5_000, seed % 3):
            got = replay(lines, config_for(seed, tmp_path, f"redis{cache_size}"),
                         redis_core(redis_client, cache_size=cache_size))
            assert got["scores"] == want["scores"], (seed, cache_size)
            assert report_text(got) == report_text(want), (seed, cache_size)
            assert got["customers"] == want["customers"], (seed, cache_size)
    dirt.check()


EVENT = st.fixed_dictionaries({
    "customer": st.sampled_from(["c0", "c1", " c1", "C1", "Zo\u00eb", "Zoe\u0308", "a{b}", "\U0001f600"]),
    "id": st.integers(0, 40),  # few ids: redeliveries, and the same id for another payload
    "dt": st.one_of(st.integers(0, 3), st.integers(0, 2 * HOUR), st.integers(0, 30 * DAY)),
    "back": st.one_of(st.just(0), st.integers(0, 3 * HOUR), st.integers(0, 40 * DAY)),
    "type": st.sampled_from(["purchase", "refund", "web", "campaign"]),
    "amount": st.one_of(st.floats(0, 1e15, allow_nan=False), st.sampled_from([0.0, 1e15, 0.01])),
    "pick": st.integers(0, 6),
})


def _hypothesis_lines(specs: list[dict[str, Any]]) -> list[str]:
    lines, t = [], T0
    for s in specs:
        t += s["dt"]
        ev: dict[str, Any] = {"event_id": f"e{s['id']}", "customer_id": s["customer"], "ts": t - s["back"]}
        if s["type"] in ("purchase", "refund"):
            ev.update(type="purchase", order_id=f"o{s['pick']}", amount=s["amount"], currency="EUR",
                      status="refunded" if s["type"] == "refund" else "completed")
        elif s["type"] == "web":
            ev.update(type="web", action=WEB[s["pick"]], session_id=f"s{s['pick']}")
        else:
            ev.update(type="campaign", campaign_id=f"k{s['pick'] % 2}", channel="email", action=CAMPAIGN[s["pick"]])
        lines.append(json.dumps(ev))
    return lines


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=st.lists(EVENT, min_size=1, max_size=60))
def test_redis_and_in_process_stores_agree_on_small_searched_histories(
    redis_client: redis.Redis, tmp_path: Path, specs: list[dict[str, Any]]
) -> None:
    lines = _hypothesis_lines(specs)
    want = plain(lines, 0, tmp_path)
    got = replay(lines, config_for(0, tmp_path, "redis"), redis_core(redis_client, cache_size=1))
    assert got["scores"] == want["scores"]
    assert report_text(got) == report_text(want)
    assert got["customers"] == want["customers"]


# -- (c): one, two and three workers; and the plain replay's counts ------------------------


@pytest.mark.parametrize("seed", SHARDED_SEEDS)
def test_one_two_and_three_workers_give_one_report_and_the_plain_replays_counts(seed: int, tmp_path: Path) -> None:
    lines = history(seed)
    runs = {n: sharded(lines, seed, tmp_path, n) for n in (1, 2, 3)}
    assert_workers_agree(runs)
    assert_plain_matches_sharded(plain(lines, seed, tmp_path), runs[1])


@pytest.mark.parametrize("seed", [3, 11, 17])
def test_simulated_dirty_histories_agree_on_every_path(
    seed: int, tmp_path: Path, redis_client: redis.Redis
) -> None:
    path = tmp_path / "sim.jsonl"
    assert main(["simulate", "--customers", "40", "--days", "120", "--seed", str(seed), "--dirty",
                 "--out", str(path)]) == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    base = plain(lines, seed, tmp_path)
    report = base["report"]
    assert report["invalid"] > 0 and report["duplicates"] > 0 and report["idle_rescores"] > 0
    assert all(report["kinds"][k]["labels"] > 50 for k in ("purchase_propensity", "campaign_response"))
    on_redis = replay(lines, config_for(seed, tmp_path, "redis"), redis_core(redis_client))
    assert on_redis["scores"] == base["scores"]
    assert report_text(on_redis) == report_text(base)
    assert on_redis["customers"] == base["customers"]
    runs = {n: sharded(lines, seed, tmp_path, n) for n in (1, 2, 3)}
    assert_workers_agree(runs)
    assert_plain_matches_sharded(base, runs[1])


# -- discrepancies, shrunk ---------------------------------------------------------------


def _send(event_id: str, customer: str, ts: int, campaign: str, action: str = "sent") -> str:
    return json.dumps({"event_id": event_id, "customer_id": customer, "ts": ts, "type": "campaign",
                       "campaign_id": campaign, "channel": "email", "action": action})


def test_customers_whose_example_ids_collided_are_labelled_in_one_order_for_any_workers(tmp_path: Path) -> None:
    """Customer "a" gets campaign "<T>:m" at T; customer "a:<T>" gets campaign "m" at T: both
    examples were "campaign_response:a:<T>:<T>:m" (the parts unescaped), both mature at T + 3 days,
    and ShardedCore._gather's sort by (end, example id) kept worker order for the tie. The two
    customers sit on different workers when there are two."""
    lines = [_send("e1", "a", T0, f"{T0}:m"), _send("e2", f"a:{T0}", T0, "m"),
             _send("e3", "a", T0 + HOUR, f"{T0}:m", "clicked"),
             json.dumps({"event_id": "e4", "customer_id": "z", "ts": T0 + 4 * DAY, "type": "web", "action": "login"})]
    assert owner("a", 2) != owner(f"a:{T0}", 2)
    one, two = (sharded(lines, 0, tmp_path, n) for n in (1, 2))
    assert sorted(r["example_id"] for r in one["scores"]) == [
        f"campaign_response:a%3A{T0}:{T0}:m", f"campaign_response:a:{T0}:{T0}%3Am"]
    assert [(r["customer_id"], r["label"]) for r in two["scores"]] == [
        (r["customer_id"], r["label"]) for r in one["scores"]]
    assert sorted((r["customer_id"], r["label"]) for r in one["scores"]) == [("a", 1), (f"a:{T0}", 0)]


def test_a_campaign_called_idle_is_scored_at_an_event(tmp_path: Path) -> None:
    """Its examples' ids end as an idle rescore's do; the moment comes from the event."""
    lines = [_send("e1", "a", T0, "idle"),
             json.dumps({"event_id": "e2", "customer_id": "z", "ts": T0 + 4 * DAY, "type": "web", "action": "login"})]
    run = sharded(lines, 0, tmp_path, 1)
    assert [(r["example_id"], r["moment"]) for r in run["scores"]] == [(f"campaign_response:a:{T0}:idle", "event")]
    assert "idle" not in run["report"]["kinds"]["campaign_response"].get("by_moment", {})


def test_report_json_lists_the_kinds_of_bands_per_week_in_one_order_for_any_workers(tmp_path: Path) -> None:
    """They came in the order their first score reached the replay's process (worker order when
    sharded); now in the configuration's."""
    # "a" (worker 1 of 2) is sent a campaign first; "d" (worker 0) logs in a millisecond later.
    assert (owner("a", 2), owner("d", 2)) == (1, 0)
    lines = [_send("e1", "a", T0, "k"),
             json.dumps({"event_id": "e2", "customer_id": "d", "ts": T0 + 1, "type": "web", "action": "login"})]
    one, two = (sharded(lines, 0, tmp_path, n) for n in (1, 2))
    assert list(one["report"]["bands_per_week"]) == ["purchase_propensity", "campaign_response", "engagement"]
    assert report_text(two) == report_text(one)
