"""The worker's scoring side, in the worker's process or in a child process of its own.

A live worker is bound by one core: Faust's event loop (fetching, acking,
publishing) and the scoring core (decoding, Redis, models) share one Python
interpreter lock. :class:`ScorerProcess` runs the same :class:`Scorer` in a
child process, so the loop and the core each get a CPU; the worker talks to it
over a pipe. The child scores one batch at a time, in order; the worker sends each
batch as soon as it has it (:meth:`ScorerProcess.submit`), so the next is waiting
when one is done.

One call per batch crosses the pipe: raw Kafka records in, the records to publish
out. The worker aligns its input topics by event time before that call, reading each
record's time alone (:func:`features.events.event_time_ms`); the scoring process
decodes and validates. So the worker's loop never waits for a scoring process to
decode a batch before taking the next one: the worker's process is the busier of
the two (Faust's loop, publishing), and with a round trip to decode first, both
processes idled half of the time waiting on each other.

>>> from streams.settings import Settings
>>> isinstance(Settings(scorer_process=False).scorer_process, bool)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from features.engine import TIME_FIELD, FeatureEngine
from features.events import ms_to_iso
from features.redis_store import RedisFeatureStore
from scoring.config import load_scoring_config
from scoring.core import ModelRegistry, Outputs, ScoringCore
from streams.child import ChildDied, ChildProcess
from streams.pipeline import BatchOutput, Incoming, ModelRefresher, OutRecord, Pipeline
from streams.redis_state import RedisStateStore
from streams.settings import Settings

Position = tuple[str, int, int]  # (topic, partition, offset): Incoming.position

__all__ = ["Position", "Scorer", "ScorerDied", "ScorerPool", "ScorerProcess"]


class Scorer:
    """Decode and score batches, hot-swap models, answer customer queries (Redis-backed)."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        scfg = load_scoring_config(s.scoring_config)
        self.redis = s.redis_client()
        ttl = s.redis_ttl_days * 86_400
        self.features = RedisFeatureStore(
            self.redis, lateness_ms=scfg.lateness_ms, ttl_seconds=ttl, prefix=s.redis_prefix,
            cache_size=s.redis_state_cache,
        )
        self.state = RedisStateStore(self.redis, s.redis_prefix, ttl, cache_size=s.redis_state_cache)
        self.engine = FeatureEngine(scfg.catalog, scfg.sensitive)
        registry = ModelRegistry(scfg.kinds, scfg.sensitive)
        self.core = ScoringCore(
            self.engine, self.features, self.state, registry, kinds=scfg.kinds, policy=scfg.policy,
            lateness_ms=scfg.lateness_ms, learn_inline=False, sensitive=scfg.sensitive,
        )
        self.pipeline = Pipeline(
            self.core, s.topics, max_event_bytes=s.max_event_bytes,
            require_key_match=s.require_key_match, source=s.app_id, keep_late=s.keep_late,
            max_record_bytes=s.producer_max_request_bytes,
            max_ahead_ms=scfg.lateness_ms,  # live: an event ahead of the wall clock by more is dead-lettered
        )
        self.refresher = ModelRefresher(registry, self.state, s.model_refresh_s)
        # The shards already scored of the batch last attempted: a retry of that batch after
        # an error (Redis away) reuses them, so their outputs are not lost as duplicates.
        self._attempt: tuple[tuple[Position, ...], dict[str, Outputs]] | None = None

    def score(self, messages: Sequence[Incoming]) -> tuple[BatchOutput, dict[str, int]]:
        """Decode and score a batch: dead letters first, then each shard's records; also
        returns the model versions.

        Hot-swaps newer models first (at most every ``model_refresh_s``). Called again
        with the same records after an error (Redis away), it does not apply again the
        shards it had applied, so their outputs are not lost as duplicates.
        """
        self.refresh()
        batch = tuple(m.position for m in messages)
        if self._attempt is None or self._attempt[0] != batch:
            self._attempt = (batch, {})
        out = self.pipeline.process(messages, done=self._attempt[1])
        self._attempt = None
        return out, self.refresher.versions()

    def refresh(self, force: bool = False) -> list[str]:
        """Hot-swap models whose snapshot is newer (at most every ``model_refresh_s``)."""
        return self.refresher.maybe_refresh(force)

    def customer_scores(self, customer_id: str) -> dict[str, Any] | None:
        """Last published scores, and each one recomputed now with its top reasons."""
        current = self.core.current(customer_id)
        if not current:
            return None
        state = self.features.read([customer_id])[customer_id]
        as_of = int(state.get(TIME_FIELD, 0))
        if state and as_of:
            # RFM is left at its published grade: the counts loaded here may be another shard's.
            vector = self.engine.vector(state, as_of)
            for name, now in self.core.scores_now(vector, types=("learned", "rule")).items():
                if name in current:
                    current[name]["now"] = {k: now[k] for k in ("value", "source", "model_version", "reasons")}
        return {"customer_id": customer_id, "as_of": ms_to_iso(as_of) if as_of else None, "scores": current}

    def erase(self, customer_id: str) -> list[OutRecord]:
        """Forget a customer in Redis; returns the records to publish (a tombstone)."""
        self.core.erase(customer_id)
        return self.pipeline.erase_records(customer_id)


class ScorerDied(ChildDied):
    """The scoring process is gone; the worker stops (Kafka redelivers what it had)."""


