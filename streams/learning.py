"""The worker's central learner, in the worker's process or in a child process of its own.

The worker that holds the labels topic's one partition learns: it decodes label
records, fits them into the models of each score kind (:class:`streams.pipeline.Learner`),
refits them now and then, and writes snapshots to Redis. That is numpy, River and
scikit-learn work, and in the worker's own process it shares one interpreter lock
with Faust's event loop, which a backlog keeps busy: measured there, learning took
about 50 µs of the worker's CPU per input event (180 against 132 µs with learning
off, ``bench_pipeline.py``). :class:`LearnerProcess` runs the same
:class:`LiveLearner` in a child process (``LEADPULSE_LEARNER_PROCESS``, on by
default); label records cross the pipe as the raw bytes they came as.

>>> from streams.settings import Settings
>>> Settings().learner_process
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from scoring.config import load_scoring_config
from scoring.core import Labelled, ModelRegistry
from streams.child import ChildProcess
from streams.pipeline import CheckpointStore, Learner, labels_from_record
from streams.redis_state import RedisStateStore
from streams.settings import Settings

__all__ = ["LearnStep", "LearnerProcess", "LiveLearner", "RedisCheckpointStore"]


class RedisCheckpointStore(CheckpointStore):
    """Model snapshots (through :class:`RedisStateStore`) plus the labels offset, atomically."""

    def __init__(self, client: redis.Redis, prefix: str = "lp") -> None:
        self.client = client
        self.prefix = prefix
        self.models = RedisStateStore(client, prefix)
        self.key = f"{prefix}:learner:offset"

    def load_offset(self) -> int | None:
        raw = self.client.get(self.key)
        return None if raw is None else int(raw)

    def save(self, registry: ModelRegistry, next_offset: int) -> None:
        pipe = self.client.pipeline(transaction=True)
        registry.save(RedisStateStore(pipe, self.prefix))  # queued inside MULTI
        pipe.set(self.key, next_offset)
        pipe.execute()


@dataclass
class LearnStep:
    """What one call to :meth:`LiveLearner.learn_records` did."""

    drifts: list[dict[str, Any]] = field(default_factory=list)
    learned: int = 0  # examples learned (redelivered ones are skipped)
    undecodable: int = 0  # records that were not label records
    due: bool = False  # a snapshot is due (see Learner.due)


class LiveLearner:
    """The worker's :class:`~streams.pipeline.Learner` on Redis, fed label records as they came.

    >>> from streams.pipeline import labels_to_records
    >>> learner = LiveLearner(Learner(ModelRegistry(load_scoring_config(None).kinds), CheckpointStore()))
    >>> ex = Labelled("churn_risk", "c1", "x1", 1, 2, 0.2, 0.3, "model", 1, {"a": 1.0})
    >>> record = labels_to_records([ex], "labels")[0]
    >>> step = learner.learn_records([(0, record.value), (1, b"not json")])
    >>> step.learned, step.undecodable, learner.checkpoint()
    (1, 1, 1)
    """

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    @classmethod
    def from_settings(cls, settings: Settings) -> LiveLearner:
        scfg = load_scoring_config(settings.scoring_config)
        return cls(Learner(
            ModelRegistry(scfg.kinds, scfg.sensitive),
            RedisCheckpointStore(settings.redis_client(), settings.redis_prefix),
            every_labels=settings.snapshot_every_labels, every_s=settings.snapshot_every_s,
            min_interval_s=settings.snapshot_min_interval_s,
            refit_min_interval_s=settings.refit_min_interval_s,
        ))

    def learn_records(self, records: Sequence[tuple[int, bytes]]) -> LearnStep:
        """Decode ``(offset, record value)`` pairs and learn them in order."""
        items: list[tuple[int, Labelled]] = []
        step = LearnStep()
        for offset, raw in records:
            try:
                items.extend((offset, ex) for ex in labels_from_record(raw))
            except ValueError:
                step.undecodable += 1
        before = self.learner.learned
        step.drifts = self.learner.learn(items)
        step.learned = self.learner.learned - before
        step.due = self.learner.due()
        return step

    def due(self) -> bool:
        return self.learner.due()

    def checkpoint(self) -> int | None:
        return self.learner.checkpoint()

    def invalidate(self) -> None:
        self.learner.invalidate()

    def summaries(self) -> dict[str, dict[str, Any]]:
        """Each kind's :meth:`~scoring.models.OnlineModel.summary`."""
        return {name: m.summary() for name, m in self.learner.registry.models.items()}


_CALLS = frozenset({"learn_records", "due", "checkpoint", "invalidate", "summaries"})


class LearnerProcess(ChildProcess):
    """A :class:`LiveLearner` in a child process, with the same methods.

    Started when the worker is assigned the labels partition (:meth:`ChildProcess.start`),
    or else at its first call: only the worker that holds that partition learns, and the
    others (every replica but one) never start it (about 160 MB each). Started at the
    first labels instead, its 2-3 s of start-up delayed the first snapshot that much.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(LiveLearner.from_settings, _CALLS, "learner", settings, lazy=True)

    def learn_records(self, records: Sequence[tuple[int, bytes]]) -> LearnStep:
        return self._call("learn_records", list(records))

    def due(self) -> bool:
        return self._call("due")

    def checkpoint(self) -> int | None:
        return self._call("checkpoint")

    def invalidate(self) -> None:
        self._call("invalidate")

    def summaries(self) -> dict[str, dict[str, Any]]:
        return self._call("summaries")
