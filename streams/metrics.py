"""Prometheus metrics of a worker, on its own registry (served by ``GET /metrics``).

Each :class:`Metrics` owns a :class:`prometheus_client.CollectorRegistry`, so
two apps in one process (tests) never collide and nothing leaks into the
global default registry. No label ever carries a customer id: labels are
topics, partitions, score kinds and error stages only.

Latency:

- ``leadpulse_batch_seconds``: wall time to process one batch (decode, Redis,
  scoring, publishing and waiting for the broker's acks);
- ``leadpulse_event_to_score_seconds``: from an event's Kafka timestamp to the
  moment the score it caused was acknowledged by the broker. Observed only for
  events stamped within the last hour, so a replay of last year (whose Kafka
  timestamps are the events' own times) does not flood the histogram.

:class:`LatencyWindow` keeps the most recent exact samples for percentiles
(the benchmark reads them from ``GET /latency``).

>>> m = Metrics()
>>> m.count({"in": 3, "invalid": 1, "duplicates": 1, "scores_published": 2}, topic_counts={"t": 3})
>>> m.batch_seconds.observe(0.01)
>>> text = m.render().decode()
>>> "leadpulse_events_in_total{topic=\\"t\\"} 3.0" in text, "leadpulse_events_invalid_total 1.0" in text
(True, True)
>>> w = LatencyWindow(100)
>>> w.extend([0.01, 0.02, 0.03]); w.summary()["p50_ms"]
20.0
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

# Sent as a header: aiohttp refuses a charset in ``content_type=`` and, given the type alone,
# sent none (the text format's media type names utf-8).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LATENCY_S = 3600.0

# Live, an event reaches its score in tens to hundreds of milliseconds (p50 87 ms, p99 137 ms
# measured at 500 events/s): the buckets are dense there, so histogram_quantile() interpolates
# within 25-50 ms instead of across 100-250 ms (which put that p99 at about 245 ms).
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Core / pipeline count name -> counter attribute.
_COUNTED = {
    "invalid": "invalid",
    "duplicates": "duplicates",
    "late": "late",
    "shard_changes": "shard_changes",
    "scores_published": "scores",
    "alerts": "alerts",
    "triggers": "triggers",
    "labels": "labels",
    "drift": "drift",
}


class Metrics:
    """All counters, histograms and gauges of one worker."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.events_in = Counter("leadpulse_events_in", "Input records consumed", ["topic"], registry=r)
        self.invalid = Counter("leadpulse_events_invalid", "Records dead-lettered (invalid or mis-keyed)", registry=r)
        self.duplicates = Counter("leadpulse_events_duplicate", "Events already applied (redelivery, duplicate id)", registry=r)
        self.late = Counter(
            "leadpulse_events_late", "Events older than the allowed lateness, never applied (not applied now)",
            registry=r,
        )
        self.shard_changes = Counter(
            "leadpulse_customer_shard_changes",
            "Customers whose events came on another input partition than before (taken over by it)", registry=r,
        )
        self.scores = Counter("leadpulse_scores_published", "Score changes published", registry=r)
        self.alerts = Counter("leadpulse_alerts", "Alerts published", registry=r)
        self.triggers = Counter("leadpulse_triggers", "Nurturing triggers published", registry=r)
        self.labels = Counter("leadpulse_labels", "Matured examples published to the labels topic", registry=r)
        self.drift = Counter("leadpulse_drift", "Drift events published", registry=r)
        self.labels_learned = Counter("leadpulse_labels_learned", "Labels learned by the central learner", registry=r)
        self.snapshots = Counter("leadpulse_model_snapshots", "Model snapshots saved by the learner", registry=r)
        self.model_swaps = Counter("leadpulse_model_swaps", "Models hot-swapped from a newer snapshot", registry=r)
        self.errors = Counter("leadpulse_errors", "Retried or fatal errors", ["stage"], registry=r)
        self.redis_data_lost = Counter(
            "leadpulse_redis_data_lost", "Times Redis was found emptied (its epoch key gone or replaced)", registry=r
        )
        self.batch_seconds = Histogram(
            "leadpulse_batch_seconds", "Processing time of one input batch", registry=r, buckets=_BATCH_BUCKETS
        )
        self.batch_events = Histogram(
            "leadpulse_batch_events", "Records per input batch", registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
        )
        self.event_to_score = Histogram(
            "leadpulse_event_to_score_seconds", "Event Kafka timestamp to score published (acked)",
            registry=r, buckets=_LATENCY_BUCKETS,
        )
        self.lag = Gauge(
            "leadpulse_consumer_lag",
            "Records of an assigned input partition not processed yet (high watermark minus processed offset)",
            ["topic", "partition"], registry=r,
        )
        self.held = Gauge("leadpulse_events_held", "Valid events held for event-time alignment", registry=r)
        self.held_dropped = Counter(
            "leadpulse_events_held_dropped",
            "Held events dropped at a rebalance or shutdown (unacked: Kafka delivers them again)",
            registry=r,
        )
        self.model_version = Gauge("leadpulse_model_version", "Labels learned by the model in use", ["kind"], registry=r)
        self.last_batch = Gauge("leadpulse_last_batch_timestamp_seconds", "Wall time of the last processed batch", registry=r)

    def count(self, counts: Mapping[str, int], topic_counts: Mapping[str, int] | None = None) -> None:
        """Add a batch's counts (the pipeline's and the core's)."""
        for topic, n in (topic_counts or {}).items():
            self.events_in.labels(topic=topic).inc(n)
        for name, attr in _COUNTED.items():
            n = counts.get(name, 0)
            if n:
                getattr(self, attr).inc(n)

    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag series with ``{(topic, partition): records}`` (the partitions held now).

        Set whole at each scrape, so a partition that moved to another worker leaves this
        one's output instead of repeating its last value beside the new owner's.

        >>> m = Metrics()
        >>> m.set_lag({("t", 0): 5, ("t", 1): 0}); m.set_lag({("t", 1): 2})
        >>> [line for line in m.render().decode().splitlines() if line.startswith("leadpulse_consumer_lag{")]
        ['leadpulse_consumer_lag{partition="1",topic="t"} 2.0']
        """
        self.lag.clear()
        for (topic, partition), n in lag.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(n)

    def observe_event_to_score(self, event_ts_ms: Iterable[int], now: float | None = None) -> list[float]:
        """Observe latencies of events stamped within the last hour; returns them (seconds)."""
        now = time.time() if now is None else now
        out = []
        for ts in event_ts_ms:
            lat = now - ts / 1000.0
            if 0.0 <= lat <= MAX_LATENCY_S:
                self.event_to_score.observe(lat)
                out.append(lat)
        return out

    def render(self) -> bytes:
        """Prometheus text exposition format, without the ``*_created`` series.

        prometheus_client adds a ``<name>_created`` gauge (the creation time) beside every
        counter and histogram: a series that never moves, doubling what is scraped.

        >>> m = Metrics()
        >>> m.scores.inc()
        >>> text = m.render().decode()
        >>> "leadpulse_scores_published_total 1.0" in text, "_created" in text
        (True, False)
        """
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """A registry's metric families with the ``_created`` samples left out."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():  # fresh objects on each collect: ours to edit
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class LatencyWindow:
    """The last ``size`` latency samples (seconds), for exact percentiles."""

    def __init__(self, size: int = 200_000) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.first_at: float | None = None  # first batch done (it may have held every event)
        self.last_at: float | None = None
        # The first batch that finished events, and how many: a backlog's start-up, while the
        # event-time alignment waits for every input partition to deliver, ends there.
        self.first_events_at: float | None = None
        self.first_events = 0
        self.events = 0

    def mark(self, n_events: int, now: float | None = None) -> None:
        """Count processed events and remember when the first and last were done.

        >>> w = LatencyWindow()
        >>> w.mark(0, now=10.0); w.mark(500, now=12.0); w.mark(500, now=13.0)
        >>> w.summary()["first_at"], w.summary()["first_events_at"], w.summary()["steady_events_per_s"]
        (10.0, 12.0, 500.0)
        """
        now = time.time() if now is None else now
        if self.first_at is None:
            self.first_at = now
        if n_events and self.first_events_at is None:
            self.first_events_at, self.first_events = now, n_events
        self.last_at = now
        self.events += n_events

    def extend(self, latencies: Iterable[float]) -> None:
        self.samples.extend(latencies)

    def _steady_rate(self) -> float | None:
        # Events after the first batch that finished any, over the time since it finished.
        if self.first_events_at is None or self.last_at is None or self.last_at <= self.first_events_at:
            return None
        return round((self.events - self.first_events) / (self.last_at - self.first_events_at), 1)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.samples)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[round(q * (len(ordered) - 1))] * 1000.0, 3)

        return {
            "events": self.events,
            "first_at": self.first_at,
            "first_events_at": self.first_events_at,
            "last_at": self.last_at,
            "steady_events_per_s": self._steady_rate(),
            "samples": len(ordered),
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1] * 1000.0, 3) if ordered else None,
        }


