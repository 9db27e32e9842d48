"""The label join on hand-built timelines: where labels land, what is learned, and when."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest

from features.events import AnyEvent, EventError, decode, parse_ts_ms
from features.spec import DAY_MS
from scoring.core import ModelRegistry, ScoringCore
from scoring.kinds import default_kinds
from scoring.models import OnlineModel
from scoring.state import CustomerScoring

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000


def purchase(cid: str, t: int, eid: str, amount: float = 50.0) -> AnyEvent:
    ev = decode(
        f'{{"event_id":"{eid}","customer_id":"{cid}","ts":{t},"type":"purchase",'
        f'"order_id":"o-{eid}","amount":{amount},"currency":"EUR"}}'
    )
    assert not isinstance(ev, EventError)
    return ev


def web(cid: str, t: int, eid: str, action: str = "page_view") -> AnyEvent:
    ev = decode(
        f'{{"event_id":"{eid}","customer_id":"{cid}","ts":{t},"type":"web","action":"{action}","session_id":"s-{eid}"}}'
    )
    assert not isinstance(ev, EventError)
    return ev


def pending(core: ScoringCore, cid: str, kind: str) -> list:
    return [p for p in core.state.load([cid])[cid].pending if p.kind == kind]


def test_propensity_label_is_positive_when_purchase_falls_inside_horizon() -> None:
    core = ScoringCore.in_memory()
    core.process([purchase("a", T0, "p1")])
    [ex] = pending(core, "a", "purchase_propensity")
    assert (ex.t_ms, ex.end_ms) == (T0, T0 + 7 * DAY_MS)
    core.process([purchase("a", T0 + 3 * DAY_MS, "p2")])
    assert pending(core, "a", "purchase_propensity")[0].outcome is True
    # Horizon not closed yet: nothing matured, nothing learned. At its end exactly an event
    # of that time is not late yet (late is more than the lateness behind): it may still count.
    out = core.advance("0", T0 + 7 * DAY_MS)
    assert [x for x in out.labelled if x.example_id == ex.example_id] == []
    out = core.advance("0", T0 + 7 * DAY_MS + 1)
    [lab] = [x for x in out.labelled if x.example_id == ex.example_id]
    assert lab.label == 1 and lab.end_ms == T0 + 7 * DAY_MS


def test_purchase_just_after_horizon_does_not_count() -> None:
    core = ScoringCore.in_memory()
    core.process([purchase("a", T0, "p1")])
    [ex] = pending(core, "a", "purchase_propensity")
    core.process([purchase("a", T0 + 7 * DAY_MS + 1, "p2")])
    out = core.advance("0", T0 + 8 * DAY_MS)
    [lab] = [x for x in out.labelled if x.example_id == ex.example_id]
    assert lab.label == 0


def test_churn_resolves_early_but_is_learned_only_at_horizon_close() -> None:
    core = ScoringCore.in_memory()
    model = core.registry.models["churn_risk"]
    core.process([purchase("a", T0, "p1")])
    [ex] = pending(core, "a", "churn_risk")
    core.process([purchase("a", T0 + 2 * DAY_MS, "p2")])  # "stayed" is known now...
    churn_examples = [p for p in pending(core, "a", "churn_risk") if p.example_id == ex.example_id]
    assert churn_examples[0].outcome is True
    assert model.version == 0  # ...but not learned yet: no early-resolving class bias
    out = core.advance("0", T0 + 60 * DAY_MS + 1)
    labelled = [x for x in out.labelled if x.example_id == ex.example_id]
    assert labelled and labelled[0].label == 0
    assert core.registry.models["churn_risk"].version >= 1


def test_silent_customer_is_labelled_churned_at_horizon() -> None:
    core = ScoringCore.in_memory()
    core.process([purchase("a", T0, "p1")])
    [ex] = pending(core, "a", "churn_risk")
    # Another customer's activity moves the watermark; "a" says nothing for 60 days.
    core.process([web("b", T0 + 61 * DAY_MS, "w1")])
    out_labels = core.advance("0", T0 + 61 * DAY_MS)
    everything = out_labels.labelled
    assert not pending(core, "a", "churn_risk") or all(
        p.example_id != ex.example_id for p in pending(core, "a", "churn_risk")
    )
    # The label came out in one of the two calls; find it through the model's counts.
    assert core.registry.models["churn_risk"].positives >= 1 or any(
        x.example_id == ex.example_id and x.label == 1 for x in everything
    )


def test_example_features_never_contain_the_outcome() -> None:
    core = ScoringCore.in_memory()
    core.process([purchase("a", T0, "p1")])
    core.process([purchase("a", T0 + 1 * DAY_MS, "p2")])
    out = core.advance("0", T0 + 7 * DAY_MS + 1)
    first = next(x for x in out.labelled if x.kind == "purchase_propensity" and x.t_ms == T0)
    # At T0 the customer had exactly one order: log1p(1).
    assert math.isclose(first.x["orders_total"], math.log1p(1.0))
    assert first.label == 1


def test_no_learning_from_the_future_even_out_of_order() -> None:
    """An outcome older than the scored moment never labels it."""
    core = ScoringCore.in_memory()
    core.process([purchase("a", T0 + HOUR, "p2")])
    core.process([purchase("a", T0 + 30 * 60_000, "p1")])  # 30 min earlier, within lateness
    out = core.advance("0", T0 + 8 * DAY_MS)
    later = [x for x in out.labelled if x.kind == "purchase_propensity"]
    assert later and all(x.label == 0 for x in later)


def test_duplicate_event_scores_and_alerts_once() -> None:
    core = ScoringCore.in_memory()
    first = core.process([purchase("a", T0, "p1"), web("a", T0 + 1000, "w1", "add_to_cart")])
    again = core.process([purchase("a", T0, "p1"), web("a", T0 + 1000, "w1", "add_to_cart")])
    assert again.counts["duplicates"] == 2
    assert again.scores == [] and again.alerts == [] and again.triggers == []
    assert first.scores


def _timeline(n_customers: int = 40, days: int = 120) -> list[AnyEvent]:
    events = []
    for c in range(n_customers):
        for k in range(0, days, 3 + c % 11):
            t = T0 + k * DAY_MS + c * 60_000
            events.append(web(f"c{c}", t, f"w{c}-{k}", "product_view"))
            if (c + k) % 4 == 0:
                events.append(purchase(f"c{c}", t + 600_000, f"p{c}-{k}", 20.0 + c))
    return sorted(events, key=lambda e: e.ts_ms)


def _run(core: ScoringCore, events: list[AnyEvent]) -> list[tuple]:
    outs = []
    for i in range(0, len(events), 50):
        out = core.process(events[i : i + 50])
        outs += [(s["customer_id"], s["kind"], s["value"], s["ts"]) for s in out.scores]
        outs += [(x.example_id, x.label, round(x.prob, 12)) for x in out.labelled]
    return outs


def restart(first: ScoringCore, fresh: ScoringCore) -> ScoringCore:
    """``fresh`` with everything ``first`` persisted, the way a restarted worker reads it."""
    fresh.features = copy.deepcopy(first.features)
    fresh.state = copy.deepcopy(first.state)
    fresh.state._records = {  # round-trip every record through its JSON form
        c: CustomerScoring.from_json(r.to_json()) for c, r in first.state._records.items()
    }
    fresh.registry = ModelRegistry(fresh.kinds)
    for name, m in first.registry.models.items():
        fresh.registry.models[name] = OnlineModel.restore(m.snapshot())
    return fresh


def test_restart_in_the_middle_changes_nothing() -> None:
    events = _timeline()
    half = (len(events) // 100) * 50
    straight = ScoringCore.in_memory()
    expected = _run(straight, events)

    first = ScoringCore.in_memory()
    got = _run(first, events[:half])
    got += _run(restart(first, ScoringCore.in_memory()), events[half:])
    assert got == expected
    assert any(len(t) == 3 for t in expected), "the timeline must produce labels"


def test_snapshot_restore_gives_identical_scores() -> None:
    core = ScoringCore.in_memory()
    _run(core, _timeline())
    for name, model in core.registry.models.items():
        clone = OnlineModel.restore(model.snapshot())
        assert clone.version == model.version, name
        probe = {"orders_total": 1.0, "days_since_last_purchase": 2.0, "page_views_7d": 3.0}
        assert clone.predict(probe) == model.predict(probe)
        assert clone.explain(probe) == model.explain(probe)


def test_pending_examples_stay_bounded_per_customer() -> None:
    from scoring.core import MAX_PENDING_PER_KIND

    core = ScoringCore.in_memory()
    sends = []
    for i in range(MAX_PENDING_PER_KIND + 10):
        ev = decode(
            f'{{"event_id":"s{i}","customer_id":"a","ts":{T0 + i * 60_000},"type":"campaign",'
            f'"campaign_id":"k{i}","channel":"email","action":"sent"}}'
        )
        assert not isinstance(ev, EventError)
        sends.append(ev)
    out = core.process(sends)
    assert len(pending(core, "a", "campaign_response")) == MAX_PENDING_PER_KIND
    assert out.counts["pending_capped"] == 10


def test_a_nightly_order_export_counts_when_lateness_covers_its_delay() -> None:
    # Orders loaded from a nightly export arrive up to a day after the same customer's web
    # events. Within the lateness they are applied and label what was scored before them;
    # beyond it they are counted as late and change nothing.
    def day(core: ScoringCore) -> tuple[dict, list]:
        core.process([web("a", T0 + 10 * HOUR, "w1", "add_to_cart")])  # scored: a propensity example
        core.process([web("a", T0 + 32 * HOUR, "w2")])  # the next morning, on the site again
        out = core.process([purchase("a", T0 + 20 * HOUR, "p1")])  # last night's order, loaded now
        state = core.features.read(["a"])["a"]
        return {"late": out.counts["late"], "orders": core.engine.read(state, "orders_total", T0 + 33 * HOUR)}, \
            pending(core, "a", "purchase_propensity")

    strict, strict_pending = day(ScoringCore.in_memory())  # default lateness: 1 h
    assert strict == {"late": 1, "orders": 0.0}
    assert not any(p.outcome for p in strict_pending)
    nightly, nightly_pending = day(ScoringCore.in_memory(lateness_ms=30 * HOUR))
    assert nightly == {"late": 0, "orders": 1.0}
    [first] = [p for p in nightly_pending if p.t_ms == T0 + 10 * HOUR]
    assert first.outcome is True  # the order fell inside the example's horizon


def _idle_rescore_days(growth: float, days: int = 200) -> list[int]:
    """Days after a visitor's one visit at which propensity rescored it while idle."""
    kinds = [dataclasses.replace(k, tick_growth=growth) if k.name == "purchase_propensity" else k
             for k in default_kinds()]
    core = ScoringCore.in_memory(kinds=kinds)
    core.process([web("a", T0, "w1")])
    times = []
    for day in range(1, days + 1):  # the watermark moves a day at a time, as a busy shard's would
        out = core.advance("0", T0 + day * DAY_MS)
        times += [s["ts"] for s in out.scores if s["kind"] == "purchase_propensity"]
        times += [p.t_ms for p in pending(core, "a", "purchase_propensity") if p.example_id.endswith(":idle")]
    return sorted({(t if isinstance(t, int) else parse_ts_ms(t)) - T0 for t in times})


