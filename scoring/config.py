"""Scoring configuration from YAML: which kinds, their parameters, the alert policy.

Everything has a default; a file only says what differs. Two files are two
configurations a backtest can compare on the same events.

>>> cfg = scoring_config_from_dict({"lateness": "2h",
...     "kinds": {"purchase_propensity": {"model": "tree", "horizon": "14d"},
...               "rfm_segment": {"enabled": False}},
...     "policy": {"jump_points": 20}})
>>> [k.name for k in cfg.kinds], cfg.kinds[0].model, cfg.policy.jump_points, cfg.lateness_ms
(['purchase_propensity', 'churn_risk', 'campaign_response', 'engagement'], 'tree', 20, 7200000)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from features.spec import Catalog, default_catalog, load_catalog, parse_duration_ms
from scoring.kinds import Bands, ScoreKind, default_kinds
from scoring.triggers import Policy, TriggerRule

DEFAULT_SENSITIVE = ("age", "age_band", "gender", "ethnicity", "religion")


@dataclass(frozen=True)
class ScoringConfig:
    kinds: list[ScoreKind] = field(default_factory=default_kinds)
    policy: Policy = field(default_factory=Policy)
    lateness_ms: int = 3_600_000
    catalog: Catalog = field(default_factory=default_catalog)
    sensitive: tuple[str, ...] = DEFAULT_SENSITIVE
    name: str = "default"


def scoring_config_from_dict(data: dict[str, Any], name: str = "custom") -> ScoringConfig:
    """Build a config from plain data (the parsed YAML); unknown keys are errors."""
    allowed = {"lateness", "kinds", "policy", "catalog", "sensitive", "name"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)} (allowed: {sorted(allowed)})")
    kinds = []
    overrides: dict[str, dict[str, Any]] = dict(data.get("kinds") or {})
    known = {k.name for k in default_kinds()}
    for missing in set(overrides) - known:
        raise ValueError(f"unknown score kind {missing!r} (known: {sorted(known)})")
    for kind in default_kinds():
        o = dict(overrides.get(kind.name) or {})
        if not o.pop("enabled", True):
            continue
        if "bands" in o:
            o["bands"] = Bands(**o["bands"])
        for tuple_field in ("score_on", "only_on", "rescore_on", "outcome"):
            if tuple_field in o:
                o[tuple_field] = tuple(o[tuple_field])
        kinds.append(dataclasses.replace(kind, **o))
    pol = dict(data.get("policy") or {})
    if "triggers" in pol:
        pol["triggers"] = tuple(TriggerRule(**t) for t in pol["triggers"])
    catalog = load_catalog(data["catalog"]) if data.get("catalog") else default_catalog()
    return ScoringConfig(
        kinds=kinds,
        policy=Policy(**pol),
        lateness_ms=parse_duration_ms(data.get("lateness", "1h")),
        catalog=catalog,
        sensitive=tuple(data.get("sensitive", DEFAULT_SENSITIVE)),
        name=str(data.get("name", name)),
    )


def load_scoring_config(path: str | Path | None) -> ScoringConfig:
    """Read a YAML file (``None`` gives the defaults)."""
    if path is None:
        return ScoringConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return scoring_config_from_dict(data, name=Path(path).stem)
