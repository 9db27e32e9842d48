"""CommandBatch against a real redis-server: the same replies as a redis-py pipeline."""

from __future__ import annotations

import pytest
import redis

from features.redis_batch import CommandBatch, pairs


def test_replies_in_order_as_the_server_sent_them(redis_client: redis.Redis) -> None:
    batch = CommandBatch(redis_client)
    batch.add("SET", "k", b"v\x00\xff", "EX", 100)
    batch.add("GET", "k")
    batch.add("GETRANGE", "k", 0, 1)
    batch.add("ZADD", "z", 5, "a", 2.5, "b")
    batch.add("HSET", "h", "f", 1.5, "g", "x")
    batch.add("HGETALL", "h")
    batch.add("HGETALL", "missing")
    batch.add("GET", "missing")
    assert len(batch) == 8
    replies = batch.execute()
    assert replies[:5] == [b"OK", b"v\x00\xff", b"v\x00", 2, 2]
    assert pairs(replies[5]) == {b"f": b"1.5", b"g": b"x"}
    assert pairs(replies[6]) == {}
    assert replies[7] is None
    assert redis_client.zrange("z", 0, -1, withscores=True) == [(b"b", 2.5), (b"a", 5.0)]
    assert 0 < redis_client.ttl("k") <= 100
    assert CommandBatch(redis_client).execute() == []


def test_an_error_reply_is_raised_or_returned_and_the_rest_still_run(redis_client: redis.Redis) -> None:
    redis_client.set("s", "text")
    batch = CommandBatch(redis_client)
    batch.add("SET", "before", 1)
    batch.add("HGET", "s", "f")  # WRONGTYPE
    batch.add("SET", "after", 2)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        batch.execute()
    assert redis_client.mget("before", "after") == [b"1", b"2"]
    replies = batch.execute(raise_on_error=False)
    assert replies[0] == b"OK" and isinstance(replies[1], redis.ResponseError) and replies[2] == b"OK"
    assert redis_client.ping()  # the pooled connection is still in step


def test_noscript_is_its_own_error_type(redis_client: redis.Redis) -> None:
    batch = CommandBatch(redis_client)
    batch.add("EVALSHA", "0" * 40, 0)
    (reply,) = batch.execute(raise_on_error=False)
    assert isinstance(reply, redis.exceptions.NoScriptError)


def test_a_pooled_connection_the_server_dropped_is_replaced(redis_client: redis.Redis) -> None:
    batch = CommandBatch(redis_client)
    batch.add("SET", "k", 1)
    batch.execute()  # a pooled connection now exists
    redis_client.client_kill_filter(_type="normal", skipme=True)  # the server drops it
    again = CommandBatch(redis_client)
    again.add("INCR", "k")
    assert again.execute() == [2]


def test_decode_responses_client(redis_client: redis.Redis) -> None:
    pool = redis_client.connection_pool
    text = redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=pool.connection_class, **{**pool.connection_kwargs, "decode_responses": True}))
    try:
        batch = CommandBatch(text)
        batch.add("HSET", "h", "f", "1")
        batch.add("HGETALL", "h")
        assert batch.execute()[1] in (["f", "1"], {"f": "1"})
    finally:
        text.close()


def test_a_pipeline_client_queues_through_its_own_pipeline(redis_client: redis.Redis) -> None:
    batch = CommandBatch(redis_client.pipeline(transaction=False))
    batch.add("SET", "k", "v")
    batch.add("HSET", "h", "f", "1")
    batch.add("HGETALL", "h")
    replies = batch.execute()
    assert replies[0] is True and pairs(replies[2]) == {b"f": b"1"}  # redis-py's callbacks
    assert redis_client.get("k") == b"v"