SHARD_CHANGES_LOG_EVERY_S = 60.0  # at most one warning a minute
SHARD_CHANGES_SHOWN_S = 3600.0  # /health shows the last change this long

SHARD_CHANGES_WARNING = (
    "%d customer(s) had events on another input partition than their earlier ones (%d since start; "
    "counted in leadpulse_customer_shard_changes_total, shown on /health): the partition that got "
    "them took each customer over. Many at once, then none: the input topics' partition count was "
    "increased, and customers hashed to other partitions move once; it settles. If it goes on, a "
    "producer does not co-partition the inputs by customer: another partitioner (librdkafka clients "
    "default to CRC32, set partitioner=murmur2_random), another message key than customer_id, or an "
    "input topic with another partition count than the others. Meanwhile two partitions write "
    "these customers' scoring records (updates lost, idle rescores from both)"
)


class ShardChanges:
    """Customers whose events came on another shard than before (``shard_changes`` of a
    batch's counts, see :meth:`scoring.core.ScoringCore._take_over`): when to warn, and what
    ``/health`` shows. No customer id is kept: only counts and times.

    >>> now = [1000.0]
    >>> sc = ShardChanges(clock=lambda: now[0])
    >>> sc.note(3) is not None, sc.note(2)  # the first warns at once, the next waits a minute
    (True, None)
    >>> now[0] += 60; msg = sc.note(1); msg.split(" customer")[0], "(6 since start" in msg
    ('3', True)
    >>> sc.recent(), (now.__setitem__(0, now[0] + 3601), sc.recent())[1]
    (True, False)
    """

    def __init__(
        self, clock: Any = time.time, log_every_s: float = SHARD_CHANGES_LOG_EVERY_S,
        shown_s: float = SHARD_CHANGES_SHOWN_S,
    ) -> None:
        self.clock = clock
        self.log_every_s = log_every_s
        self.shown_s = shown_s
        self.total = 0
        self.last_at: float | None = None  # wall time of the last batch with a change
        self._unlogged = 0
        self._logged_at: float | None = None

    def note(self, n: int) -> str | None:
        """Count ``n`` changes; the warning to log now (None: one was logged within the interval)."""
        if n <= 0:
            return None
        now = self.clock()
        self.total += n
        self.last_at = now
        self._unlogged += n
        if self._logged_at is not None and now - self._logged_at < self.log_every_s:
            return None
        self._logged_at = now
        told, self._unlogged = self._unlogged, 0
        return SHARD_CHANGES_WARNING % (told, self.total)

    def recent(self) -> bool:
        """Whether the last change was within ``shown_s``."""
        return self.last_at is not None and self.clock() - self.last_at <= self.shown_s
