"""Feature specs refuse, when declared, what would crash or mislead at the first event."""

from __future__ import annotations

from typing import Any

import pytest

from features.spec import Catalog, DerivedSpec, FeatureSpec, default_catalog


@pytest.mark.parametrize(("kwargs", "message"), [
    # Each of these crashed with a traceback at the first event (or at start), or was silent.
    ({"name": "x", "source": 5, "agg": "count"}, "x: source is text such as 'web:add_to_cart', not 5"),
    ({"name": 5, "source": "web", "agg": "count"}, "5: names are lower_snake_case"),
    ({"name": "x", "source": "web", "agg": "count", "window": "7d", "buckets": 12.5},
     "x: buckets must be a whole number from 1 to 100"),
    ({"name": "x", "source": "web", "agg": "count", "window": "0d"}, "x: window must be longer than 0"),
    ({"name": "x", "source": "web", "agg": "count", "window": 7}, "x: window is a duration such as 7d, not 7"),
    ({"name": "x", "source": "web", "agg": "decayed", "half_life": "0h"}, "x: half_life must be longer than 0"),
    ({"name": "x", "source": "web:add_to_cart", "agg": "count", "weights": {"add_to_chart": 5}},
     "x: weights for actions its source never has: ['add_to_chart']"),
    ({"name": "x", "source": "web", "agg": "count", "weights": 5}, "x: weights map actions to numbers"),
    ({"name": "x", "source": "web", "agg": "sum", "field": ["a"]}, "x: field is the name of an event field"),
    # model_input drops raw times by their name: an epoch in ms would be a model input.
    ({"name": "last_login", "source": "web:login", "agg": "last_time"},
     "last_login: a first_time or last_time feature's name ends in _at"),
    ({"name": "logins_at", "source": "web:login", "agg": "count"}, "logins_at: only a first_time or last_time"),
    # These read 0.0 with nothing to count: a default was ignored without a word.
    ({"name": "x", "source": "web", "agg": "count", "window": "7d", "default": None},
     "x: default has no effect on a windowed count"),
    ({"name": "x", "source": "web", "agg": "sum", "field": "s", "window": "7d", "default": -1},
     "x: default has no effect on a windowed sum"),
    ({"name": "x", "source": "web", "agg": "decayed", "half_life": "7d", "default": None},
     "x: default has no effect on a decayed sum"),
    ({"name": "x", "source": "web", "agg": "distinct", "field": "d", "window": "7d", "default": -1},
     "x: default has no effect on a distinct count"),
])
def test_a_feature_that_cannot_work_is_refused_when_declared(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        FeatureSpec(**kwargs)
    assert message in str(info.value), str(info.value)


def test_default_is_taken_where_it_is_read() -> None:
    for kwargs in ({"agg": "count", "default": None}, {"agg": "sum", "field": "s", "default": -1.0},
                   {"agg": "max", "field": "s", "window": "7d", "default": None},
                   {"agg": "min", "field": "s", "default": None}, {"agg": "count", "window": "7d", "default": 0}):
        assert FeatureSpec("x", "web", **kwargs).default == kwargs["default"]
    assert default_catalog().names  # the default catalogue declares none where it has no effect


def test_weights_of_an_any_source_may_name_any_action() -> None:
    spec = FeatureSpec("touches", "any", "decayed", half_life="7d", weights={"clicked": 3, "completed": 5})
    assert spec.half_life_ms == 7 * 86_400_000


@pytest.mark.parametrize(("derived", "message"), [
    (("days_since_orders", "days_since", ("orders_total",)),
     "days_since_orders: days_since takes a time feature (first_time or last_time) as input 1, "
     "not 'orders_total'"),
    (("spend_per_day", "ratio", ("spend_total", "first_seen_at")),
     "spend_per_day: ratio takes a number, not a time, as input 2"),
    (("cart_after", "after", ("last_add_to_cart_at", "orders_total")), "as input 2"),
    (("Gap Days", "present", ("orders_total",)), "Gap Days: names are lower_snake_case"),
    (("bought_at", "present", ("orders_total",)), "bought_at: a derived feature is never a time"),
])
def test_a_derived_feature_over_the_wrong_inputs_is_refused(derived: tuple[Any, ...], message: str) -> None:
    base = default_catalog()
    with pytest.raises(ValueError) as info:
        Catalog(base.features, (*base.derived, DerivedSpec(*derived)))
    assert message in str(info.value), str(info.value)