_CALLS = frozenset({"score", "refresh", "customer_scores", "erase"})


class ScorerProcess(ChildProcess):
    """A :class:`Scorer` in a child process, with the same methods (see :class:`ChildProcess`).

    The child ignores SIGINT and SIGTERM, so that a worker shutting down can still
    score what it released.
    """

    died = ScorerDied

    def __init__(self, settings: Settings) -> None:
        super().__init__(Scorer, _CALLS, "scorer", settings)

    def score(self, messages: Sequence[Incoming]) -> tuple[BatchOutput, dict[str, int]]:
        return self._call("score", messages)

    def submit(self, seq: int, messages: Sequence[Incoming]) -> None:
        """Send batch ``seq`` ahead, to be scored once the batches before it are.

        The child then finds the next batch waiting when it finishes one, instead of
        idling while the worker reads the reply and sends the next (its reader thread
        waits its turn for the interpreter lock behind Faust's loop).
        """
        self._submit(seq, "score", messages)

    def collect(self, seq: int, messages: Sequence[Incoming]) -> tuple[BatchOutput, dict[str, int]]:
        """What :meth:`score` returns, for batch ``seq`` sent with :meth:`submit`.

        Collect batches in order, from one thread. A failure (Redis away) is raised;
        :meth:`submit` the same batch again to retry it: no later batch is scored
        before it is.
        """
        return self._collect(seq, "score", messages)

    def refresh(self, force: bool = False) -> list[str]:
        return self._call("refresh", force)

    def customer_scores(self, customer_id: str) -> dict[str, Any] | None:
        return self._call("customer_scores", customer_id)

    def erase(self, customer_id: str) -> list[OutRecord]:
        return self._call("erase", customer_id)


class ScorerPool:
    """Several :class:`ScorerProcess` children, each owning the shards ``partition % size``.

    One child keeps one core busy at best, and it waits on Redis for part of each
    batch: more help where the scoring processes are what is busy and cores are free.
    (On the 2-core machine of our benchmarks two are within noise of one: they compete
    for the same two cores with the worker, Redis and the broker, so the default is one
    child.) A shard's events always go to the same child, so each shard's watermark,
    due index and event order stay with one process, exactly as with one child; a
    customer's records all come from one shard, so their order is kept. Records of
    different shards may come in another order than from one child.

    Each shard keeps its RFM customer counts in Redis with its state, so they go on
    from where they were whichever child scores the shard. Queries (a customer's
    scores, an erasure) go to the first child: everything they read is in Redis, and
    the other children's caches check Redis's version before using a copy.
    """

    def __init__(self, settings: Settings, size: int) -> None:
        if size < 1:
            raise ValueError("a scorer pool needs at least one process")
        self.children = [ScorerProcess(settings) for _ in range(size)]
        self._fan = ThreadPoolExecutor(max_workers=size, thread_name_prefix="leadpulse-scorers")
        # The children that scored the batch last attempted: a retry after an error calls only
        # the others (the rest have scored and forgotten their part).
        self._attempt: tuple[tuple[Position, ...], dict[int, tuple[BatchOutput, dict[str, int]]]] | None = None

    def _child_of(self, partition: int) -> int:
        return partition % len(self.children)

    def _all(self, name: str, parts: dict[int, Any]) -> tuple[dict[int, Any], BaseException | None]:
        """Call ``name`` on each child with its part, at once; results, and the first failure."""
        futures = {i: self._fan.submit(getattr(self.children[i], name), *part) for i, part in parts.items()}
        results: dict[int, Any] = {}
        failed: BaseException | None = None
        for i, future in futures.items():
            try:
                results[i] = future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after every child answered
                failed = failed or exc
        return results, failed

    def score(self, messages: Sequence[Incoming]) -> tuple[BatchOutput, dict[str, int]]:
        batch = tuple(m.position for m in messages)
        if self._attempt is None or self._attempt[0] != batch:
            self._attempt = (batch, {})
        done = self._attempt[1]
        parts: dict[int, tuple[list[Incoming]]] = {}
        for msg in messages:
            i = self._child_of(msg.partition)
            if i not in done:
                parts.setdefault(i, ([],))[0].append(msg)
        results, failed = self._all("score", parts)
        done.update(results)
        if failed is not None:
            raise failed
        self._attempt = None
        out = BatchOutput()
        versions: dict[str, int] = {}
        for i in sorted(done):
            part, child_versions = done[i]
            out.records += part.records
            out.counts += part.counts
            out.score_event_ts_ms += part.score_event_ts_ms
            out.shards += part.shards
            for kind, version in child_versions.items():
                versions[kind] = max(version, versions.get(kind, version))
        return out, versions

    def refresh(self, force: bool = False) -> list[str]:
        results, failed = self._all("refresh", {i: (force,) for i in range(len(self.children))})
        if failed is not None:
            raise failed
        return sorted({kind for kinds in results.values() for kind in kinds})

    def customer_scores(self, customer_id: str) -> dict[str, Any] | None:
        return self.children[0].customer_scores(customer_id)

    def erase(self, customer_id: str) -> list[OutRecord]:
        return self.children[0].erase(customer_id)

    def close(self, timeout: float = 10.0) -> None:
        for child in self.children:
            child.close(timeout)
        self._fan.shutdown(wait=False)
