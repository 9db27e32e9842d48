"""RFM grades and segments with quintile edges learned online from the stream.

Recency (days since last purchase), frequency (orders) and monetary value
(spend) each get a 1-5 grade against quintile edges that River's P-square
sketches (:class:`river.stats.Quantile`) learn as customers are scored; the
(R, F) pair names the segment marketers use.

>>> g = RfmGrader()
>>> for i in range(1, 101):
...     g.observe({"days_since_last_purchase": float(i), "orders_total": float(i % 7 + 1),
...                "spend_total": float(i * 10)})
>>> g.grade({"days_since_last_purchase": 2.0, "orders_total": 7.0, "spend_total": 990.0})
(5, 5, 5, 'champions')
>>> g.grade({"days_since_last_purchase": 95.0, "orders_total": 1.0, "spend_total": 20.0})[3]
'hibernating'
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping

from river import stats

QUINTILES = (0.2, 0.4, 0.6, 0.8)
METRICS = {"r": "days_since_last_purchase", "f": "orders_total", "m": "spend_total"}


def segment(r: int, f: int) -> str:
    """The classic R x F segment map.

    >>> segment(5, 1), segment(1, 5), segment(2, 2)
    ('new', 'cant_lose', 'about_to_sleep')
    """
    if r >= 4 and f >= 4:
        return "champions"
    if r == 5 and f == 1:
        return "new"
    if r >= 3 and f >= 3:
        return "loyal"
    if r >= 4:
        return "promising"
    if r == 3:
        return "need_attention"
    if f >= 4:
        return "cant_lose"
    if f == 3:
        return "at_risk"
    return "about_to_sleep" if r == 2 else "hibernating"


class RfmGrader:
    """Online quintile edges for R, F and M (five P-square sketches per metric).

    The core grades a customer against the edges, then observes it, so a grade never
    depends on the customer's own values. Before any observation every edge is 0: any
    recency above 0 grades R 1, any orders or spend grade F and M 5. A vector without a
    recency (never bought) is not observed.

    >>> g = RfmGrader()
    >>> g.grade({"days_since_last_purchase": 3.0, "orders_total": 2.0, "spend_total": 50.0})
    (1, 5, 5, 'cant_lose')
    >>> g.observe({"days_since_last_purchase": None, "orders_total": 0.0}); g.seen
    0
    """

    def __init__(self) -> None:
        self.sketches = {m: [stats.Quantile(q) for q in QUINTILES] for m in METRICS}
        self.seen = 0

    def observe(self, vector: Mapping[str, float | None]) -> None:
        values = {m: vector.get(name) for m, name in METRICS.items()}
        for m, sketch in self.sketches.items():
            value = values[m]
            if value is None:
                return
            for s in sketch:
                s.update(value)
        self.seen += 1

    def snapshot(self) -> bytes:
        """The sketches as bytes (kept with the shard's state, see :class:`scoring.state.StateStore`).

        >>> g = RfmGrader()
        >>> g.observe({"days_since_last_purchase": 3.0, "orders_total": 1.0, "spend_total": 9.0})
        >>> RfmGrader.restore(g.snapshot()).seen
        1
        """
        return pickle.dumps((self.sketches, self.seen), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, blob: bytes) -> RfmGrader:
        grader = cls()
        grader.sketches, grader.seen = pickle.loads(blob)  # noqa: S301 - our own store's bytes
        return grader

    def _edges(self, m: str) -> list[float]:
        return [s.get() or 0.0 for s in self.sketches[m]]

    def grade(self, vector: Mapping[str, float | None]) -> tuple[int, int, int, str]:
        """(R, F, M, segment); higher is better on every axis (see the module example)."""
        r_val = vector.get(METRICS["r"])
        f_val = vector.get(METRICS["f"]) or 0.0
        m_val = vector.get(METRICS["m"]) or 0.0
        r = 1 if r_val is None else 5 - sum(1 for e in self._edges("r") if r_val > e)
        f = 1 + sum(1 for e in self._edges("f") if f_val > e)
        m = 1 + sum(1 for e in self._edges("m") if m_val > e)
        return r, f, m, segment(r, f)
