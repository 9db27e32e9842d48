"""RFM grades and segments: quintiles of the customer base, kept up to date from the stream.

Recency (the day of the last purchase), frequency (orders) and monetary value
(spend) each get a 1-5 grade by the customer's percentile rank among the
shard's buying customers, each counted once with their current values; the
(R, F) pair names the segment marketers use. That is the textbook RFM (grades
by quintile of today's customer base), kept exactly by moving each customer
between histogram bins as they buy, so grades are about 20% each.

>>> g = RfmGrader()
>>> day = 86_400_000
>>> for i in range(100):  # customer i last bought on day i, made 1 + i % 7 orders, spent 10 i
...     _ = g.move(None, RfmGrader.key({"days_since_last_purchase": 0.0, "orders_total": float(i % 7 + 1),
...                                     "spend_total": float(i * 10 + 10)}, i * day))
>>> g.grade({"days_since_last_purchase": 2.0, "orders_total": 7.0, "spend_total": 990.0}, 100 * day)
(5, 5, 5, 'champions')
>>> g.grade({"days_since_last_purchase": 95.0, "orders_total": 1.0, "spend_total": 20.0}, 100 * day)[3]
'hibernating'
"""

from __future__ import annotations

import bisect
import math
import pickle
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

METRICS = {"r": "days_since_last_purchase", "f": "orders_total", "m": "spend_total"}
DAY_MS = 86_400_000
# Spend is counted in bins 2.5% wide (a log scale): exact enough for quintile grades, and a
# shard's histogram stays a few hundred bins whatever the currency or the range.
SPEND_BINS_PER_E = 40
NO_SPEND = -(10**6)  # the bin of zero or negative spend (refunds), below every other
STALE_SHARE = 100  # ranks are re-read once more than 1/STALE_SHARE of the base moved (at once below 100)

RfmKey = tuple[int, int, int]


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


def spend_bin(spend: float) -> int:
    """The histogram bin of a spend total (2.5% wide; all of zero and below share one).

    >>> spend_bin(100.0) == spend_bin(100.4), spend_bin(100.0) < spend_bin(110.0), spend_bin(-5.0)
    (True, True, -1000000)
    """
    return round(math.log(spend) * SPEND_BINS_PER_E) if spend > 0.005 else NO_SPEND


class _Ranks:
    """One metric's sorted bins and the count below each (a snapshot of its histogram)."""

    __slots__ = ("below", "bins", "total")

    def __init__(self, counts: Counter[int]) -> None:
        self.bins = sorted(k for k, n in counts.items() if n > 0)
        self.below = [0]
        for k in self.bins:
            self.below.append(self.below[-1] + counts[k])
        self.total = self.below[-1]

    def grade(self, key: int, ties_up: bool = False) -> int:
        """1-5 by the share of customers below ``key``: ties share the grade of the lowest
        of them, or with ``ties_up`` of the highest.

        >>> r = _Ranks(Counter({1: 60, 2: 20, 5: 20}))  # 60% bought once
        >>> r.grade(1), r.grade(2), r.grade(5), r.grade(9), r.grade(1, ties_up=True)
        (1, 4, 5, 5, 3)
        """
        if not self.total:
            return 3
        at = bisect.bisect_left(self.bins, key)
        if not ties_up:
            return min(5, 1 + int(5 * self.below[at] / self.total))
        if at < len(self.bins) and self.bins[at] == key:
            at += 1
        return max(1, math.ceil(5 * self.below[at] / self.total))


