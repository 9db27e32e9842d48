"""Scoring state and model snapshots in Redis (the live worker's stores).

- ``lp:{<tag>}:s``: one customer's scoring record: a 16-character version, then
  the record as JSON; under the same hash tag as its features, so erasing a
  customer's tag erases it too;
- ``lp:due:<shard>``: sorted set customer -> next due time (event ms);
- ``lp:wm:<shard>``: the shard's watermark;
- ``lp:rfm:<shard>``: the shard's RFM grader (customer counts, pickled);
- ``lp:model:<kind>``: hash ``version`` + ``blob`` (a model snapshot).

Shards are source partitions: when Kafka moves a partition to another worker,
its due index and watermark move with it.

The store keeps the records it saved last (``cache_size`` customers) with their
versions. Loading one of those reads only the stored version (``GETRANGE``)
and, if it is still ours, hands back the record itself instead of decoding
the JSON again. A load takes the record out of the cache and the save puts it
back, so a batch that fails between the two leaves nothing cached that Redis
does not hold.

>>> import redis  # doctest: +SKIP
>>> store = RedisStateStore(redis.Redis.from_url("redis://127.0.0.1:6379/0"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError

from features.redis_batch import CommandBatch
from features.redis_store import key_tag
from scoring.rfm import RfmGrader
from scoring.state import DUE_LIMIT, CustomerScoring, ShardSave, ShardState

VERSION_BYTES = 16  # hex: 8 random per store instance, then a counter
LANDED_TTL_S = 86_400  # a save's token is asked for by the retry that follows it, seconds later


def _flat(reply: list[Any]) -> list[Any]:
    """ZRANGEBYSCORE WITHSCORES as ``[member, score, ...]``: RESP3 answers in pairs."""
    return [v for pair in reply for v in pair] if reply and isinstance(reply[0], list | tuple) else reply


def _handed_out(members: list[bytes | str]) -> list[str]:
    """Due members in score order, then id: the same order the in-process heap gives."""
    pairs = [(int(float(members[i + 1])), members[i]) for i in range(0, len(members), 2)]
    return [m.decode() if isinstance(m, bytes) else m for _, m in sorted(pairs)]


def _record(blob: bytes | str) -> CustomerScoring:
    raw = blob.encode() if isinstance(blob, str) else blob
    # Records written before versions existed are plain JSON.
    return CustomerScoring.from_json(raw if raw[:1] == b"{" else raw[VERSION_BYTES:])


class RedisStateStore:
    """Implements :class:`scoring.state.StateStore` and :class:`scoring.state.ModelStore`."""

    def __init__(
        self, client: redis.Redis, prefix: str = "lp", ttl_seconds: int = 400 * 86400, cache_size: int = 5_000
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[bytes, CustomerScoring]] = OrderedDict()
        self._instance = os.urandom(4).hex().encode()
        self._saves = 0
        self._landed_key = f"{prefix}:landed:{self._instance.decode()}"  # this store's last token

    def _key(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{key_tag(customer_id)}}}:s"

    def load(self, customer_ids: Sequence[str]) -> dict[str, CustomerScoring]:
        if not customer_ids:
            return {}
        cids = list(dict.fromkeys(customer_ids))
        # Taken out: the caller owns the record until it saves it back.
        held = {c: e for c in cids if (e := self._cache.pop(c, None)) is not None}
        # A pipeline, not MGET: in Redis Cluster customers live on different slots.
        batch = CommandBatch(self.client)
        for c in cids:
            if c in held:
                batch.add("GETRANGE", self._key(c), 0, VERSION_BYTES - 1)
            else:
                batch.add("GET", self._key(c))
        out: dict[str, CustomerScoring] = {}
        stale = []
        for c, raw in zip(cids, batch.execute(), strict=True):
            if c in held:
                if raw == held[c][0]:
                    out[c] = held[c][1]
                else:  # saved by someone else since (another worker), or erased
                    stale.append(c)
            else:
                out[c] = _record(raw) if raw else CustomerScoring()
        if stale:
            batch = CommandBatch(self.client)
            for c in stale:
                batch.add("GET", self._key(c))
            for c, raw in zip(stale, batch.execute(), strict=True):
                out[c] = _record(raw) if raw else CustomerScoring()
        return {c: out[c] for c in cids}

    def save(self, shards: dict[str, ShardSave], token: str | None = None) -> dict[str, list[str]]:
        batch = CommandBatch(self.client)
        # With a token: one transaction, its last write the token, so that after a lost reply
        # landed() tells whether all of it was made (then nothing of it is to be redone) or none.
        # A client that is not a plain Redis (a cluster's) writes the token last, untransacted.
        transaction = token is not None and type(self.client) is redis.Redis
        if transaction:
            batch.add("MULTI")
        saved: list[tuple[str, bytes, CustomerScoring]] = []
        handing: list[tuple[str, int]] = []  # (shard, index of its ZRANGEBYSCORE in the batch)
        for shard, (records, watermark, grader, due_until, drop) in shards.items():
            if grader is not None:
                batch.add("SET", f"{self.prefix}:rfm:{shard}", grader.snapshot())
            due_key = f"{self.prefix}:due:{shard}"
            # One ZADD and one ZREM per shard, not one per customer: the due index took
            # as many commands as the records themselves.
            dues: dict[str, int] = {}
            undue: list[str] = []
            for cid, rec in records.items():
                self._saves = (self._saves + 1) % (1 << 32)
                version = self._instance + b"%08x" % self._saves
                saved.append((cid, version, rec))
                blob = version + rec.to_json()
                if self.ttl_seconds:
                    batch.add("SET", self._key(cid), blob, "EX", self.ttl_seconds)
                else:
                    batch.add("SET", self._key(cid), blob)
                due = rec.next_due()
                if due is None:
                    undue.append(cid)
                else:
                    dues[cid] = due
            if drop:  # another shard owns these customers now
                undue += [cid for cid in drop if cid not in records]
            if undue:
                batch.add("ZREM", due_key, *undue)
            if dues:
                batch.add("ZADD", due_key, *[v for cid, due in dues.items() for v in (due, cid)])
            if watermark is not None:
                batch.add("SET", f"{self.prefix}:wm:{shard}", watermark)
            if due_until is not None:
                # Read, not taken: a customer handed out stays in the index until the caller
                # saves its record (this save's ZADD or ZREM moves it), so a round that fails
                # (Redis away, a crash) leaves its customers due for the retry, none lost.
                handing.append((shard, len(batch) - transaction))
                batch.add("ZRANGEBYSCORE", due_key, "-inf", due_until, "WITHSCORES", "LIMIT", 0, DUE_LIMIT)
        if token is not None:
            batch.add("SET", self._landed_key, token, "EX", LANDED_TTL_S)
        if transaction:
            batch.add("EXEC")
        replies = batch.execute()
        if transaction:
            replies = replies[-1]  # EXEC's: the replies of the commands it ran, in order
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
        if self.cache_size:
            for cid, version, rec in saved:
                self._cache[cid] = (version, rec)
                self._cache.move_to_end(cid)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return {shard: _handed_out(_flat(replies[i])) for shard, i in handing}

    def landed(self, token: str) -> bool:
        found = self.client.get(self._landed_key)
        return found is not None and (found if isinstance(found, str) else found.decode()) == token

    def shard_states(self, shards: Sequence[str]) -> dict[str, ShardState]:
        batch = CommandBatch(self.client)
        for shard in shards:
            batch.add("GET", f"{self.prefix}:rfm:{shard}")
            batch.add("GET", f"{self.prefix}:wm:{shard}")
        replies = batch.execute()
        out = {}
        for i, shard in enumerate(shards):
            grader, watermark = replies[2 * i], replies[2 * i + 1]
            out[shard] = ShardState(
                None if grader is None else RfmGrader.restore(grader if isinstance(grader, bytes) else grader.encode()),
                None if watermark is None else int(watermark),
            )
        return out

    def erase(self, customer_id: str) -> None:
        self._cache.pop(customer_id, None)
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
