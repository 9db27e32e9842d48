"""Models (River estimator checks, consolidation, inputs) and the alert/trigger policy."""

from __future__ import annotations

import math

import pytest
from river import checks

from features.events import AnyEvent, EventError, decode
from scoring.core import ScoringCore
from scoring.kinds import Bands
from scoring.models import OnlineModel, _pipeline, model_input
from scoring.rfm import RfmGrader
from scoring.triggers import Policy, in_control

T0 = 1_704_067_200_000
DAY = 86_400_000


@pytest.mark.parametrize("name", ["logistic", "tree", "forest"])
def test_river_estimator_checks_pass_on_every_model(name: str) -> None:
    checks.check_estimator(_pipeline(name))


def test_consolidation_reaches_the_batch_optimum_direction() -> None:
    """Two correlated signals, few labels: a refit separates them better than raw SGD."""
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(400):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        y = int(rng.random() < 1 / (1 + math.exp(-(2.0 * a - 1.0 * b))))
        rows.append(({"a": a, "b": b}, y))
    sgd = OnlineModel("k", min_labels=10, min_per_class=2)
    refit = OnlineModel("k", min_labels=10, min_per_class=2, consolidate_every=100)
    for x, y in rows:
        sgd.learn(x, y)
        refit.learn(x, y)
    assert refit.consolidations >= 1
    w = refit.pipeline["LogisticRegression"].weights
    assert w["a"] > 0 > w["b"]
    assert abs(w["a"]) > abs(w["b"])

    def loss(m: OnlineModel) -> float:
        total = 0.0
        for x, y in rows:
            p = min(max(m.predict(x), 1e-9), 1 - 1e-9)
            total -= math.log(p if y else 1 - p)
        return total / len(rows)

    assert loss(refit) < loss(sgd)


def test_model_input_drops_times_and_sensitive_fields() -> None:
    x = model_input({"age": 40.0, "orders_total": 1.0, "last_purchase_at": 1.7e12, "x": None}, ["age"])
    assert x == {"orders_total": math.log1p(1.0), "x_missing": 1.0}


def test_sensitive_attribute_can_never_be_a_feature() -> None:
    from features.engine import FeatureEngine
    from features.spec import Catalog, FeatureSpec

    cat = Catalog((FeatureSpec("age_max", "web", "max", field="age"),))
    with pytest.raises(ValueError, match="sensitive"):
        FeatureEngine(cat, sensitive=("age",))


def test_the_python_api_keeps_sensitive_attributes_out_as_a_config_does() -> None:
    """ScoringCore.in_memory built its engine with no sensitive list, the core's own default was
    shorter than the config's, and the model inputs dropped exact names only."""
    from features.engine import FeatureEngine
    from features.spec import DEFAULT_SENSITIVE, Catalog, FeatureSpec, default_catalog

    over_gender = Catalog((*default_catalog().features, FeatureSpec("codes_30d", "web", "distinct",
                                                                    field="customer_gender", window="30d")),
                          default_catalog().derived)
    with pytest.raises(ValueError, match="sensitive"):
        ScoringCore.in_memory(over_gender)
    with pytest.raises(ValueError, match="sensitive"):
        FeatureEngine(over_gender)
    assert ScoringCore.in_memory().sensitive == DEFAULT_SENSITIVE
    ScoringCore.in_memory(over_gender, sensitive=())  # taken off the list: the user's call
    # A feature whose own name holds a sensitive word (a derived one, say) is no model input.
    x = model_input({"orders_total": 1.0, "customerGender_codes": 2.0, "sex_ratio": 0.5}, DEFAULT_SENSITIVE)
    assert x == {"orders_total": math.log1p(1.0)}


def test_bands_have_hysteresis() -> None:
    b = Bands(warm=30, hot=60, hysteresis=5)
    assert b.of(61) == "hot" and b.of(57, previous="hot") == "hot" and b.of(54, previous="hot") == "warm"
    assert b.of(58, previous="warm") == "warm"


