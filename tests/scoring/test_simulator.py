"""Tests for the event simulator: contract, determinism, realism, dirt, regimes."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter, defaultdict
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from scoring.simulator import (
    CAMPAIGN_ACTIONS,
    CHANNELS,
    MAX_DISORDER_SECONDS,
    REGIONS,
    REQUIRED_FIELDS,
    SEGMENTS,
    WEB_ACTIONS,
    SimulationConfig,
    ground_truth,
    simulate,
    write_jsonl,
)

SMALL = SimulationConfig(customers=300, days=120, seed=7)
YEAR = SimulationConfig(customers=1000, days=365, seed=11)

# Every field the simulator may emit; anything else (a name, an e-mail) is a bug.
ALLOWED_FIELDS = {
    "event_id",
    "customer_id",
    "ts",
    "type",
    "action",
    "session_id",
    "url",
    "product_id",
    "category",
    "order_id",
    "amount",
    "currency",
    "items",
    "status",
    "campaign_id",
    "channel",
    "segment",
    "region",
}
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$")


@cache
def events_of(config: SimulationConfig) -> tuple[dict[str, Any], ...]:
    return tuple(simulate(config))


def ts_seconds(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def day_of(event: dict[str, Any], config: SimulationConfig) -> float:
    return (ts_seconds(event["ts"]) - config.start.timestamp()) / 86400.0


def problem(obj: Any) -> str | None:
    """Why a decoded line breaks the event contract (None when it is a valid event)."""
    if not isinstance(obj, dict):
        return "not an object"
    kind = obj.get("type")
    if kind not in REQUIRED_FIELDS:
        return "unknown type"
    for name in REQUIRED_FIELDS[kind]:
        if name not in obj:
            return f"missing {name}"
    for name in ("event_id", "customer_id", "ts"):
        if not isinstance(obj[name], str) or not obj[name]:
            return f"bad {name}"
    try:
        parsed = datetime.fromisoformat(obj["ts"])
    except ValueError:
        return "bad ts"
    if parsed.tzinfo is None or not 1990 <= parsed.year < 2100:
        return "absurd ts"
    if kind == "web" and obj["action"] not in WEB_ACTIONS:
        return "bad action"
    if kind == "campaign":
        if obj["channel"] not in CHANNELS or obj["action"] not in CAMPAIGN_ACTIONS:
            return "bad campaign fields"
        if not isinstance(obj["campaign_id"], str):
            return "bad campaign_id"
    if kind == "purchase":
        amount = obj["amount"]
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            return "amount type"
        if amount < 0:
            return "negative amount"
        if not isinstance(obj["order_id"], str) or not isinstance(obj["currency"], str):
            return "bad order fields"
        if obj.get("status", "completed") not in ("completed", "refunded"):
            return "bad status"
    return None


def line_problem(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return "invalid JSON"
    return problem(obj)


# --------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    config = SimulationConfig(customers=150, days=60, seed=3, dirty=0.05, regime_change=True)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    s1 = write_jsonl(config, first)
    s2 = write_jsonl(config, second)
    assert first.read_bytes() == second.read_bytes()
    assert s1 == s2
    other = tmp_path / "c.jsonl"
    write_jsonl(SimulationConfig(customers=150, days=60, seed=4, dirty=0.05), other)
    assert other.read_bytes() != first.read_bytes()


def test_ground_truth_is_deterministic_and_covers_every_customer() -> None:
    truth = ground_truth(SMALL)
    assert truth == ground_truth(SMALL)
    assert len(truth) == SMALL.customers
    assert truth != ground_truth(SimulationConfig(customers=300, days=120, seed=8))
    row = truth["c000000"]
    for name in (
        "segment",
        "region",
        "arrival",
        "propensity",
        "engagement",
        "responsiveness",
        "churn_hazard",
        "one_shot",
        "wake_rate",
        "basket_scale",
        "optin",
        "favorite_categories",
        "dormant_spells",
        "dormant_at_end",
        "unsubscribed",
    ):
        assert name in row
    assert all(0.0 < r["propensity"] < 1.0 for r in truth.values())
    assert all(0.0 < r["churn_hazard"] < 1.0 for r in truth.values())
    json.dumps(truth)  # plain JSON types only


# --------------------------------------------------------------------------- contract


def test_every_event_meets_the_contract() -> None:
    events = events_of(SMALL)
    assert len(events) > 1000
    seen_ids: set[str] = set()
    attrs: dict[str, tuple[str, str]] = {}
    for event in events:
        assert problem(event) is None, event
        assert set(event) <= ALLOWED_FIELDS, set(event) - ALLOWED_FIELDS
        assert TS_RE.match(event["ts"]), event["ts"]
        assert re.fullmatch(r"c\d{6}", event["customer_id"])
        assert event["event_id"] not in seen_ids
        seen_ids.add(event["event_id"])
        assert event["segment"] in SEGMENTS and event["region"] in REGIONS
        assert attrs.setdefault(event["customer_id"], (event["segment"], event["region"])) == (
            event["segment"],
            event["region"],
        )
        if event["type"] == "web":
            assert isinstance(event["session_id"], str)
            if event["action"] in ("product_view", "add_to_cart", "remove_from_cart"):
                assert event["product_id"] and event["category"]
        if event["type"] == "purchase":
            assert isinstance(event["amount"], float) and event["currency"] == "EUR"
            for item in event.get("items", []):
                assert set(item) == {"product_id", "category", "quantity", "price"}
                assert item["quantity"] >= 1 and item["price"] > 0
            if "items" in event and event["status"] == "completed":
                total = sum(i["quantity"] * i["price"] for i in event["items"])
                assert total == pytest.approx(event["amount"], abs=0.02)
    kinds = Counter(e["type"] for e in events)
    assert set(kinds) == {"web", "purchase", "campaign"}
    actions = Counter(e["action"] for e in events if e["type"] == "web")
    assert set(actions) == set(WEB_ACTIONS)
    camp = Counter(e["action"] for e in events if e["type"] == "campaign")
    assert {"sent", "delivered", "opened", "clicked", "converted", "bounced"} <= set(camp)


def test_events_are_sorted_within_the_disorder_bound() -> None:
    events = events_of(SMALL)
    latest = float("-inf")
    late = 0
    for event in events:
        t = ts_seconds(event["ts"])
        assert latest - t <= MAX_DISORDER_SECONDS
        late += t < latest
        latest = max(latest, t)
    assert 0 < late < 0.1 * len(events)  # a little disorder, as from a real collector


def test_no_event_before_arrival_and_inside_the_period() -> None:
    truth = ground_truth(SMALL)
    start = SMALL.start.timestamp()
    end = start + SMALL.days * 86400
    for event in events_of(SMALL):
        t = ts_seconds(event["ts"])
        assert start <= t < end
        assert t >= ts_seconds(truth[event["customer_id"]]["arrival"])


# --------------------------------------------------------------------------- realism


def test_cohorts_arrive_over_the_period() -> None:
    first: dict[str, float] = {}
    for event in events_of(YEAR):
        first.setdefault(event["customer_id"], day_of(event, YEAR))
    days = sorted(first.values())
    assert len(days) > 0.95 * YEAR.customers
    q10, q50, q90 = (days[int(q * (len(days) - 1))] for q in (0.1, 0.5, 0.9))
    assert q10 < 60 and 90 < q50 < 300 and q90 > 280
    in_first_two_weeks = sum(d < 14 for d in days) / len(days)
    assert in_first_two_weeks < 0.3
    # Waves: some weeks take in far more newcomers than the average week.
    per_week = Counter(int(d // 7) for d in days)
    assert max(per_week.values()) > 3 * (len(days) / 53)


def test_most_buyers_buy_once_and_order_counts_are_heavy_tailed() -> None:
    orders: dict[str, set[str]] = defaultdict(set)
    amounts = []
    for event in events_of(YEAR):
        if event["type"] == "purchase" and event["status"] == "completed":
            orders[event["customer_id"]].add(event["order_id"])
            amounts.append(event["amount"])
    counts = [len(o) for o in orders.values()]
    buyers = len(counts)
    one_time = sum(c == 1 for c in counts) / buyers
    assert 0.2 * YEAR.customers < buyers < 0.7 * YEAR.customers  # many never buy
    assert 0.5 <= one_time <= 0.8
    assert max(counts) >= 8
    amounts.sort()
    median = amounts[len(amounts) // 2]
    p99 = amounts[int(0.99 * (len(amounts) - 1))]
    assert p99 > 10 * median  # lognormal-ish baskets with a business tail


def test_latent_propensity_drives_purchases_and_clicks() -> None:
    truth = ground_truth(YEAR)
    buyers = {
        e["customer_id"]
        for e in events_of(YEAR)
        if e["type"] == "purchase" and e["status"] == "completed"
    }
    clickers = {
        e["customer_id"]
        for e in events_of(YEAR)
        if e["type"] == "campaign" and e["action"] == "clicked"
    }

    def mean_propensity(ids: set[str]) -> float:
        return sum(truth[c]["propensity"] for c in ids) / len(ids)

    everyone = set(truth)
    assert mean_propensity(buyers) > 1.2 * mean_propensity(everyone - buyers)
    assert mean_propensity(clickers) > mean_propensity(everyone - clickers)


def test_carts_precede_purchases_with_noisy_signal() -> None:
    """Customers with a cart in the last two days buy far more often, but far from always."""
    carts: dict[str, float] = {}
    after_cart = with_cart_recent = 0
    for event in events_of(YEAR):
        c = event["customer_id"]
        d = day_of(event, YEAR)
        if event["type"] == "web" and event["action"] == "add_to_cart":
            if c not in carts or d - carts[c] > 2:
                with_cart_recent += 1
            carts[c] = d
        elif (
            event["type"] == "purchase"
            and event["status"] == "completed"
            and c in carts
            and d - carts[c] <= 2
        ):
            after_cart += 1
            del carts[c]
    conversion = after_cart / with_cart_recent
    assert 0.2 < conversion < 0.7


def test_dormant_customers_are_silent_and_some_wake_up() -> None:
    truth = ground_truth(YEAR)
    spells: dict[str, list[tuple[float, float]]] = {}
    woke = 0
    for cust, row in truth.items():
        for begin, end in row["dormant_spells"]:
            woke += end is not None
            stop = ts_seconds(end) if end is not None else float("inf")
            # Visits that began before midnight may spill over by a few minutes.
            spells.setdefault(cust, []).append((ts_seconds(begin) + 3600, stop))
    assert woke > 0
    assert sum(r["dormant_at_end"] for r in truth.values()) > 0.3 * YEAR.customers
    for event in events_of(YEAR):
        if event["type"] == "campaign" or event.get("status") == "refunded":
            continue
        t = ts_seconds(event["ts"])
        for begin, stop in spells.get(event["customer_id"], []):
            assert not begin <= t < stop, (event, begin, stop)


def test_unsubscribed_customers_get_no_further_sends() -> None:
    unsubscribed: dict[str, float] = {}
    late_sends = 0
    for event in events_of(YEAR):
        if event["type"] != "campaign":
            continue
        t = ts_seconds(event["ts"])
        c = event["customer_id"]
        if event["action"] == "unsubscribed":
            assert c not in unsubscribed
            unsubscribed[c] = t
        elif event["action"] == "sent" and c in unsubscribed and t > unsubscribed[c]:
            late_sends += 1
    assert unsubscribed
    assert late_sends == 0


def test_purchases_only_mode_is_the_same_world_without_other_channels() -> None:
    quiet = SimulationConfig(customers=300, days=120, seed=7, web=False, campaigns=False)
    events = list(simulate(quiet))
    assert events and {e["type"] for e in events} == {"purchase"}
    assert events == [e for e in events_of(SMALL) if e["type"] == "purchase"]
    web_only = list(simulate(SimulationConfig(customers=300, days=120, seed=7, campaigns=False)))
    assert {e["type"] for e in web_only} == {"web", "purchase"}


def test_regime_change_alters_behaviour_after_the_midpoint() -> None:
    changed = dataclasses.replace(YEAR, regime_change=True)
    mid = YEAR.days // 2

    def stats(config: SimulationConfig) -> dict[str, dict[str, float]]:
        out: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
        last_cart: dict[str, float] = {}
        for event in events_of(config):
            d = day_of(event, config)
            half = out["before" if d < mid else "after"]
            c = event["customer_id"]
            if event["type"] == "web" and event["action"] == "add_to_cart":
                last_cart[c] = d
                half["carts"] += 1
            elif event["type"] == "purchase" and event["status"] == "completed":
                half["purchases"] += 1
                half["after_cart"] += c in last_cart and d - last_cart[c] <= 2
            elif event["type"] == "campaign" and event["action"] == "converted":
                half["conv_sms_push" if event["channel"] in ("sms", "push") else "conv_other"] += 1
        return {
            k: {
                "cart_share": v["after_cart"] / v["purchases"],
                "sms_push_share": v["conv_sms_push"] / (v["conv_sms_push"] + v["conv_other"]),
            }
            for k, v in out.items()
        }

    base, regime = stats(YEAR), stats(changed)
    # Same world until the midpoint ...
    first_half = [e for e in events_of(YEAR) if day_of(e, YEAR) < mid - 1]
    assert first_half == [e for e in events_of(changed) if day_of(e, changed) < mid - 1]
    # ... then carts tell much less and SMS / push take over conversions.
    assert regime["after"]["cart_share"] < 0.6 * base["after"]["cart_share"]
    assert regime["after"]["sms_push_share"] > base["after"]["sms_push_share"] + 0.2


def test_privacy_change_inflates_email_opens_and_nothing_else() -> None:
    private = dataclasses.replace(YEAR, regime_change=True, regime="privacy")
    mid = YEAR.days // 2
    base, changed = events_of(YEAR), events_of(private)
    # Only the measurement changes: every event but the opens is the same, clicks included
    # (ids and the few late deliveries are drawn per event, so more opens shift those that follow).
    def without_opens(events: tuple[dict[str, Any], ...]) -> list[str]:
        return sorted(
            json.dumps({k: v for k, v in e.items() if k != "event_id"}, sort_keys=True)
            for e in events if e.get("action") != "opened"
        )

    assert without_opens(base) == without_opens(changed)

    def open_rate(events: tuple[dict[str, Any], ...], after: bool) -> float:
        counts: Counter[str] = Counter()
        for e in events:
            if e["type"] == "campaign" and e["channel"] == "email" and (day_of(e, YEAR) >= mid) == after:
                counts[e["action"]] += 1
        return counts["opened"] / counts["delivered"]

    assert open_rate(changed, after=False) == open_rate(base, after=False)
    # Mail apps of 45% of customers open every delivered email from the midpoint.
    assert open_rate(changed, after=True) > open_rate(base, after=True) + 0.2
    with pytest.raises(ValueError):
        SimulationConfig(regime="weather")


# --------------------------------------------------------------------------- files and dirt


def test_clean_file_matches_the_stream_and_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "clean.jsonl"
    summary = write_jsonl(SMALL, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == list(events_of(SMALL))
    kinds = Counter(e["type"] for e in events_of(SMALL))
    assert summary.events == len(lines) == summary.lines
    assert (summary.web, summary.purchase, summary.campaign) == (
        kinds["web"],
        kinds["purchase"],
        kinds["campaign"],
    )
    assert summary.malformed == summary.duplicates == 0
    orders: dict[str, set[str]] = defaultdict(set)
    for e in events_of(SMALL):
        if e["type"] == "purchase" and e["status"] == "completed":
            orders[e["customer_id"]].add(e["order_id"])
    assert summary.buyers == len(orders)
    assert summary.repeat_buyers == sum(len(o) >= 2 for o in orders.values())
    assert summary.customers == len({e["customer_id"] for e in events_of(SMALL)})


def test_dirty_lines_are_counted_and_really_dirty(tmp_path: Path) -> None:
    config = SimulationConfig(customers=300, days=120, seed=7, dirty=0.1)
    path = tmp_path / "dirty.jsonl"
    summary = write_jsonl(config, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == summary.lines == summary.events + summary.malformed + summary.duplicates
    dirty_share = (summary.malformed + summary.duplicates) / summary.lines
    assert 0.08 < dirty_share < 0.12
    assert set(summary.dirty_kinds) == {
        "duplicate",
        "truncated_json",
        "not_json",
        "missing_field",
        "wrong_type",
        "negative_amount",
        "absurd_ts",
        "unknown_type",
    }
    assert sum(summary.dirty_kinds.values()) == summary.malformed + summary.duplicates
    seen: set[str] = set()
    valid = invalid = duplicates = 0
    reasons: Counter[str] = Counter()
    for line in lines:
        why = line_problem(line)
        if why is not None:
            invalid += 1
            reasons[why.split()[0]] += 1
            continue
        event_id = json.loads(line)["event_id"]
        if event_id in seen:
            duplicates += 1
            continue
        seen.add(event_id)
        valid += 1
    assert (valid, invalid, duplicates) == (summary.events, summary.malformed, summary.duplicates)
    assert {"invalid", "unknown", "missing", "amount", "negative", "absurd"} <= set(reasons)
    # Exact duplicates repeat an earlier line byte for byte.
    first_line: dict[str, str] = {}
    for line in lines:
        if line_problem(line) is None:
            event_id = json.loads(line)["event_id"]
            assert first_line.setdefault(event_id, line) == line
    # The valid lines are the clean stream minus the lines that dirt replaced.
    clean_ids = [e["event_id"] for e in events_of(SMALL)]
    assert set(seen) <= set(clean_ids)
    assert len(clean_ids) - len(seen) == summary.malformed


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        SimulationConfig(dirty=1.5)
    with pytest.raises(ValueError):
        SimulationConfig(days=0)
    with pytest.raises(ValueError):
        SimulationConfig(customers=-1)
