"""Integration tests of the real-service harness in ``streams.embedded``."""

from __future__ import annotations

import json
import os
import socket
import time
from collections import defaultdict

import pytest
import redis

from streams.embedded import EmbeddedKafka, EmbeddedRedis, create_topics

pytestmark = pytest.mark.integration


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _port_free(port: int) -> bool:
    """A new server could listen on ``port`` (SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def test_redis_ping_set_get(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    assert redis_client.set("lp:{cust-1}:name", "Ada") is True
    assert redis_client.get("lp:{cust-1}:name") == b"Ada"
    assert redis_client.info("server")["redis_version"] >= "6.2"


def test_redis_client_starts_empty(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_redis_password_is_required_and_in_url() -> None:
    with EmbeddedRedis(password="s3cr:et/") as server:
        assert server.url == f"redis://:s3cr%3Aet%2F@127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.close()
        # Raw RESP, so no client retries: an unauthenticated command is refused.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.makefile("rb").readline().startswith(b"-NOAUTH")


def test_kafka_keyed_roundtrip_through_group_consumer(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    create_topics(kafka_bootstrap, {unique_topic: 3})
    create_topics(kafka_bootstrap, {unique_topic: 3})  # idempotent

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    sent: dict[int, tuple[str, dict[str, object]]] = {}
    for i in range(100):
        key = f"cust-{i % 17}"
        value = {"seq": i, "customer": key}
        sent[i] = (key, value)
        producer.send(unique_topic, key=key.encode(), value=json.dumps(value).encode())
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(
        unique_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{unique_topic}.group",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        auto_offset_reset="earliest",
    )
    received: dict[int, tuple[str, dict[str, object]]] = {}
    partitions_by_key: dict[str, set[int]] = defaultdict(set)
    deadline = time.monotonic() + 60
    try:
        while len(received) < 100 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    key, value = record.key.decode(), json.loads(record.value)
                    received[value["seq"]] = (key, value)
                    partitions_by_key[key].add(record.partition)
    finally:
        consumer.close()

    assert received == sent
    # Keyed partitioning: each key on one partition, and the keys spread over all 3.
    assert all(len(parts) == 1 for parts in partitions_by_key.values())
    assert set().union(*partitions_by_key.values()) == {0, 1, 2}


def test_create_topics_sets_partitions_and_accepts_compaction(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    from kafka import KafkaConsumer

    compacted = f"{unique_topic}.compacted"
    create_topics(kafka_bootstrap, {unique_topic: 2, compacted: 1}, compacted={compacted})
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(unique_topic) == {0, 1}
        assert consumer.partitions_for_topic(compacted) == {0}
    finally:
        consumer.close()
    with pytest.raises(ValueError):
        create_topics(kafka_bootstrap, {unique_topic: 2}, compacted={"not-listed"})


def test_stopped_redis_is_gone_and_port_free() -> None:
    server = EmbeddedRedis().start()
    pid, port = server.pid, server.port
    client = redis.Redis(host="127.0.0.1", port=port)
    assert client.ping() is True  # a live connection must not keep anything around
    log_dir = server.log_path.parent if server.log_path else None
    server.stop()
    client.close()
    assert _pid_gone(pid)
    assert _port_free(port)
    assert log_dir is not None and not log_dir.exists()
    server.stop()  # idempotent


def test_stopped_kafka_is_gone_and_port_free() -> None:
    from kafka import KafkaConsumer

    with EmbeddedKafka() as broker:
        pid, port = broker.pid, broker.port
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
        assert isinstance(consumer.topics(), set)
        consumer.close()
    assert _pid_gone(pid)
    assert _port_free(port)


def test_explicit_busy_port_fails_clearly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match="(?i)in use"):
            EmbeddedRedis(port=port, startup_timeout=30).start()  # it exits at once: a safety net
