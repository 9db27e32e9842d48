"""Shared fixtures: real redis-server and Kafka-protocol broker, started on demand.

The servers are session-scoped and start only when a test first asks for them,
so unit-test runs that touch neither pay nothing. They are stopped at session end
(and by ``streams.embedded``'s atexit hook should the session die early).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import redis

from streams.embedded import EmbeddedKafka, EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free loopback port, shared by the session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session's redis-server, which is emptied (FLUSHALL) first."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedKafka]:
    """A real Kafka-protocol broker (tansu, in memory) shared by the session.

    Topics persist for the whole session: use ``unique_topic`` for names.
    """
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: EmbeddedKafka) -> str:
    """``127.0.0.1:PORT`` of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses: ``test.<test name>.<uuid>``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:100]
    return f"test.{stem}.{uuid.uuid4().hex[:12]}"
