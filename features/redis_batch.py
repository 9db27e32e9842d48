"""Many Redis commands in one round trip, without redis-py's per-command work.

A batch of 500 events makes about 850 Redis commands (state loads and saves,
feature scripts and reads), sent as a few pipelines. Through a redis-py
pipeline each command also goes through a command method, its argument
encoding, a command stack entry and a response callback: measured on the
scoring process (``scripts/bench_scorer.py``), that machinery took more of its
CPU than Redis's own replies did. :class:`CommandBatch` packs each command with
hiredis as it is added, writes them all at once on a connection of the client's
own pool (so its password, TLS and timeouts) and reads the raw replies.

Replies are as the server sent them (what redis-py's parser makes of them, with
the client's ``decode_responses``): ``SET`` gives ``b'OK'``, ``HGETALL`` a flat
list of fields and values (:func:`pairs` makes it a dict). A client that is not
a plain :class:`redis.Redis` (a pipeline, a cluster client) gets the same
commands through its own pipeline instead, whose replies have been through the
callbacks: callers read both forms.

>>> batch = CommandBatch(None)
>>> batch.add("SET", "k", 1)
>>> len(batch)
1
>>> pairs([b"a", b"1", b"b", b"2"]), pairs({b"a": b"1"})
({b'a': b'1', b'b': b'2'}, {b'a': b'1'})
"""

from __future__ import annotations

from typing import Any

import redis
from hiredis import pack_command
from redis.exceptions import ResponseError

__all__ = ["CommandBatch", "pairs"]


class CommandBatch:
    """Commands added one by one, sent together by :meth:`execute`."""

    __slots__ = ("client", "commands", "packed")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.packed: list[bytes] = []
        self.commands: list[tuple[Any, ...]] = []

    def add(self, *args: bytes | str | int | float) -> None:
        """Queue one command, e.g. ``add("GET", key)``."""
        self.commands.append(args)
        self.packed.append(pack_command(args))  # type: ignore[arg-type]  # its stub says a 1-tuple

    def __len__(self) -> int:
        return len(self.commands)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every command, read every reply; an error reply is raised (the first one)
        or, with ``raise_on_error=False``, returned in its place. Connection errors are
        retried as the client's own commands are (its ``retry``): every command here
        must be safe to run twice."""
        if not self.commands:
            return []
        client = self.client
        if type(client) is not redis.Redis:  # a pipeline or a cluster client: its own pipeline
            pipe = client.pipeline(transaction=False)
            for args in self.commands:
                pipe.execute_command(*args)
            return pipe.execute(raise_on_error=raise_on_error)
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            replies: list[Any] = conn.retry.call_with_retry(
                lambda: self._round_trip(conn), lambda _error: conn.disconnect()
            )
        finally:
            pool.release(conn)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
        return replies

    def _round_trip(self, conn: Any) -> list[Any]:
        conn.send_packed_command([b"".join(self.packed)])  # one write: a syscall per command costs
        replies: list[Any] = []
        try:
            for _ in self.packed:
                try:
                    replies.append(conn.read_response())
                except ResponseError as error:  # read whole: the connection stays in step
                    replies.append(error)
        except BaseException:
            conn.disconnect()  # replies left on the socket: never hand it back to the pool
            raise
        return replies


def pairs(reply: Any) -> dict[Any, Any]:
    """An ``HGETALL`` reply as a dict, whichever form it came in (RESP2 list or RESP3 map).

    >>> pairs([b"n", b"1", b"_t", b"5"]), pairs({b"n": b"1"})
    ({b'n': b'1', b'_t': b'5'}, {b'n': b'1'})
    """
    if isinstance(reply, dict):
        return reply
    it = iter(reply)
    return dict(zip(it, it, strict=True))