def test_control_group_is_deterministic_and_near_its_fraction() -> None:
    members = [in_control(f"c{i}", "salt", 0.1) for i in range(20_000)]
    assert members == [in_control(f"c{i}", "salt", 0.1) for i in range(20_000)]
    assert 0.09 < sum(members) / len(members) < 0.11
    assert members != [in_control(f"c{i}", "other", 0.1) for i in range(20_000)]


def _web(cid: str, t: int, eid: str, action: str) -> AnyEvent:
    ev = decode(f'{{"event_id":"{eid}","customer_id":"{cid}","ts":{t},"type":"web","action":"{action}","session_id":"s{eid}"}}')
    assert not isinstance(ev, EventError)
    return ev


def test_jump_alert_respects_cooldown() -> None:
    core = ScoringCore.in_memory(policy=Policy(jump_points=5.0, alert_cooldown="1d", min_change=0.1))
    core.process([_web("a", T0, "v0", "page_view")])
    carts = [_web("a", T0 + 60_000 * (i + 1), f"c{i}", "add_to_cart") for i in range(12)]
    out = core.process(carts)
    engagement = [a for a in out.alerts if a["kind"] == "engagement"]
    assert len(engagement) == 1, "a burst within the cooldown alerts once"
    later = core.process([_web("a", T0 + 2 * DAY + i, f"d{i}", "add_to_cart") for i in range(12)])
    assert all(a["ts"] > out.alerts[0]["ts"] for a in later.alerts)


def _browsing_core(jump_points: float, cooldown: str, **kind: object) -> ScoringCore:
    from scoring.config import scoring_config_from_dict

    off = {k: {"enabled": False} for k in ("purchase_propensity", "churn_risk", "campaign_response",
                                           "rfm_segment", "engagement")}
    cfg = scoring_config_from_dict({
        "kinds": off | {"browsing": {"type": "rule", "rescore": "1h", "rule_weights": {"page_views_7d": 1},
                                     "rule_scale": 1000, "bands": {"warm": 90, "hot": 95}, **kind}},
        "policy": {"jump_points": jump_points, "jump_window": "7d", "alert_cooldown": cooldown, "min_change": 0,
                   "triggers": []}})
    return ScoringCore.in_memory(cfg.catalog, kinds=cfg.kinds, policy=cfg.policy)


def test_a_steady_rise_within_the_jump_window_is_a_jump() -> None:
    """Only the last 8 scores were kept: an hourly score rising 25 points over two days never
    alerted with a 7-day window (the window was 8 hours in effect)."""
    core = _browsing_core(jump_points=15, cooldown="30d")
    scores, alerts = [], []
    for i in range(300):  # a page view every 10 minutes for 50 hours, scored at most hourly
        out = core.process([_web("c1", T0 + i * 600_000, f"e{i}", "page_view")])
        scores += [s["value"] for s in out.scores]
        alerts += out.alerts
    assert max(scores) - min(scores) > 20 and all(b >= a for a, b in zip(scores, scores[1:], strict=False))
    assert len(alerts) == 1 and alerts[0]["reason"].startswith("jumped 15.")
    state = core.state.load(["c1"])["c1"].kinds["browsing"]
    assert len(state.history) <= 9  # the window's lows, bounded however often it is rescored


def test_a_jump_alert_fires_on_a_rise_and_the_next_needs_a_new_rise() -> None:
    """Jump alerts fired on falling scores (95.2 -> 92.6, "jumped 19.5") and again each day the
    cooldown allowed, against the same low point days earlier."""
    core = _browsing_core(jump_points=10, cooldown="1h", tick="1h", rule_weights={"web_engagement": 1},
                          rule_scale=40)
    alerts = []
    t, n = T0, 0
    for burst, pause_h in ((30, 3), (0, 30), (4, 3), (20, 3)):  # up, quiet (falls), a little up, up again
        for _ in range(burst):
            alerts += core.process([_web("c1", t, f"e{n}", "page_view")]).alerts
            t, n = t + 600_000, n + 1
        for _ in range(pause_h):
            t += 3_600_000
            alerts += core.advance("0", t).alerts
    jumps = [a for a in alerts if a["reason"].startswith("jumped")]
    assert len(jumps) >= 2 and all(a["value"] > a["old_value"] for a in jumps)
    # After each jump told, the next one is at least jump_points above the value it was told at.
    for first, second in zip(jumps, jumps[1:], strict=False):
        assert second["value"] - first["value"] >= 10


