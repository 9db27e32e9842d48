"""A user's own scoring configuration: mistakes are named where they are, new kinds and
features work end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from features.engine import FeatureEngine
from scoring.backtest import BacktestConfig, run_backtest
from scoring.config import ConfigError, load_scoring_config, scoring_config_from_dict
from scoring.core import ScoringCore
from scoring.simulator import SimulationConfig, write_jsonl

UPSELL: dict[str, Any] = {
    "catalog": {"features": [
        {"name": "sessions_90d", "source": "web", "agg": "distinct", "field": "session_id", "window": "90d"},
    ]},
    "kinds": {
        "rfm_segment": {"enabled": False},
        "repeat_purchase_30d": {
            "type": "learned", "score_on": ["purchase:completed"], "rescore_on": ["web", "purchase"],
            "tick": "7d", "register": "7d", "horizon": "30d", "outcome": ["purchase:completed"],
            "requires_purchase": True, "min_labels": 30, "trial": 0,
            "rule_weights": {"orders_365d": 8, "sessions_90d": 1, "days_since_last_purchase": -0.1},
        },
        "vip_points": {"type": "rule", "rule_weights": {"spend_365d": 0.05, "orders_365d": 5}},
    },
    "policy": {"triggers": [
        {"name": "repeat_likely", "kind": "repeat_purchase_30d", "action": "send_cross_sell", "band": "hot"},
    ]},
}


@pytest.mark.parametrize(("data", "message"), [
    ({"kinds": {"churn_risk": {"horizon": "60 days"}}}, "kinds.churn_risk.horizon: not a duration"),
    ({"kinds": {"churn_risk": {"modle": "tree"}}}, "kinds.churn_risk: unknown keys ['modle']"),
    ({"kinds": {"churn_risk": {"model": "svm"}}}, "kinds.churn_risk.model: one of logistic, tree, forest"),
    ({"kinds": {"purchse_propensity": {"horizon": "7d"}}}, "kinds.purchse_propensity: unknown score kind"),
    ({"kinds": {"churn_risk": {"outcome": ["purchase:bought"]}}}, "kinds.churn_risk.outcome: unknown event"),
    ({"kinds": {"churn_risk": {"outcome": ["purchase"]}}}, "kinds.churn_risk.outcome: unknown event"),
    ({"kinds": {"churn_risk": {"rescore_on": ["web", "mail"]}}}, "kinds.churn_risk.rescore_on: unknown event"),
    ({"kinds": {"churn_risk": {"bands": {"warm": 80, "hot": 50}}}}, "kinds.churn_risk.bands: needs 0 <= warm"),
    ({"kinds": {"churn_risk": {"bands": {"warn": 20}}}}, "kinds.churn_risk.bands: unknown keys ['warn']"),
    ({"kinds": {"churn_risk": {"min_labels": 0}}}, "kinds.churn_risk.min_labels: a whole number of at least 1"),
    ({"kinds": {"churn_risk": {"min_labels": 12, "min_per_class": 10}}}, "must hold min_per_class"),
    ({"kinds": {"churn_risk": {"rule_weights": {"orders_totl": 1}}}},
     "kinds.churn_risk.rule_weights: unknown features ['orders_totl']"),
    ({"kinds": {"churn_risk": {"rule_weights": {"orders_total": "lots"}}}},
     "kinds.churn_risk.rule_weights.orders_total: a number"),
    ({"kinds": {"new_kind": {"type": "learned", "horizon": "0d"}}}, "kinds.new_kind.horizon: must be longer"),
    ({"kinds": {"new_kind": {"type": "magic"}}}, "kinds.new_kind.type: one of learned, rule, rfm"),
    ({"kinds": ["churn_risk"]}, "kinds: expected a mapping"),
    ({"kinds": {"churn_risk": {"enabled": "false"}}}, "kinds.churn_risk.enabled: true or false"),
    ({"kinds": {"churn_risk": {"horizon": 60}}}, "kinds.churn_risk.horizon: a duration such as 7d"),
    ({"kinds": {"purchase_propensity": {"tick_growth": "2"}}}, "tick_growth must be a number"),
    ({"kinds": {"rfm_again": {"type": "rfm"}}}, "kinds: at most one kind of type rfm"),
    ({"lateness": "1 hour"}, "lateness: not a duration"),
    ({"policy": {"jump_points": -5}}, "policy.jump_points: a number of at least 0"),
    ({"policy": {"control_fraction": 1.5}}, "policy.control_fraction: a fraction"),
    ({"policy": {"cooldown": "1d"}}, "policy: unknown keys ['cooldown']"),
    ({"policy": {"triggers": [{"name": "t", "kind": "churn_risk", "action": "x"}]}},
     "policy.triggers[0]: give either band or min_idle_days"),
    ({"policy": {"triggers": [{"name": "t", "kind": "nope", "action": "x", "band": "hot"}]}},
     "policy.triggers[0].kind: 'nope' is not a score kind"),
    ({"policy": {"triggers": [{"name": "t", "kind": "churn_risk", "action": "x", "band": "boiling"}]}},
     "policy.triggers[0].band: warm or hot"),
    # Nothing rises into cold but a first score: it fired for every new customer, then never.
    ({"policy": {"triggers": [{"name": "t", "kind": "churn_risk", "action": "x", "band": "cold"}]}},
     "policy.triggers[0].band: warm or hot, not 'cold' (a trigger fires when the band rises into it)"),
    # Rules of one name shared one cooldown.
    ({"policy": {"triggers": [{"name": "t", "kind": "churn_risk", "action": "x", "band": "hot"},
                              {"name": "t", "kind": "purchase_propensity", "action": "y", "band": "hot"}]}},
     "policy.triggers[1].name: 't' is given twice"),
    ({"catalog": {"features": [{"name": "x_7d", "source": "web:teleport", "agg": "count"}]}},
     "catalog.features[0]: x_7d: unknown action 'teleport'"),
    ({"catalog": {"features": [{"name": "x", "source": "web", "agg": "median"}]}},
     "catalog.features[0].agg: one of count"),
    ({"catalog": {"features": [{"name": "x", "source": "web", "agg": "countt", "window": "7d"}]}},
     "catalog.features[0].agg: one of count"),
    ({"catalog": {"features": [{"name": "x", "source": "web", "agg": "count", "window": "a week"}]}},
     "catalog.features[0]: not a duration"),
    ({"catalog": {"features": [{"name": "orders_total", "source": "web", "agg": "count"}]}},
     "catalog: duplicate feature names: ['orders_total']"),
    ({"catalog": {"derived": [{"name": "r", "kind": "ratio", "inputs": ["nope_a", "nope_b"]}]}},
     "catalog: r: unknown inputs"),
    ({"catalog": {"derived": [{"name": "r", "kind": "ratio", "inputs": ["orders_total"]}]}},
     "catalog.derived[0].inputs: ratio takes 2 input(s), not 1"),
    ({"catalog": {"extra": []}}, "catalog: unknown keys ['extra']"),
    ({"catalog": {"features": [{"name": "w", "source": "web", "agg": "count", "weights": {"login": "two"}}]}},
     "catalog.features[0].weights: a mapping of action to a number"),
    ({"catalog": {"features": [{"name": "s", "source": "web", "agg": "distinct", "field": "session_id",
                                "window": "7d", "cap": 0}]}}, "catalog.features[0].cap: a whole number"),
    ({"catalog": {"derived": [{"name": "r", "kind": "ratio", "inputs": ["orders_total", "orders_90d"],
                               "prior": [1, "x"]}]}}, "catalog.derived[0].prior: two numbers"),
    ({"policy": {"triggers": [{"name": "t", "kind": "churn_risk", "action": "x", "min_idle_days": "45"}]}},
     "policy.triggers[0].min_idle_days: a number of days"),
    ({"sensitive": "age"}, "sensitive: a list"),
    ({"kinds": {k: {"enabled": False} for k in ("purchase_propensity", "churn_risk", "campaign_response",
                                                  "engagement", "rfm_segment")}},
     "kinds: every kind is switched off; leave at least one enabled"),
    ({"kinds": {"churn_risk": {"tick": "7m"}}}, "kinds.churn_risk.tick: at least 1h, not 7m"),
    ({"catalog": {"features": [{"name": "max_age", "source": "any", "agg": "max", "field": "age"}]}},
     "catalog: max_age aggregates 'age', which is sensitive"),
    # An export's column as its tool names it: in any case, or as one word of a longer name.
    ({"catalog": {"features": [{"name": "oldest", "source": "any", "agg": "max", "field": "Age"}]}},
     "catalog: oldest aggregates 'Age', which is sensitive (age)"),
    ({"catalog": {"features": [{"name": "g", "source": "any", "agg": "max", "field": "AGE_GROUP"}]}},
     "catalog: g aggregates 'AGE_GROUP', which is sensitive (age)"),
    ({"catalog": {"features": [{"name": "g", "source": "any", "agg": "max", "field": "customerGender"}]}},
     "catalog: g aggregates 'customerGender', which is sensitive (gender)"),
    ({"kind": {}}, "the config: unknown keys ['kind']"),
    # Text where a true/false goes was taken as true: "no" switched drift refits on.
    ({"kinds": {"churn_risk": {"drift_refit": "no"}}}, "kinds.churn_risk.drift_refit: true or false, not 'no'"),
    ({"kinds": {"x": {"type": "learned", "requires_purchase": "yes"}}}, "kinds.x.requires_purchase: true or false"),
    ({"kinds": {"churn_risk": {"missing_indicators": 0}}}, "kinds.churn_risk.missing_indicators: true or false"),
    ({"policy": {"triggers": [{"name": "t", "kind": "churn_risk", "action": "x", "band": "hot",
                               "requires_purchase": "false"}]}},
     "policy.triggers[0].requires_purchase: true or false"),
    ({"catalog": {"defaults": "no"}}, "catalog.defaults: true or false"),
    ({"name": ["shop"]}, "name: text, not ['shop']"),
    # A number as match_field crashed at the first scored event.
    ({"kinds": {"x": {"type": "learned", "match_field": 3}}}, "kinds.x.match_field: the name of an event field"),
    # An idle rescore has no event to match: every one of its examples was a negative.
    ({"kinds": {"campaign_response": {"tick": "7d"}}},
     "kinds.campaign_response.tick: a kind with match_field scores events only"),
    ({"kinds": {"purchase_propensity": {"tick_growth": 0.5}}},
     "kinds.purchase_propensity: tick_growth must be a number from 1 to 100"),
    ({"catalog": {"features": [{"name": "x"}]}}, "catalog.features[0]: missing keys ['agg', 'source']"),
    # Settings of the refit that had no effect, silently: a tree does not refit, nor does consolidate_every: 0.
    ({"kinds": {"churn_risk": {"model": "tree", "drift_refit": True}}},
     "kinds.churn_risk.drift_refit: only a logistic model with consolidate_every above 0 refits"),
    ({"kinds": {"churn_risk": {"consolidate_every": 0, "half_life": 5000}}},
     "kinds.churn_risk.half_life: only a logistic model with consolidate_every above 0 refits"),
    ({"policy": {"triggers": [{"kind": "churn_risk", "action": "x", "band": "hot"}]}},
     "policy.triggers[0]: missing keys ['name']"),
    # A kind's name keys Redis, Prometheus labels and example ids.
    ({"kinds": {"Upsell-Score": {"type": "rule"}}}, "kinds.Upsell-Score: score kind names are lower_snake_case"),
])
def test_a_mistake_is_a_config_error_that_says_where(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        scoring_config_from_dict(data)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize(("data", "message"), [
    # Keys that were accepted without a word and had no effect.
    ({"kinds": {"vip": {"type": "rule", "rule_weights": {"orders_total": 5}, "horizon": "30d"}}},
     "kinds.vip.horizon: only a learned kind reads it, and vip is of type rule"),
    ({"kinds": {"engagement": {"outcome": ["purchase:completed"]}}}, "kinds.engagement.outcome: only a learned"),
    ({"kinds": {"engagement": {"model": "forest"}}}, "kinds.engagement.model: only a learned kind"),
    ({"kinds": {"engagement": {"trial": 10}}}, "kinds.engagement.trial: only a learned kind"),
    ({"kinds": {"rfm_segment": {"min_labels": 500}}}, "kinds.rfm_segment.min_labels: only a learned kind"),
    ({"kinds": {"rfm_segment": {"learn_at": "fresh"}}}, "kinds.rfm_segment.learn_at: only a learned kind"),
    ({"kinds": {"rfm_segment": {"rule_weights": {"orders_total": 5}}}},
     "kinds.rfm_segment.rule_weights: an rfm kind scores by its grades"),
    ({"kinds": {"purchase_propensity": {"model": "tree", "consolidate_every": 50}}},
     "kinds.purchase_propensity.consolidate_every: only a logistic model with consolidate_every above 0"),
    ({"kinds": {"purchase_propensity": {"model": "forest", "window": 500}}},
     "kinds.purchase_propensity.window: only a logistic model"),
    ({"kinds": {"purchase_propensity": {"consolidate_every": 0, "consolidate_max": 100}}},
     "kinds.purchase_propensity.consolidate_max: only a logistic model"),
    ({"kinds": {"campaign_response": {"score_on": ["web:login"]}}},
     "kinds.campaign_response.score_on: a kind with only_on scores at those events only"),
    ({"kinds": {"campaign_response": {"rescore": "1h"}}}, "kinds.campaign_response.rescore: a kind with only_on"),
    ({"kinds": {"x": {"type": "learned", "only_on": ["web:signup"], "rescore_on": ["web"]}}},
     "kinds.x.rescore_on: a kind with only_on"),
    ({"kinds": {"purchase_propensity": {"trial": 2000, "trial_max": 100}}},
     "kinds.purchase_propensity.trial_max: below trial (2000), so no effect"),
    ({"catalog": {"features": [{"name": "v", "source": "web", "agg": "count", "window": "7d", "cap": 3}]}},
     "catalog.features[0].cap: only a distinct feature keeps values"),
    ({"catalog": {"features": [{"name": "v", "source": "web", "agg": "count", "buckets": 5}]}},
     "catalog.features[0].buckets: the resolution of a window, and this feature has none"),
    ({"catalog": {"features": [{"name": "v", "source": "web", "agg": "count", "window": "7d", "default": -1}]}},
     "catalog.features[0]: v: default has no effect on a windowed count"),
    ({"catalog": {"derived": [{"name": "d", "kind": "days_since", "inputs": ["last_seen_at"], "prior": [5, 5]}]}},
     "catalog.derived[0].prior: only a ratio takes a prior, not days_since"),
    ({"catalog": {"derived": [{"name": "d", "kind": "present", "inputs": ["last_seen_at"], "default": 7}]}},
     "catalog.derived[0].default: present is always 1.0 or 0.0"),
    ({"catalog": {"derived": [{"name": "d", "kind": "after", "inputs": ["last_seen_at", "first_seen_at"],
                               "default": 0}]}}, "catalog.derived[0].default: after is always 1.0 or 0.0"),
])
def test_a_key_without_effect_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        scoring_config_from_dict(data)
    assert message in str(info.value), str(info.value)


def test_keys_with_an_effect_stay_accepted() -> None:
    scoring_config_from_dict({
        "kinds": {
            "purchase_propensity": {"model": "tree", "consolidate_every": 0, "trial": 2000, "trial_max": 0},
            "churn_risk": {"consolidate_every": 100, "window": 5000, "consolidate_max": 500, "trial_max": 2000},
            "campaign_response": {"only_on": ["campaign:sent"], "register": "0s"},
            "engagement": {"rescore": "1h", "rescore_on": ["web"], "bands": {"warm": 20, "hot": 50},
                           "tick": "7d", "requires_purchase": True, "active_within": "90d", "rule_scale": 20},
            "rfm_segment": {"score_on": ["purchase:completed"], "tick": "7d", "bands": {"warm": 30, "hot": 60}},
            "vip": {"type": "rule", "rule_weights": {"orders_total": 5}, "match_field": "campaign_id"},
        },
        "catalog": {"features": [
            {"name": "cats_7d", "source": "web", "agg": "distinct", "field": "category", "window": "7d", "cap": 5},
            {"name": "views_7d_24", "source": "web", "agg": "count", "window": "7d", "buckets": 24},
            {"name": "views_total_n", "source": "web", "agg": "count", "default": None},
        ], "derived": [
            {"name": "views_per_cat", "kind": "ratio", "inputs": ["views_7d_24", "cats_7d"], "prior": [0, 1],
             "default": 0},
            {"name": "days_since_seen", "kind": "days_since", "inputs": ["last_seen_at"], "default": 999},
        ]},
    })


def test_a_file_names_itself_in_its_errors_and_bad_yaml_is_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("{kinds: [")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_scoring_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("kinds: {churn_risk: {horizon: 2 months}}\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: kinds\.churn_risk\.horizon: not a duration"):
        load_scoring_config(wrong)


def test_features_are_added_to_the_default_catalogue_unless_defaults_is_false(tmp_path: Path) -> None:
    added = scoring_config_from_dict(UPSELL)
    default = scoring_config_from_dict({})
    assert added.catalog.names == [*default.catalog.names[:len(default.catalog.features)], "sessions_90d",
                                   *default.catalog.names[len(default.catalog.features):]]
    alone = tmp_path / "catalog.yaml"
    alone.write_text("defaults: false\nfeatures:\n  - {name: orders_total, source: 'purchase:completed', agg: count}\n")
    own = scoring_config_from_dict({"catalog": str(alone), "kinds": {
        name: {"enabled": False} for name in ("purchase_propensity", "churn_risk", "campaign_response",
                                              "engagement", "rfm_segment")
    } | {"orders": {"type": "rule", "rule_weights": {"orders_total": 10}}}})
    assert own.catalog.names == ["orders_total"] and [k.name for k in own.kinds] == ["orders"]


def test_switching_a_kind_off_drops_its_default_triggers() -> None:
    cfg = scoring_config_from_dict({"kinds": {"churn_risk": {"enabled": False}}})
    kinds = {t.kind for t in cfg.policy.triggers}
    assert "churn_risk" not in kinds and "purchase_propensity" in kinds


def test_a_new_learned_kind_with_a_new_feature_is_scored_learned_and_reported(tmp_path: Path) -> None:
    cfg = scoring_config_from_dict(UPSELL)
    upsell = next(k for k in cfg.kinds if k.name == "repeat_purchase_30d")
    assert upsell.learned and upsell.horizon_ms == 30 * 86_400_000 and upsell.outcome == ("purchase:completed",)
    history = tmp_path / "events.jsonl"
    write_jsonl(SimulationConfig(customers=400, days=150, seed=3), history)
    core = ScoringCore.in_memory(catalog=cfg.catalog, kinds=cfg.kinds, policy=cfg.policy)
    assert "sessions_90d" in FeatureEngine(cfg.catalog).vector({}, 0)
    report = run_backtest(history.read_bytes().splitlines(), BacktestConfig(batch_baseline=False), core)
    figures = report["kinds"]["repeat_purchase_30d"]
    assert figures["labels"] > 100 and 0 < figures["positives"] < figures["labels"]
    assert 0.0 <= figures["auc"] <= 1.0 and figures["sources"].get("model", 0) > 0
    assert "rfm_segment" not in report["kinds"]


def test_every_yaml_example_in_the_readme_is_a_valid_config() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        cfg = scoring_config_from_dict(yaml.safe_load(block))
        assert cfg.kinds
    upsell = scoring_config_from_dict(yaml.safe_load(blocks[1]))
    assert "repeat_purchase_30d" in [k.name for k in upsell.kinds] and "sessions_90d" in upsell.catalog.names


def test_a_directory_as_the_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        load_scoring_config(tmp_path)


@pytest.mark.parametrize(("data", "message"), [
    # Through a derived feature, a sensitive attribute became a model input after all.
    ({"sensitive": ["tips_total"], "catalog": {
        "features": [{"name": "tips_total", "source": "purchase:completed", "agg": "sum", "field": "tip"}],
        "derived": [{"name": "tip_share", "kind": "ratio", "inputs": ["tips_total", "spend_total"]}]}},
     "catalog.derived: tip_share reads 'tips_total', which is sensitive"),
    ({"sensitive": ["orders_total"]}, "catalog.derived: avg_basket reads 'orders_total', which is sensitive"),
    # ... and a rule (every learned kind's cold-start prior) weighed it.
    ({"sensitive": ["age_years"], "catalog": {"features": [
        {"name": "age_years", "source": "any", "agg": "max", "field": "customer_age"}]},
      "kinds": {"x": {"type": "rule", "rule_weights": {"age_years": 1}}}},
     "kinds.x.rule_weights: age_years is sensitive"),
])
def test_a_sensitive_attribute_is_no_input_through_a_derived_feature_or_a_rule(
        data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        scoring_config_from_dict(data)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("", "a.yaml: empty (a config states what differs from the defaults; {} for none)"),
    ("# nothing yet\n", "a.yaml: empty"),
    ("kinds:\n\tchurn_risk: {horizon: 7d}\n",
     "a.yaml: not valid YAML at line 2, column 1: found character '\\t' that cannot start any token "
     "(indent with spaces, not tabs)"),
    ("kinds: {churn_risk: {horizon: 7d}\n", "a.yaml: not valid YAML at line 2, column 1: expected ',' or '}'"),
    # The second one silently won.
    ("kinds:\n  churn_risk: {horizon: 7d}\n  churn_risk: {enabled: false}\n",
     "a.yaml: not valid YAML at line 3, column 3: 'churn_risk' is given twice"),
    ("- kinds\n", "a.yaml: expected a mapping at the top level"),
    ("catalog: no_such_catalog.yaml\n", "a.yaml: catalog: "),
    ("catalog: no_such_catalog.yaml\n", "no_such_catalog.yaml: no such file"),
])
def test_a_file_mistake_is_one_line_that_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_scoring_config(path)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert str(info.value).startswith(str(path)), str(info.value)


def test_a_file_that_is_not_text_or_not_there_is_a_config_error(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe kinds")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not UTF-8 text"):
        load_scoring_config(binary)
    with pytest.raises(ConfigError, match=r"gone\.yaml: no such file"):
        load_scoring_config(tmp_path / "gone.yaml")


def test_a_catalog_file_is_found_beside_the_config_that_names_it(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "features.yaml").write_text(
        "features:\n  - {name: logins_30d, source: 'web:login', agg: count, window: 30d}\n")
    (tmp_path / "conf" / "scoring.yaml").write_text("catalog: features.yaml\n")
    monkeypatch.chdir(tmp_path)  # the worker's directory is not the config's
    assert "logins_30d" in load_scoring_config("conf/scoring.yaml").catalog.names


def test_a_match_field_kind_skips_events_without_the_field() -> None:
    """A kind matched on ``campaign_id`` and scored at web events crashed the replay."""
    from features.events import decode

    cfg = scoring_config_from_dict({"kinds": {"cart_to_click": {
        "type": "learned", "score_on": ["web:add_to_cart", "campaign:sent"], "horizon": "3d",
        "outcome": ["campaign:clicked"], "match_field": "campaign_id"}}})
    core = ScoringCore.in_memory(catalog=cfg.catalog, kinds=cfg.kinds, policy=cfg.policy)
    base = '"customer_id":"c1","ts":"2024-03-01T10:00:00Z"'
    out = core.process([
        decode(f'{{"event_id":"e1",{base},"type":"web","action":"add_to_cart","session_id":"s"}}'),
        decode(f'{{"event_id":"e2",{base},"type":"campaign","action":"sent","campaign_id":"k","channel":"email"}}'),
    ])
    scored = [(s["kind"], s["event_id"]) for s in out.scores if s["kind"] == "cart_to_click"]
    assert scored == [("cart_to_click", "e2")]


def test_a_match_field_named_as_a_pydantic_method_matches_the_events_value() -> None:
    """``copy`` (the ad copy variant) is also BaseModel.copy: the event's field is what matches."""
    from features.events import decode, parse_ts_ms

    cfg = scoring_config_from_dict({"kinds": {"copy_response": {
        "type": "learned", "only_on": ["campaign:sent"], "register": "0s", "horizon": "3d",
        "outcome": ["campaign:clicked"], "match_field": "copy"}}})
    core = ScoringCore.in_memory(catalog=cfg.catalog, kinds=cfg.kinds, policy=cfg.policy)
    campaign = '"type":"campaign","campaign_id":"k","channel":"email"'
    out = core.process([
        decode(f'{{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",{campaign},'
               '"action":"sent","copy":"A"}'),
        decode(f'{{"event_id":"e2","customer_id":"c1","ts":"2024-03-01T11:00:00Z",{campaign},'
               '"action":"clicked","copy":"A"}'),
        decode('{"event_id":"e3","customer_id":"c2","ts":"2024-03-06T10:00:00Z","type":"web","action":"login"}'),
    ])
    labels = [(ex.example_id, ex.label) for ex in out.labelled if ex.kind == "copy_response"]
    assert labels == [(f"copy_response:c1:{parse_ts_ms('2024-03-01T10:00:00Z')}:A", 1)]


