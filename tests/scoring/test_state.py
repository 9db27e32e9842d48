"""Scoring records as stored: the JSON layout stays what earlier workers wrote and read."""

from __future__ import annotations

from scoring.state import CustomerScoring, KindState, Pending


def _record() -> CustomerScoring:
    return CustomerScoring(
        {"churn_risk": KindState(value=12.5, band="cold", scored_at=5)},
        [Pending("churn_risk", "churn_risk:c1:5", 5, 9, {"orders_total": 0.69, "x_missing": 1.0}, 0.2, "model")],
    )


def test_layout_is_the_dataclass_layout() -> None:
    # Written by workers before examples cached their JSON; a record must read and write the same.
    stored = (
        b'{"kinds":{"churn_risk":{"value":12.5,"band":"cold","scored_at":5,"registered_at":null,'
        b'"next_tick":null,"alerted_at":null,"triggered":{},"history":[]}},"pending":[{"kind":"churn_risk",'
        b'"example_id":"churn_risk:c1:5","t_ms":5,"end_ms":9,"x":{"orders_total":0.69,"x_missing":1.0},'
        b'"prob":0.2,"source":"model","match":null,"outcome":false,"rule_prob":0.0}]}'
    )
    assert _record().to_json() == stored
    assert CustomerScoring.from_json(stored) == _record()
    assert CustomerScoring.from_json(stored).to_json() == stored


def test_an_outcome_is_encoded_after_the_example_was() -> None:
    rec = _record()
    before = rec.to_json()
    rec.pending[0].outcome = True
    after = rec.to_json()
    assert after == before.replace(b'"outcome":false', b'"outcome":true')
    assert CustomerScoring.from_json(after).pending[0].outcome is True
    rec.pending.append(Pending("churn_risk", "e2", 6, 10, {}, 0.3, "cold_start"))
    assert CustomerScoring.from_json(rec.to_json()) == rec


def test_an_example_keeps_the_event_it_was_scored_at() -> None:
    rec = _record()
    rec.pending.append(Pending("churn_risk", "churn_risk:c1:6", 6, 10, {}, 0.3, "model", event_id="e-6"))
    stored = rec.to_json()
    assert stored.count(b'"event_id"') == 1 and b'"event_id":"e-6"' in stored  # the idle one: none
    back = CustomerScoring.from_json(stored)
    assert back == rec and [p.event_id for p in back.pending] == [None, "e-6"]