class RfmGrader:
    """The buying customers of a shard, counted by last purchase day, orders and spend bin.

    Each customer is counted once, under the :meth:`key` it was last graded with (kept in
    its scoring record): :meth:`move` takes it from its old key to its new one, so the
    histograms are the base as it is now. Customers who stopped buying keep their old
    day and grade R 1, as in a snapshot RFM; never-buyers are not counted. Moves add up in
    any order, so shards' or workers' moves can be applied in batches.

    >>> g = RfmGrader()
    >>> g.grade({"days_since_last_purchase": 3.0, "orders_total": 2.0, "spend_total": 50.0}, DAY_MS * 9)
    (3, 3, 3, 'loyal')
    >>> g.move(None, None), g.seen  # never bought: nothing to count
    (False, 0)
    """

    def __init__(self) -> None:
        self.counts: dict[str, Counter[int]] = {m: Counter() for m in METRICS}
        self.seen = 0  # moves made: tells a changed grader from the one last saved
        self._ranks: dict[str, _Ranks] | None = None
        self._moves_since_ranks = 0

    @staticmethod
    def key(vector: Mapping[str, float | None], ts: int) -> RfmKey | None:
        """Where a customer with these features at ``ts`` is counted (None: never bought).

        >>> RfmGrader.key({"days_since_last_purchase": 1.5, "orders_total": 2.0, "spend_total": 0.0}, 3 * DAY_MS)
        (1, 2, -1000000)
        """
        since = vector.get(METRICS["r"])
        if since is None:
            return None
        day = (ts - round(since * DAY_MS)) // DAY_MS
        orders = round(vector.get(METRICS["f"]) or 0.0)
        return int(day), int(orders), spend_bin(vector.get(METRICS["m"]) or 0.0)

    def move(self, old: RfmKey | None, new: RfmKey | None) -> bool:
        """Count a customer under ``new`` instead of ``old`` (either None); whether that changed anything."""
        if old == new:
            return False
        for keys, sign in ((old, -1), (new, 1)):
            if keys is None:
                continue
            for counts, k in zip(self.counts.values(), keys, strict=True):
                n = counts[k] + sign
                if n:
                    counts[k] = n  # below 0 only for a while: a batch's moves come in any order
                else:
                    del counts[k]
        self.seen += 1
        self._moves_since_ranks += 1
        return True

    def grade(self, vector: Mapping[str, float | None], ts: int) -> tuple[int, int, int, str]:
        """(R, F, M, segment) at ``ts``; higher is better on every axis (see the module example).

        A customer who never bought grades R 1 (F and M as their zero orders and spend rank).
        """
        key = self.key(vector, ts)
        ranks = self._current_ranks()
        if key is None:
            f = ranks["f"].grade(round(vector.get(METRICS["f"]) or 0.0))
            return 1, f, ranks["m"].grade(spend_bin(vector.get(METRICS["m"]) or 0.0)), segment(1, f)
        # Ties take the grade that names them: whoever bought on the latest day is the most
        # recent (R 5) however many did, one-time buyers (often half a base) the least
        # frequent (F 1), and the first buyer of an empty base is "new".
        r = ranks["r"].grade(key[0], ties_up=True)
        f, m = ranks["f"].grade(key[1]), ranks["m"].grade(key[2])
        return r, f, m, segment(r, f)

    @contextmanager
    def exact(self) -> Iterator[None]:
        """Grade against the counts as they are now, then go on as before (a report's grades).

        Between moves the grades use ranks re-read once more than 1/STALE_SHARE of the base
        has moved since: in a stream that is within a grade's noise, in a report of every
        customer at one moment (``--customers-out``) it showed as the odd customer a grade off
        the base's own quintiles. The ranks in use and their age are put back after.

        >>> g = RfmGrader()
        >>> for day in range(1000):  # a buyer a day: 1,000 customers
        ...     _ = g.move(None, (day, 1, 100))
        >>> v = {"days_since_last_purchase": 0.0, "orders_total": 1.0, "spend_total": 100.0}
        >>> g.grade(v, 800 * DAY_MS)[0]  # 801 of 1,000 bought on day 800 or before
        5
        >>> for day in range(10):  # ten of the earliest buy again: 1% of the base, ranks kept
        ...     _ = g.move((day, 1, 100), (1000 + day, 2, 200))
        >>> g.grade(v, 800 * DAY_MS)[0], g.grade(v, 800 * DAY_MS)[0]
        (5, 5)
        >>> with g.exact():  # 791 of 1,000 now
        ...     g.grade(v, 800 * DAY_MS)[0]
        4
        >>> g.grade(v, 800 * DAY_MS)[0]  # the stream's ranks as they were
        5
        """
        saved = (self._ranks, self._moves_since_ranks)
        self._ranks, self._moves_since_ranks = self._read_ranks(), 0
        try:
            yield
        finally:
            self._ranks, self._moves_since_ranks = saved

    def _current_ranks(self) -> dict[str, _Ranks]:
        ranks = self._ranks
        if ranks is None or self._moves_since_ranks > ranks["f"].total // STALE_SHARE:
            ranks = self._ranks = self._read_ranks()
            self._moves_since_ranks = 0
        return ranks

    def _read_ranks(self) -> dict[str, _Ranks]:
        return {name: _Ranks(c) for name, c in self.counts.items()}

    def snapshot(self) -> bytes:
        """The histograms as bytes (kept with the shard's state, see :class:`scoring.state.StateStore`).

        >>> g = RfmGrader()
        >>> _ = g.move(None, (3, 1, 184))
        >>> h = RfmGrader.restore(g.snapshot()); h.seen, dict(h.counts["r"])
        (1, {3: 1})
        """
        # The ranks graded against go too: a restored grader grades as the one saved would have.
        state = (self.counts, self.seen, self._ranks, self._moves_since_ranks)
        return pickle.dumps(("histograms", *state), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, blob: bytes) -> RfmGrader:
        grader = cls()
        saved = pickle.loads(blob)  # noqa: S301 - our own store's bytes
        # Graders saved before the histograms held P-square sketches: start the base afresh
        # (customers are counted again as they are graded).
        if saved[0] == "histograms":
            _, grader.counts, grader.seen, grader._ranks, grader._moves_since_ranks = saved
        return grader


__all__ = ["METRICS", "RfmGrader", "RfmKey", "segment", "spend_bin"]