def test_rfm_grades_are_quintiles_of_the_customer_base() -> None:
    g = RfmGrader()
    now = T0 + 200 * DAY
    base = [{"days_since_last_purchase": float(i % 100), "orders_total": float(1 + i % 5),
             "spend_total": float(10 * (1 + i % 50))} for i in range(500)]
    for vector in base:
        g.move(None, RfmGrader.key(vector, now))
    best = g.grade({"days_since_last_purchase": 1.0, "orders_total": 5.0, "spend_total": 500.0}, now)
    worst = g.grade({"days_since_last_purchase": 99.0, "orders_total": 1.0, "spend_total": 10.0}, now)
    assert best == (5, 5, 5, "champions") and worst == (1, 1, 1, "hibernating")
    # Graded at one moment, as customers.csv does, each grade holds a fifth of the base.
    for axis in range(3):
        counts = [0] * 5
        for vector in base:
            counts[g.grade(vector, now)[axis] - 1] += 1
        assert counts == [100] * 5, (axis, counts)


def test_rfm_counts_each_buyer_once_however_often_they_buy() -> None:
    # Before: the edges were learned from every grade, so one customer's 200 orders weighed as
    # 200 customers, all with recency 0: on dense exports R 5 went to the 1% who bought that day.
    core = ScoringCore.in_memory()
    events = []
    for i in range(200):  # one heavy buyer, every day
        events.append(decode(f'{{"event_id":"h{i}","customer_id":"heavy","ts":{T0 + i * DAY},'
                             f'"type":"purchase","order_id":"h{i}","amount":10,"currency":"EUR"}}'))
    for c in range(99):  # and 99 who bought once, spread over the same time
        events.append(decode(f'{{"event_id":"o{c}","customer_id":"c{c}","ts":{T0 + c * 2 * DAY + 1},'
                             f'"type":"purchase","order_id":"o{c}","amount":30,"currency":"EUR"}}'))
    events.sort(key=lambda e: e.ts_ms)
    for start in range(0, len(events), 25):
        core.process(events[start:start + 25])
    grader = core.state.shard_states(["0"])["0"].grader
    assert grader is not None
    assert [sum(c.values()) for c in grader.counts.values()] == [100, 100, 100]
    assert grader.counts["f"][200] == 1 and grader.counts["f"][1] == 99
    # The heavy buyer ranks top on frequency and recency (bought last), against 99 others.
    end = T0 + 200 * DAY
    state = core.features.read(["heavy"])["heavy"]
    grades = core.scores_now(core.engine.vector(state, end), end)["rfm_segment"]["rfm"]
    assert grades[:2] == "55", grades
    # In a small base every move counts at once (grades were against a base 16 moves old:
    # the restart test's 20 buyers a shard all graded R 5).
    small = RfmGrader()
    now = T0 + 10 * DAY
    for day in (1, 2, 3):
        small.move(None, (T0 // DAY + day, 1, 100))
        newest = {"days_since_last_purchase": 10.0 - day, "orders_total": 1.0, "spend_total": 1.0}
        assert small.grade(newest, now)[:2] == (5, 1)
    oldest = {"days_since_last_purchase": 9.0, "orders_total": 1.0, "spend_total": 1.0}
    assert small.grade(oldest, now)[0] == 2  # one of three: ceil(5 / 3)
    # Moves add up in any order (a sharded replay applies a round's moves in one batch).
    steps = [(None, (1, 1, 5)), ((1, 1, 5), (3, 2, 9)), (None, (2, 1, 4))]  # x buys twice, y once
    forward, backward = RfmGrader(), RfmGrader()
    for old, new in steps:
        forward.move(old, new)
    for old, new in reversed(steps):
        backward.move(old, new)
    expected = {"r": {3: 1, 2: 1}, "f": {2: 1, 1: 1}, "m": {9: 1, 4: 1}}
    assert {m: dict(c) for m, c in forward.counts.items()} == expected
    assert {m: dict(c) for m, c in backward.counts.items()} == expected


def test_rfm_recency_grade_falls_while_a_buyer_stays_silent() -> None:
    """RFM is regraded weekly (tick) between purchases, so R has a spread and falls with silence."""
    from features.events import decode

    core = ScoringCore.in_memory()
    events = []
    for c in range(60):  # buyers whose last purchase falls over the first ten weeks
        t = T0 + (c % 10) * 7 * DAY + c * 3_600_000
        events.append(decode(f'{{"event_id":"p{c}","customer_id":"c{c}","ts":{t},"type":"purchase",'
                             f'"order_id":"o{c}","amount":{20 + c},"currency":"EUR"}}'))
    events.sort(key=lambda e: e.ts_ms)
    grades: dict[str, list[str]] = {}
    for start in range(0, len(events), 10):
        for rec in core.process(events[start:start + 10]).scores:
            if rec["kind"] == "rfm_segment":
                grades.setdefault(rec["customer_id"], []).append(rec["rfm"])
    for rec in core.advance("0", T0 + 30 * 7 * DAY).scores:
        if rec["kind"] == "rfm_segment":
            grades.setdefault(rec["customer_id"], []).append(rec["rfm"])
    first_buyer = grades["c0"]
    # Graded at the purchase, then again as the silence grows: R ends lower than it started.
    assert len(first_buyer) >= 2 and int(first_buyer[-1][0]) < int(first_buyer[0][0])
    assert {g[0] for gs in grades.values() for g in gs} >= {"1", "5"}  # both ends of the scale occur


def test_learning_settings_reach_the_models_from_config() -> None:
    from scoring.config import scoring_config_from_dict
    from scoring.core import ModelRegistry

    cfg = scoring_config_from_dict({"kinds": {"churn_risk": {
        "consolidate_max": 500, "half_life": 5000, "drift_refit": True, "drift_min_rows": 2000,
        "missing_indicators": False,
    }}})
    models = ModelRegistry(cfg.kinds).models
    churn, propensity = models["churn_risk"], models["purchase_propensity"]
    assert (churn.consolidate_max, churn.half_life, churn.drift_refit, churn.drift_min_rows) == (500, 5000, True, 2000)
    assert churn.indicators is None and propensity.indicators == {}
    assert (propensity.consolidate_max, propensity.half_life, propensity.drift_refit) == (1000, 0, False)


def test_a_win_back_trigger_counts_the_customer_s_silence_not_our_sends() -> None:
    """A buyer silent for ten weeks while a newsletter went out weekly is dormant.

    The trigger read the silence from any event, our sends included: a weekly newsletter
    kept every win-back from firing.
    """
    core = ScoringCore.in_memory()
    events = [decode(f'{{"event_id":"p","customer_id":"b","ts":{T0},"type":"purchase","order_id":"o",'
                     '"amount":30,"currency":"EUR"}')]
    events += [decode(f'{{"event_id":"n{w}","customer_id":"b","ts":{T0 + w * 7 * DAY + 1},"type":"campaign",'
                      f'"campaign_id":"news{w}","channel":"email","action":"sent"}}') for w in range(1, 11)]
    triggers = []
    for ev in events:
        assert not isinstance(ev, EventError)
        triggers += core.process([ev]).triggers
    triggers += core.advance("0", T0 + 11 * 7 * DAY).triggers
    dormant = [t for t in triggers if t["trigger"] == "re_engage_dormant"]
    assert dormant and dormant[0]["reason"].startswith("no activity for ")
    assert int(dormant[0]["reason"].split()[3]) >= 45


@pytest.mark.parametrize("change", [{"model": "tree"}, {"label_on_outcome": 0, "label_without_outcome": 1}])
def test_a_snapshot_of_another_model_than_the_config_s_is_not_loaded(change: dict[str, object]) -> None:
    """``model: tree`` in the config, a restart, and the logistic snapshot came back: the
    setting had no effect on a running deployment (and a flipped label learned on, inverted)."""
    from scoring.config import scoring_config_from_dict
    from scoring.core import ModelRegistry
    from scoring.state import InMemoryModelStore

    store = InMemoryModelStore()
    before = ModelRegistry(scoring_config_from_dict({}).kinds)
    before.models["purchase_propensity"].learn({"x": 1.0}, 1)
    before.save(store)
    after = ModelRegistry(scoring_config_from_dict({"kinds": {"purchase_propensity": change}}).kinds)
    assert after.refresh(store) == []
    model = after.models["purchase_propensity"]
    assert model.version == 0 and (model.model_name, model.outcome_label) == (
        change.get("model", "logistic"), change.get("label_on_outcome", 1))
    assert ModelRegistry(scoring_config_from_dict({}).kinds).refresh(store) == ["purchase_propensity"]


def test_the_python_api_says_what_it_takes() -> None:
    """Mistakes a notebook makes get a reason, not an AttributeError or a silent no-op."""
    from features.events import decode
    from scoring.backtest import BacktestConfig, run_backtest
    from scoring.core import ScoringCore

    core = ScoringCore.in_memory()
    for wrong, says in (({"event_id": "e"}, "not dict"), (decode(b"{oops"), "not EventError: invalid JSON")):
        with pytest.raises(TypeError, match=says):
            core.process([wrong])
    order = decode('{"event_id":1,"customer_id":42,"ts":1709287200,"type":"purchase","order_id":"o1",'
                   '"amount":80,"currency":"eur"}')
    core.process([order])
    assert core.current(42) == core.current(" 42 ") == core.current("42") != {}
    core.erase(42)  # the id as the event gave it
    assert core.current("42") == {}
    # An id in either Unicode form is the one the events stored (composed).
    zoe = decode('{"event_id":2,"customer_id":"Zo\u00eb","ts":1709287200,"type":"purchase","order_id":"o2",'
                 '"amount":80,"currency":"eur"}')
    core.process([zoe])
    assert core.current("Zoe\u0308") == core.current("Zo\u00eb") != {}
    core.erase("Zoe\u0308")
    assert core.current("Zo\u00eb") == {}
    with pytest.raises(TypeError, match="not one string"):
        run_backtest("history.jsonl", BacktestConfig())


def test_an_idle_trigger_on_rfm_does_not_count_our_sends_as_activity() -> None:
    """An RFM idle regrade read only its grade's features: the trigger then measured silence
    with our own sends counted, and a win-back on a buyer we e-mail every 3 days never fired."""
    import json

    from scoring.config import scoring_config_from_dict

    cfg = scoring_config_from_dict({
        "kinds": {"purchase_propensity": {"enabled": False}, "churn_risk": {"enabled": False},
                  "campaign_response": {"enabled": False}, "rfm_segment": {"tick": "10d"}},
        "policy": {"triggers": [{"name": "dormant", "kind": "rfm_segment", "action": "win_back",
                                 "min_idle_days": 30}]}})
    core = ScoringCore.in_memory(cfg.catalog, kinds=cfg.kinds, policy=cfg.policy)
    evs = [{"event_id": "p1", "customer_id": "c1", "ts": T0, "type": "purchase", "order_id": "o1", "amount": 50,
            "currency": "EUR"}]
    evs += [{"event_id": f"s{d}", "customer_id": "c1", "ts": T0 + d * DAY, "type": "campaign", "campaign_id": f"k{d}",
             "channel": "email", "action": "sent"} for d in range(3, 91, 3)]
    evs += [{"event_id": f"w{d}", "customer_id": "c2", "ts": T0 + d * DAY + 1, "type": "web", "action": "login"}
            for d in range(91)]  # another customer moves the watermark
    evs.sort(key=lambda d: d["ts"])
    fired = []
    for i in range(0, len(evs), 5):
        out = core.process([decode(json.dumps(d)) for d in evs[i:i + 5]])
        fired += [t for t in out.triggers if t["customer_id"] == "c1"]
    assert fired and all(t["trigger"] == "dormant" for t in fired)
    assert int(fired[0]["reason"].split()[3]) >= 30