def test_idle_rescores_space_out_with_the_silence_when_tick_growth_is_set() -> None:
    # Every 7 days by default, until 180 days of silence; with growth 2, each wait is the
    # silence so far: days 7, 14, 28, 56, 112, then 224 is past the 180-day stop.
    assert [t // DAY_MS for t in _idle_rescore_days(1.0)] == list(range(7, 181, 7))
    assert [t // DAY_MS for t in _idle_rescore_days(2.0)] == [7, 14, 28, 56, 112]
    # A wait never falls below the tick: 1.5 waits 7 days until the silence reaches 14.
    assert [t // DAY_MS for t in _idle_rescore_days(1.5)][:4] == [7, 14, 21, 31]


def test_shards_sharing_a_customer_are_processed_one_by_one() -> None:
    # A customer whose events arrive on two shards (mis-keyed input): the outputs are those
    # of separate calls (such shards go one by one, so no shard's events come before an
    # earlier shard's round of due customers).
    a = [purchase("c1", T0, "e1"), web("c2", T0 + HOUR, "e2")]
    b = [purchase("c1", T0 + 2 * HOUR, "e3", amount=80.0), web("c3", T0 + 2 * HOUR, "e4")]
    together = ScoringCore.in_memory(learn_inline=False)
    alone = ScoringCore.in_memory(learn_inline=False)
    got = together.process_shards([("0", a, None), ("1", b, None)])
    want = [alone.process(a, "0"), alone.process(b, "1")]
    assert [o.scores for o in got] == [o.scores for o in want]
    assert [dict(o.counts) for o in got] == [dict(o.counts) for o in want]
    assert got[1].counts["applied"] == 2 and any(s["customer_id"] == "c1" for s in got[1].scores)
    with pytest.raises(ValueError, match="once"):
        together.process_shards([("0", a, None), ("0", b, None)])
