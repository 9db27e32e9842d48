"""Scoring configuration from YAML: which kinds, their parameters, the alert policy, features.

Everything has a default; a file only says what differs. Two files are two
configurations a backtest can compare on the same events. A file can tune the
default kinds, switch them off, declare new kinds, and add features to the
default catalogue. Every mistake is a :class:`ConfigError` that names where it
is (``kinds.churn_risk.horizon: ...``) when the file is read, not at the first
event that needs the value.

>>> cfg = scoring_config_from_dict({"lateness": "2h",
...     "kinds": {"purchase_propensity": {"model": "tree", "horizon": "14d"},
...               "rfm_segment": {"enabled": False}},
...     "policy": {"jump_points": 20}})
>>> [k.name for k in cfg.kinds], cfg.kinds[0].model, cfg.policy.jump_points, cfg.lateness_ms
(['purchase_propensity', 'churn_risk', 'campaign_response', 'engagement'], 'tree', 20, 7200000)
>>> try:
...     scoring_config_from_dict({"kinds": {"churn_risk": {"horizon": "60 days"}}})
... except ConfigError as exc:
...     print(exc)
kinds.churn_risk.horizon: not a duration: '60 days' (use e.g. 30m, 24h, 7d, 2w)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml

from features.spec import (
    ACTIONS,
    DEFAULT_SENSITIVE,
    Aggregation,
    Catalog,
    DerivedKind,
    DerivedSpec,
    FeatureSpec,
    default_catalog,
    parse_duration_ms,
    sensitive_word,
)
from scoring.kinds import Bands, KindType, LearnAt, ModelName, ScoreKind, default_kinds
from scoring.triggers import Policy, TriggerRule

T = TypeVar("T")


class ConfigError(ValueError):
    """A scoring configuration that cannot be used, with where and why."""


@dataclass(frozen=True)
class ScoringConfig:
    kinds: list[ScoreKind] = field(default_factory=default_kinds)
    policy: Policy = field(default_factory=Policy)
    lateness_ms: int = 3_600_000
    catalog: Catalog = field(default_factory=default_catalog)
    sensitive: tuple[str, ...] = DEFAULT_SENSITIVE
    name: str = "default"


def scoring_config_from_dict(
    data: Mapping[str, Any], name: str = "custom", base: Path | None = None
) -> ScoringConfig:
    """Build a config from plain data (the parsed YAML); every mistake is a :class:`ConfigError`.

    ``base``: the directory a relative ``catalog:`` path is in (the config file's own).
    """
    _mapping("the config", data)
    _known_keys("the config", data, {"lateness", "kinds", "policy", "catalog", "sensitive", "name"})
    sensitive = data.get("sensitive", DEFAULT_SENSITIVE)
    if not isinstance(sensitive, list | tuple) or not all(isinstance(s, str) for s in sensitive):
        raise ConfigError("sensitive: a list of feature or field names")
    if not isinstance(data.get("name", name), str):
        raise ConfigError(f"name: text, not {data['name']!r}")
    catalog = _catalog(data.get("catalog"), base)
    for spec in catalog.features:  # a feature over a sensitive field would be a model input
        word = sensitive_word(spec.field, sensitive)
        if word:
            raise ConfigError(f"catalog: {spec.name} aggregates {spec.field!r}, which is sensitive ({word}) and "
                              "never a model input (take it off `sensitive` if it may be one)")
    # ... and so would a derived feature that reads one.
    names = set(sensitive)
    for d in catalog.derived:
        read = [i for i in d.inputs if sensitive_word(i, sensitive)]
        if read:
            raise ConfigError(f"catalog.derived: {d.name} reads {read[0]!r}, which is sensitive and never "
                              "a model input, not even through a derived feature")
    kinds = _kinds(_mapping("kinds", data.get("kinds") or {}), catalog, names)
    return ScoringConfig(
        kinds=kinds,
        policy=_policy(_mapping("policy", data.get("policy") or {}), kinds, catalog),
        lateness_ms=_duration("lateness", data.get("lateness", "1h")),
        catalog=catalog,
        sensitive=tuple(sensitive),
        name=data.get("name", name),
    )


def load_scoring_config(path: str | Path | None) -> ScoringConfig:
    """Read a YAML file (``None`` gives the defaults)."""
    if path is None:
        return ScoringConfig()
    data = _read_yaml(Path(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return scoring_config_from_dict(data, name=Path(path).stem, base=Path(path).parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- kinds

# Event keys: "type" or "type:action" (a purchase's action is its status).
_EVENT_FIELDS = ("score_on", "only_on", "rescore_on", "outcome")
_DURATIONS = ("rescore", "register", "horizon", "tick", "active_within")
MIN_TICK_MS = 3_600_000  # an idle rescore at most hourly
_FLAGS = ("requires_purchase", "drift_refit", "missing_indicators")
_AT_LEAST = {  # field: smallest allowed value
    "min_labels": 1, "min_per_class": 1, "consolidate_every": 0, "window": 1, "consolidate_max": 1,
    "half_life": 0, "drift_min_rows": 1, "trial": 0, "trial_max": 0,
}


def _kinds(overrides: Mapping[str, Any], catalog: Catalog, sensitive: set[str]) -> list[ScoreKind]:
    defaults = {k.name: k for k in default_kinds()}
    out = []
    for name in [*defaults, *(n for n in overrides if n not in defaults)]:
        where = f"kinds.{name}"
        o = dict(_mapping(where, overrides.get(name) or {}))
        enabled = o.pop("enabled", True)
        _flag(f"{where}.enabled", enabled)
        if not enabled:
            continue
        base = defaults.get(name)
        if base is None:
            if "type" not in o:
                raise ConfigError(
                    f"{where}: unknown score kind; a new kind needs 'type' (learned, rule or rfm). "
                    f"The default kinds are {sorted(defaults)}"
                )
            try:
                base = ScoreKind(name)
            except ValueError as exc:  # the name itself
                raise _kind_error(where, name, exc) from None
        _known_keys(where, o, {f.name for f in dataclasses.fields(ScoreKind)} - {"name"})
        if "bands" in o:
            o["bands"] = _bands(f"{where}.bands", o["bands"])
        for key in _EVENT_FIELDS:
            if key in o:
                o[key] = _event_keys(f"{where}.{key}", o[key], with_action=key == "outcome")
        try:
            kind = dataclasses.replace(base, **o)  # keys checked above
        except (TypeError, ValueError) as exc:
            raise _kind_error(where, name, exc) from None
        _check_kind(where, kind, catalog, sensitive)
        _check_given(where, kind, set(o))
        if kind.requires_purchase:
            _reads(f"{where}.requires_purchase", catalog, _BUYER)
        if kind.active_within:
            _reads(f"{where}.active_within", catalog, (*_BUYER, "last_purchase_at", "days_since_last_purchase"))
        if kind.type == "rfm":
            _reads(f"{where}.type", catalog, _RFM)
        if kind.tick and kind.tick_growth > 1:
            _reads(f"{where}.tick_growth", catalog, _SILENCE, either=True)
        out.append(kind)
    if not out:  # the core would fall back on the defaults: the opposite of what the file says
        raise ConfigError("kinds: every kind is switched off; leave at least one enabled")
    rfm = [k.name for k in out if k.type == "rfm"]
    if len(rfm) > 1:  # one grader (customer counts) per shard
        raise ConfigError(f"kinds: at most one kind of type rfm, not {rfm}")
    return out


def _kind_error(where: str, name: str, exc: Exception) -> ConfigError:
    # ScoreKind's messages start with the kind's name, and ``where`` names it already: once is enough.
    return ConfigError(f"{where}: {str(exc).removeprefix(f'{name}: ')}")


def _check_kind(where: str, kind: ScoreKind, catalog: Catalog, sensitive: set[str]) -> None:
    _choice(f"{where}.type", kind.type, get_args(KindType))
    for key in _FLAGS:  # text such as "no" would be true
        _flag(f"{where}.{key}", getattr(kind, key))
    if kind.match_field is not None and not isinstance(kind.match_field, str):
        raise ConfigError(f"{where}.match_field: the name of an event field, not {kind.match_field!r}")
    if kind.match_field and kind.tick:
        raise ConfigError(f"{where}.tick: a kind with match_field scores events only (an idle rescore "
                          f"has no {kind.match_field} for the outcome to match)")
    _choice(f"{where}.model", kind.model, get_args(ModelName))
    _choice(f"{where}.learn_at", kind.learn_at, get_args(LearnAt))
    for key in _DURATIONS:
        value = getattr(kind, key)
        if value is not None:
            _duration(f"{where}.{key}", value)
    if kind.tick and 0 < parse_duration_ms(kind.tick) < MIN_TICK_MS:
        # Every silent customer is rescored each tick: 7m (minutes, not months) made a replay of
        # 300 customers run for hours.
        raise ConfigError(f"{where}.tick: at least 1h, not {kind.tick} (each tick rescores every idle customer; "
                          "m is minutes, months are 30d)")
    if parse_duration_ms(kind.horizon) <= 0:
        raise ConfigError(f"{where}.horizon: must be longer than 0")
    for key, least in _AT_LEAST.items():
        value = getattr(kind, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{where}.{key}: a whole number of at least {least}, not {value!r}")
    refits = kind.model == "logistic" and kind.consolidate_every > 0
    for key, on in (("drift_refit", kind.drift_refit), ("half_life", kind.half_life > 0)):
        if on and not refits:  # both act in the refit only (OnlineModel.consolidate)
            raise ConfigError(f"{where}.{key}: only a logistic model with consolidate_every above 0 refits, "
                              f"and {key} acts in the refit")
    if kind.min_per_class * 2 > kind.min_labels:
        raise ConfigError(f"{where}: min_labels ({kind.min_labels}) must hold min_per_class "
                          f"({kind.min_per_class}) of each class")
    if not _number(kind.rule_scale) or kind.rule_scale <= 0:
        raise ConfigError(f"{where}.rule_scale: a number above 0")
    weights = kind.rule_weights
    if not isinstance(weights, Mapping):
        raise ConfigError(f"{where}.rule_weights: a mapping of feature name to points")
    unknown = sorted(set(weights) - set(catalog.names))
    if unknown:
        raise ConfigError(f"{where}.rule_weights: unknown features {unknown} (the catalogue has "
                          f"{len(catalog.names)}: {', '.join(catalog.names)})")
    weighed = sorted(w for w in weights if sensitive_word(w, tuple(sensitive)))
    if weighed:  # the rule is also every learned kind's cold-start prior
        raise ConfigError(f"{where}.rule_weights: {weighed[0]} is sensitive, "
                          "and no score weighs a sensitive attribute")
    for feat, points in weights.items():
        if not _number(points):
            raise ConfigError(f"{where}.rule_weights.{feat}: a number of points, not {points!r}")
    if kind.learned and not kind.outcome:
        raise ConfigError(f"{where}.outcome: a learned kind needs the events that are its outcome")


# Settings only a learned kind reads (its examples, labels and model): on a rule or rfm kind
# they were accepted and did nothing.
_LEARNED_ONLY = ("register", "horizon", "outcome", "label_on_outcome", "label_without_outcome", "model",
                 "min_labels", "min_per_class", "consolidate_every", "window", "consolidate_max", "half_life",
                 "drift_refit", "drift_min_rows", "missing_indicators", "trial", "trial_max", "learn_at")


def _check_given(where: str, kind: ScoreKind, given: set[str]) -> None:
    """Refuse keys the file gives that would have no effect on this kind."""
    if not kind.learned:
        for key in _LEARNED_ONLY:
            if key in given:
                raise ConfigError(f"{where}.{key}: only a learned kind reads it, and {kind.name} is "
                                  f"of type {kind.type}")
    if kind.type == "rfm":
        for key in ("rule_weights", "rule_scale"):
            if key in given:
                raise ConfigError(f"{where}.{key}: an rfm kind scores by its grades, not by rule points")
    if kind.learned and not (kind.model == "logistic" and kind.consolidate_every > 0):
        # OnlineModel: only a logistic model refits (a tree's or forest's consolidate_every is 0).
        for key in ("consolidate_every", "window", "consolidate_max"):
            if key in given and not (key == "consolidate_every" and kind.consolidate_every == 0):
                raise ConfigError(f"{where}.{key}: only a logistic model with consolidate_every above 0 "
                                  f"refits, and {key} sets its refits")
    if kind.only_on:
        for key in ("score_on", "rescore", "rescore_on"):
            if key in given:
                raise ConfigError(f"{where}.{key}: a kind with only_on scores at those events only "
                                  f"(not at score_on, nor rescored by other events)")
    if kind.learned and "trial_max" in given and 0 < kind.trial_max < kind.trial:
        raise ConfigError(f"{where}.trial_max: below trial ({kind.trial}), so no effect (the trial reaches "
                          "back at least trial labels; 0 means exactly trial)")


# Features the scoring core reads by name (scoring/core.py). A catalogue without them
# (defaults: false) left the settings that need them without effect, and said nothing.
_BUYER = ("orders_total",)
_SILENCE = ("days_since_last_active", "days_since_last_event")  # the first where there is one
_RFM = ("days_since_last_purchase", "orders_total", "spend_total")  # scoring.rfm.METRICS (loads River)


def _reads(where: str, catalog: Catalog, names: tuple[str, ...], either: bool = False) -> None:
    lacking = [n for n in names if n not in catalog.names]
    if lacking and (not either or len(lacking) == len(names)):
        also = f" (or {', '.join(names[1:])})" if either else ""
        raise ConfigError(f"{where}: reads the feature {lacking[0]!r}{also}, which this catalogue lacks "
                          "(declare it as the default catalogue does, in features/spec.py)")


def _event_keys(where: str, value: Any, with_action: bool) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where}: a list of events such as 'purchase:completed'")
    for item in items:
        etype, sep, action = item.partition(":")
        if etype not in ACTIONS or (sep and action not in ACTIONS[etype]) or (with_action and not sep):
            shown = ", ".join(f"{t}:{a}" for t in ACTIONS for a in sorted(ACTIONS[t]))
            raise ConfigError(f"{where}: unknown event {item!r} (use 'type:action' with one of: {shown}"
                              + ("" if with_action else "; or a type alone: web, purchase, campaign") + ")")
    return tuple(items)


def _bands(where: str, value: Any) -> Bands:
    bands = _build(Bands, where, _mapping(where, value))
    numbers = (bands.warm, bands.hot, bands.hysteresis)
    if not all(_number(v) for v in numbers):
        raise ConfigError(f"{where}: warm, hot and hysteresis are numbers")
    if not 0 <= bands.warm < bands.hot <= 100:
        raise ConfigError(f"{where}: needs 0 <= warm < hot <= 100, not warm {bands.warm}, hot {bands.hot}")
    if not 0 <= bands.hysteresis < bands.hot - bands.warm:
        raise ConfigError(f"{where}.hysteresis: at least 0 and below hot - warm")
    return bands


# --------------------------------------------------------------------------- policy

def _policy(values: Mapping[str, Any], kinds: list[ScoreKind], catalog: Catalog) -> Policy:
    pol = dict(values)
    _known_keys("policy", pol, {f.name for f in dataclasses.fields(Policy)})
    if "triggers" in pol:
        rules = pol["triggers"]
        if not isinstance(rules, list):
            raise ConfigError("policy.triggers: a list of trigger rules")
        pol["triggers"] = tuple(_trigger(f"policy.triggers[{i}]", t, kinds) for i, t in enumerate(rules))
        rule_names = [t.name for t in pol["triggers"]]
        for i, name in enumerate(rule_names):
            if name in rule_names[:i]:  # a customer's cooldowns are kept by rule name
                raise ConfigError(f"policy.triggers[{i}].name: {name!r} is given twice")
    policy = _build(Policy, "policy", pol)
    for key in ("min_change", "jump_points", "control_fraction"):
        value = getattr(policy, key)
        if not _number(value, least=0):
            raise ConfigError(f"policy.{key}: a number of at least 0, not {value!r}")
    if policy.control_fraction > 1:
        raise ConfigError("policy.control_fraction: a fraction from 0 to 1")
    _duration("policy.jump_window", policy.jump_window)
    _duration("policy.alert_cooldown", policy.alert_cooldown)
    if "triggers" not in values:  # the default rules, for the kinds that are on
        names = {k.name for k in kinds}
        policy = dataclasses.replace(policy, triggers=tuple(t for t in policy.triggers if t.kind in names))
    ticking = {k.name for k in kinds if k.tick_ms}
    for i, rule in enumerate(policy.triggers):
        where = f"policy.triggers[{i}]" if "triggers" in values else f"policy.triggers ({rule.name})"
        if rule.requires_purchase:
            _reads(f"{where}.requires_purchase", catalog, _BUYER)
        if rule.min_idle_days is not None:
            if rule.kind not in ticking:  # it fires at idle rescores, and this kind has none
                raise ConfigError(f"{where}.min_idle_days: {rule.kind} has no tick, so no idle rescores "
                                  "to fire at (give the kind a tick)")
            _reads(f"{where}.min_idle_days", catalog, _SILENCE, either=True)
    return policy


def _trigger(where: str, value: Any, kinds: list[ScoreKind]) -> TriggerRule:
    rule = _build(TriggerRule, where, _mapping(where, value))
    names = [k.name for k in kinds]
    if rule.kind not in names:
        raise ConfigError(f"{where}.kind: {rule.kind!r} is not a score kind of this config ({names})")
    # Nothing rises into cold but a first score: a cold rule fired for every new customer, then never.
    if rule.band is not None and rule.band not in ("warm", "hot"):
        raise ConfigError(f"{where}.band: warm or hot, not {rule.band!r} (a trigger fires when the band "
                          "rises into it)")
    if (rule.band is None) == (rule.min_idle_days is None):
        raise ConfigError(f"{where}: give either band or min_idle_days")
    if rule.min_idle_days is not None and not _number(rule.min_idle_days, least=0):
        raise ConfigError(f"{where}.min_idle_days: a number of days, not {rule.min_idle_days!r}")
    _flag(f"{where}.requires_purchase", rule.requires_purchase)
    _duration(f"{where}.cooldown", rule.cooldown)
    return rule


# --------------------------------------------------------------------------- catalogue

def _catalog(value: Any, base_dir: Path | None) -> Catalog:
    """``catalog:`` inline, or the path of a YAML file with the same keys (relative to ``base_dir``).

    ``features`` and ``derived`` are added to the default catalogue; with
    ``defaults: false`` they are the whole catalogue.
    """
    if value is None:
        return default_catalog()
    where = "catalog"
    if isinstance(value, str):
        where = f"catalog ({value})"
        try:
            value = _read_yaml((base_dir or Path()) / value)
        except ConfigError as exc:
            raise ConfigError(f"catalog: {exc}") from None
    data = _mapping(where, value)
    _known_keys(where, data, {"features", "derived", "defaults"})
    _flag(f"{where}.defaults", data.get("defaults", True))
    base = default_catalog() if data.get("defaults", True) else Catalog(())
    features = [_feature(f"{where}.features[{i}]", f)
                for i, f in enumerate(_list(f"{where}.features", data.get("features") or []))]
    derived = [_derived(f"{where}.derived[{i}]", d)
               for i, d in enumerate(_list(f"{where}.derived", data.get("derived") or []))]
    try:
        return Catalog(base.features + tuple(features), base.derived + tuple(derived))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _feature(where: str, value: Any) -> FeatureSpec:
    given = _mapping(where, value)
    if "agg" in given:  # first: the spec's own checks read it ("a window goes with count, ...")
        _choice(f"{where}.agg", given["agg"], get_args(Aggregation))
    spec = _build(FeatureSpec, where, given)
    _choice(f"{where}.agg", spec.agg, get_args(Aggregation))
    if "cap" in given and spec.agg != "distinct":
        raise ConfigError(f"{where}.cap: only a distinct feature keeps values (at most cap), not {spec.agg}")
    if "buckets" in given and not spec.window:
        raise ConfigError(f"{where}.buckets: the resolution of a window, and this feature has none")
    if not isinstance(spec.weights, Mapping) or not all(_number(w) for w in spec.weights.values()):
        raise ConfigError(f"{where}.weights: a mapping of action to a number")
    if isinstance(spec.cap, bool) or not isinstance(spec.cap, int) or spec.cap < 1:
        raise ConfigError(f"{where}.cap: a whole number of at least 1")
    if spec.default is not None and not _number(spec.default):
        raise ConfigError(f"{where}.default: a number, or null for 'no value yet'")
    for key in ("window", "half_life"):
        if getattr(spec, key) is not None:
            _duration(f"{where}.{key}", getattr(spec, key))
    return spec


def _derived(where: str, value: Any) -> DerivedSpec:
    d = dict(_mapping(where, value))
    if "inputs" in d:
        d["inputs"] = tuple(_list(f"{where}.inputs", d["inputs"]))
    if "prior" in d:
        d["prior"] = tuple(_list(f"{where}.prior", d["prior"]))
    spec = _build(DerivedSpec, where, d)
    _choice(f"{where}.kind", spec.kind, get_args(DerivedKind))
    if "prior" in d and spec.kind != "ratio":
        raise ConfigError(f"{where}.prior: only a ratio takes a prior, not {spec.kind}")
    if "default" in d and spec.kind in ("present", "after"):
        raise ConfigError(f"{where}.default: {spec.kind} is always 1.0 or 0.0, never without a value")
    if len(spec.prior) != 2 or not all(_number(v) for v in spec.prior):
        raise ConfigError(f"{where}.prior: two numbers (added to the numerator and the denominator)")
    if spec.default is not None and not _number(spec.default):
        raise ConfigError(f"{where}.default: a number, or null")
    need = {"ratio": 2, "after": 2, "present": 1, "days_since": 1, "mean_gap": 3}[spec.kind]
    if len(spec.inputs) != need:
        raise ConfigError(f"{where}.inputs: {spec.kind} takes {need} input(s), not {len(spec.inputs)}")
    return spec


# --------------------------------------------------------------------------- helpers

class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (the last one silently won)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> Any:
    """A file's YAML, never ``None``; every problem one line naming the file (and the line)."""
    # A directory (or an empty setting, which Path reads as ".") is a configuration mistake,
    # not a crash: say so as the YAML errors do.
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:  # PyYAML's own text spans lines, with "<unicode string>"
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        tab = " (indent with spaces, not tabs)" if "'\\t'" in str(exc.problem) else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {exc.problem}{tab}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    # Nothing in it (or comments only) is more likely a wrong or truncated file than a choice.
    if data is None:
        raise ConfigError(f"{path}: empty (a config states what differs from the defaults; {{}} for none)")
    return data


def _build(cls: type[T], where: str, values: Mapping[str, Any]) -> T:
    """``cls(**values)`` for a dataclass, its errors (unknown keys, wrong values) named by ``where``."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # T is always a dataclass here
    _known_keys(where, values, {f.name for f in fields if f.init})
    missing = sorted(f.name for f in fields if f.init and f.name not in values
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _known_keys(where: str, values: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(values) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping (key: value), not {type(value).__name__}")
    return value


def _list(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, not {type(value).__name__}")
    return list(value)


def _flag(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: true or false, not {value!r}")


def _choice(where: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: one of {', '.join(map(str, allowed))}, not {value!r}")


def _number(value: Any, least: float | None = None) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (least is None or value >= least)


def _duration(where: str, value: Any) -> int:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: a duration such as 7d, not {value!r}")
    try:
        return parse_duration_ms(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


__all__ = ["DEFAULT_SENSITIVE", "ConfigError", "ScoringConfig", "load_scoring_config",
           "scoring_config_from_dict"]
