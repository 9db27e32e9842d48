"""Scoring state and model snapshots in Redis (the live worker's stores).

- ``lp:{<tag>}:s``: one customer's scoring record (JSON), under the same hash
  tag as its features, so erasing a customer's tag erases it too;
- ``lp:due:<shard>``: sorted set customer -> next due time (event ms);
- ``lp:wm:<shard>``: the shard's watermark;
- ``lp:model:<kind>``: hash ``version`` + ``blob`` (a model snapshot).

Shards are source partitions: when Kafka moves a partition to another worker,
its due index and watermark move with it.

>>> import redis  # doctest: +SKIP
>>> store = RedisStateStore(redis.Redis.from_url("redis://127.0.0.1:6379/0"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from features.redis_store import key_tag
from scoring.state import CustomerScoring


class RedisStateStore:
    """Implements :class:`scoring.state.StateStore` and :class:`scoring.state.ModelStore`."""

    def __init__(self, client: redis.Redis, prefix: str = "lp", ttl_seconds: int = 400 * 86400) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def _key(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{key_tag(customer_id)}}}:s"

    def load(self, customer_ids: Sequence[str]) -> dict[str, CustomerScoring]:
        if not customer_ids:
            return {}
        # A pipeline, not MGET: in Redis Cluster customers live on different slots.
        pipe = self.client.pipeline(transaction=False)
        for c in customer_ids:
            pipe.get(self._key(c))
        blobs = pipe.execute()
        return {
            c: CustomerScoring.from_json(b) if b else CustomerScoring()
            for c, b in zip(customer_ids, blobs, strict=True)
        }

    def save(self, records: dict[str, CustomerScoring], shard: str, watermark: int | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        due_key = f"{self.prefix}:due:{shard}"
        for cid, rec in records.items():
            if self.ttl_seconds:
                pipe.set(self._key(cid), rec.to_json(), ex=self.ttl_seconds)
            else:
                pipe.set(self._key(cid), rec.to_json())
            due = rec.next_due()
            if due is None:
                pipe.zrem(due_key, cid)
            else:
                pipe.zadd(due_key, {cid: due})
        if watermark is not None:
            pipe.set(f"{self.prefix}:wm:{shard}", watermark)
        pipe.execute()

    def due(self, shard: str, until_ms: int, limit: int = 10_000) -> list[str]:
        key = f"{self.prefix}:due:{shard}"
        members: list[tuple[bytes | str, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            key, "-inf", until_ms, start=0, num=limit, withscores=True
        )
        if not members:
            return []
        # Score order, then id: the same order the in-process heap gives.
        ordered = sorted(
            (int(score), m.decode() if isinstance(m, bytes) else m) for m, score in members
        )
        self.client.zrem(key, *[m for _, m in ordered])
        return [m for _, m in ordered]

    def watermark(self, shard: str) -> int | None:
        raw = self.client.get(f"{self.prefix}:wm:{shard}")
        return None if raw is None else int(raw)

    def erase(self, customer_id: str) -> None:
        self.client.delete(self._key(customer_id))
        for key in self.client.scan_iter(match=f"{self.prefix}:due:*", count=1000):
            self.client.zrem(key, customer_id)

    # ModelStore
    def load_model(self, kind: str) -> tuple[int, bytes] | None:
        version, blob = self.client.hmget(f"{self.prefix}:model:{kind}", ["version", "blob"])
        if version is None or blob is None:
            return None
        return int(version), blob if isinstance(blob, bytes) else blob.encode()

    def save_model(self, kind: str, version: int, blob: bytes) -> None:
        self.client.hset(f"{self.prefix}:model:{kind}", mapping={"version": version, "blob": blob})

    def model_version(self, kind: str) -> int | None:
        """Cheap check before a hot swap."""
        raw = self.client.hget(f"{self.prefix}:model:{kind}", "version")
        return None if raw is None else int(raw)
