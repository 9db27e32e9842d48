"""The central learner in a child process: the same models as in the worker's own process."""

from __future__ import annotations

import pytest

from streams.learning import LearnerProcess, LiveLearner
from streams.scorer import Scorer
from streams.settings import Settings
from tests.streams.test_redis_state import _messages as simulated_messages

pytestmark = pytest.mark.integration


def _label_records(redis_url: str) -> list[tuple[int, bytes]]:
    """The labels topic's records (offset, value) of a scored simulated stream."""
    scorer = Scorer(Settings(redis_url=redis_url, redis_prefix="ln-score"))
    messages = simulated_messages(6000)
    values = []
    for i in range(0, len(messages), 500):
        out, _ = scorer.score(messages[i:i + 500])
        values += [r.value for r in out.records if r.topic == "leadpulse.labels" and r.value]
    return list(enumerate(values))


def test_a_learning_process_learns_and_snapshots_what_an_in_process_learner_does(redis_url: str) -> None:
    records = _label_records(redis_url)
    assert len(records) > 3
    local = LiveLearner.from_settings(Settings(redis_url=redis_url, redis_prefix="ln-local"))
    remote = LearnerProcess(Settings(redis_url=redis_url, redis_prefix="ln-remote"))
    try:
        bad = [(len(records), b"{not json")]
        steps = [learner.learn_records(records + bad) for learner in (local, remote)]
        assert steps[0].learned == steps[1].learned > 100
        assert steps[0].undecodable == steps[1].undecodable == 1
        assert remote.summaries() == local.summaries()
        assert remote.checkpoint() == local.checkpoint() == len(records)  # the next offset to learn
        assert not remote.due()
    finally:
        remote.close()
    assert not remote._proc.is_alive()
    # A restarted learner resumes from the snapshot: a redelivery of what it covers is skipped.
    again = LearnerProcess(Settings(redis_url=redis_url, redis_prefix="ln-remote"))
    try:
        assert again.learn_records(records).learned == 0
        assert again.summaries() == local.summaries()
    finally:
        again.close()