OWN_CATALOG: dict[str, Any] = {"defaults": False, "features": [
    {"name": "buys_365d", "source": "purchase:completed", "agg": "count", "window": "365d"},
    {"name": "last_buy_at", "source": "purchase:completed", "agg": "last_time", "default": None},
]}
DEFAULTS_OFF = {name: {"enabled": False} for name in
                ("purchase_propensity", "churn_risk", "campaign_response", "engagement", "rfm_segment")}


@pytest.mark.parametrize(("kinds", "triggers", "message"), [
    # Without these features, the setting never held: no example, no score, no trigger, no word.
    ({"rebuy": {"type": "learned", "requires_purchase": True}}, [],
     "kinds.rebuy.requires_purchase: reads the feature 'orders_total', which this catalogue lacks"),
    ({"rebuy": {"type": "learned", "active_within": "90d"}}, [],
     "kinds.rebuy.active_within: reads the feature 'orders_total'"),
    ({"grades": {"type": "rfm"}}, [], "kinds.grades.type: reads the feature 'days_since_last_purchase'"),
    ({"rebuy": {"type": "learned", "tick": "7d", "tick_growth": 2}}, [],
     "kinds.rebuy.tick_growth: reads the feature 'days_since_last_active'"),
    ({"rebuy": {"type": "learned", "tick": "7d"}},
     [{"name": "hot", "kind": "rebuy", "action": "offer", "band": "hot"}],
     "policy.triggers[0].requires_purchase: reads the feature 'orders_total'"),
    ({"rebuy": {"type": "learned", "tick": "7d"}},
     [{"name": "gone", "kind": "rebuy", "action": "win_back", "min_idle_days": 30, "requires_purchase": False}],
     "policy.triggers[0].min_idle_days: reads the feature 'days_since_last_active'"),
])
def test_a_setting_that_reads_a_feature_the_catalogue_lacks_is_refused(
        kinds: dict[str, Any], triggers: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        scoring_config_from_dict({"catalog": OWN_CATALOG, "kinds": {**DEFAULTS_OFF, **kinds},
                                  "policy": {"triggers": triggers}})
    assert message in str(info.value), str(info.value)


def test_the_rfm_features_checked_are_those_the_grader_reads() -> None:
    from scoring import config
    from scoring.rfm import METRICS

    assert tuple(METRICS.values()) == config._RFM


def test_a_min_idle_days_trigger_needs_a_kind_with_idle_rescores() -> None:
    rule = {"name": "dormant", "kind": "engagement", "action": "win_back", "min_idle_days": 30}
    with pytest.raises(ConfigError, match=r"policy.triggers\[0\].min_idle_days: engagement has no tick"):
        scoring_config_from_dict({"policy": {"triggers": [rule]}})
    # A default rule whose kind lost its tick is named too.
    with pytest.raises(ConfigError, match=r"policy.triggers \(re_engage_dormant\).min_idle_days: "
                                          r"purchase_propensity has no tick"):
        scoring_config_from_dict({"kinds": {"purchase_propensity": {"tick": None}}})
