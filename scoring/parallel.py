"""A replay sharded by customer over worker processes (``leadpulse backtest --workers N``).

One Python process runs on one core. A replay's work is mostly per customer (features,
vectors, scores, the label join), so :class:`ShardedCore` gives each of N worker
processes the customers whose id hashes to it, as the live worker gives each scoring
process its partitions. The models stay one model per kind: every worker learns every
label, in one order, so their copies stay equal bit for bit.

Batch-synchronous, so the result does not depend on N:

- within a batch, every worker scores with the models and the RFM quintile edges as they
  stood at the batch's start, and its watermark follows the newest event of the whole
  batch, not of its part;
- after it, the batch's labels are learned by every worker in the order (horizon end,
  example id), and the graded RFM values observed in the order (time, customer).

``ShardedCore(core, 1)`` runs the same in this process, and gives the same report as any
N (tested). The plain replay (``run_backtest`` with a ``ScoringCore``) differs slightly: it
learns labels as they mature, between the due rounds of a batch, and observes RFM values
as it grades them.

>>> from scoring.backtest import BacktestConfig, run_backtest
>>> from scoring.core import ScoringCore
>>> order = ('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
...          '"type":"purchase","order_id":"o1","amount":80,"currency":"EUR"}')
>>> report = run_backtest([order], BacktestConfig(batch_baseline=False),
...                       ShardedCore(ScoringCore.in_memory(), workers=1))
>>> report["events"], report["scored"]
(1, 4)
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import traceback
import zlib
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from features.events import AnyEvent
from features.spec import DAY_MS
from features.store import InMemoryFeatureStore
from scoring.core import Labelled, Outputs, ScoringCore
from scoring.rfm import RfmGrader

SHARD = "0"  # each worker's core sees one shard: its customers
# The batches a sharded replay is cut into (the command line's): the workers meet once per
# batch, and meeting once per hour of event time (the plain replay's batches, tens of events
# on a typical history) cost more than the second core gave. See the README's figures.
SHARDED_BATCH_SIZE = 5_000
SHARDED_BATCH_SPAN_MS = DAY_MS


def owner(customer_id: str, workers: int) -> int:
    """The worker that holds a customer: the same for a customer id on every run.

    >>> owner("c1", 2), owner("c1", 2) == owner("c1", 2), owner("c1", 1)
    (1, True, 0)
    """
    return zlib.crc32(customer_id.encode("utf-8", "surrogatepass")) % workers


def _example_order(ex: Labelled) -> tuple[int, str]:
    return ex.end_ms, ex.example_id


def _rfm_order(item: tuple[int, str, Any]) -> tuple[int, str]:
    return item[0], item[1]


class _Shard:
    """One worker's core, and its own labels of the last batch (the others' come as bytes)."""

    def __init__(self, core: ScoringCore) -> None:
        if not isinstance(core.features, InMemoryFeatureStore):
            raise ValueError("a sharded replay runs on the in-process store")
        core.learn_inline = False
        core.explain = False
        core.rfm_deferred = []
        self.core = core
        self.mine: tuple[list[Labelled], list[Labelled], list[Any]] = ([], [], [])

    def handle(self, msg: tuple[Any, ...]) -> Any:
        op = msg[0]
        if op == "batch":
            _, others, events, newest = msg
            drifts = self.learn(others)
            core = self.core
            if events:
                out = core.process(events, SHARD, newest)
            else:  # none of this batch's customers are ours: time still moves
                out = core.advance(SHARD, newest - core.lateness_ms)
            deferred = core.rfm_deferred or []
            core.rfm_deferred = []
            self.mine = (out.fresh, out.labelled, deferred)
            blob = pickle.dumps(self.mine, protocol=pickle.HIGHEST_PROTOCOL)
            out.fresh, out.labelled, out.late, out.drifts = [], [], [], drifts
            return out, blob
        if op == "learn":
            return self.learn(msg[1])
        if op == "parts":
            core = self.core
            return pickle.dumps((core.registry, core.features, core.state.grader(SHARD)),
                                protocol=pickle.HIGHEST_PROTOCOL)
        raise ValueError(f"unknown request {op!r}")

    def learn(self, others: Sequence[bytes]) -> list[dict[str, Any]]:
        """Learn the last batch's labels of every worker and observe its RFM values, in one order."""
        fresh, labelled, rfm = (list(part) for part in self.mine)
        self.mine = ([], [], [])
        for blob in others:
            f, lab, r = pickle.loads(blob)  # noqa: S301 - our own worker's bytes
            fresh += f
            labelled += lab
            rfm += r
        # Keys differ between customers, hence between workers; a tie is one customer's
        # and keeps its worker's order (the sort is stable): the same order for any N.
        fresh.sort(key=_example_order)
        labelled.sort(key=_example_order)
        drifts = self.core.registry.learn(fresh + labelled) if fresh or labelled else []
        if rfm:
            rfm.sort(key=_rfm_order)
            grader = self.core.state.grader(SHARD) or RfmGrader()
            for _, _, values in rfm:
                grader.observe(values)
            self.core.state.save({}, SHARD, None, grader)
        return drifts


class _Link(Protocol):
    def send(self, msg: tuple[Any, ...]) -> None: ...

    def recv(self) -> Any: ...

    def close(self) -> None: ...


class _Local:
    """A worker in this process (``workers=1``): the same requests, answered at once."""

    def __init__(self, core: ScoringCore) -> None:
        self.shard = _Shard(core)
        self.reply: Any = None

    def send(self, msg: tuple[Any, ...]) -> None:
        self.reply = self.shard.handle(msg)

    def recv(self) -> Any:
        return self.reply

    def close(self) -> None:
        self.reply = None


def _serve(conn: Connection, core: ScoringCore) -> None:
    # As in the replay's own process (run_backtest): BLAS threads spin-wait against the other
    # workers for refits of a few thousand rows. A forked child does not keep the limit.
    with threadpool_limits(limits=1):
        _serve_requests(conn, _Shard(core))


def _serve_requests(conn: Connection, shard: _Shard) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the replay went away
            return
        if msg[0] == "stop":
            return
        try:
            conn.send(("ok", shard.handle(msg)))
        except BaseException:  # noqa: BLE001 - reported to the replay, which raises it
            conn.send(("error", traceback.format_exc()))
            return


class _Process:
    """A worker process, reached over a pipe."""

    def __init__(self, ctx: Any, core: ScoringCore, index: int) -> None:
        self.index = index
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(theirs, core), daemon=True,
                                name=f"leadpulse-backtest-{index}")
        self.proc.start()
        theirs.close()

    def send(self, msg: tuple[Any, ...]) -> None:
        self.conn.send(msg)

    def recv(self) -> Any:
        try:
            tag, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"backtest worker {self.index} stopped (exit code {self.proc.exitcode})") from None
        if tag == "error":
            raise RuntimeError(f"backtest worker {self.index} failed:\n{value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.conn.send(("stop",))
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class ShardedCore:
    """Replay batches over ``workers`` processes, each holding the customers hashed to it.

    ``submit`` hands a batch out and returns the previous batch's outputs, so this
    process reads and decodes the next batch while the workers score this one; ``finish``
    returns the last. ``merged`` is then one core with the learned models and every
    customer's features (for the report's models and ``--customers-out``). Close it.
    """

    def __init__(self, core: ScoringCore, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = workers
        self.kinds = core.kinds
        self._template = core
        self.explain = False  # nothing reads reasons in a replay
        if workers == 1:
            self._links: list[_Link] = [_Local(core)]
        else:
            # fork hands every worker the core as configured (a core does not pickle: its
            # engine holds compiled readers), so there is no spawn fallback.
            if "fork" not in multiprocessing.get_all_start_methods():
                raise ValueError("several workers need the fork start method (Linux); use one worker")
            ctx = multiprocessing.get_context("fork")
            self._links = []
            try:
                for i in range(workers):
                    self._links.append(_Process(ctx, core, i))
            except BaseException:
                self.close()
                raise
        self._blobs: list[bytes] = []
        self._inflight = False

    def submit(self, events: Sequence[AnyEvent]) -> Outputs | None:
        """Hand one batch to the workers; returns the previous batch's outputs (None at first)."""
        done = self._gather() if self._inflight else None
        parts: list[list[AnyEvent]] = [[] for _ in self._links]
        n = self.workers
        for ev in events:
            parts[owner(ev.customer_id, n) if n > 1 else 0].append(ev)
        newest = max(ev.ts_ms for ev in events)
        for i, link in enumerate(self._links):
            link.send(("batch", self._others(i), parts[i], newest))
        self._inflight = True
        return done

    def finish(self) -> Outputs:
        """The last batch's outputs, its labels learned by every worker."""
        done = self._gather() if self._inflight else Outputs()
        for i, link in enumerate(self._links):
            link.send(("learn", self._others(i)))
        drifts = [link.recv() for link in self._links][0]
        done.drifts.extend(drifts)
        self._blobs = []
        return done

    def merged(self) -> ScoringCore:
        """One core: the learned models and RFM edges, and every worker's customers' features.

        Customers' scoring records (pending examples, last scores) stay with the workers.
        """
        core = self._template
        for i, link in enumerate(self._links):
            link.send(("parts",))
            registry, features, grader = pickle.loads(link.recv())  # noqa: S301 - our worker's bytes
            if i == 0:
                core.registry, core.features = registry, features
                core.state.save({}, SHARD, None, grader)
                core.rfm = grader or RfmGrader()  # what scores_now grades against
            else:
                assert isinstance(core.features, InMemoryFeatureStore)  # checked by _Shard
                core.features.absorb(features)
        core.rfm_deferred = None
        return core

    def close(self) -> None:
        for link in self._links:
            link.close()
        self._links = []

    def _others(self, index: int) -> list[bytes]:
        return [blob for j, blob in enumerate(self._blobs) if j != index]

    def _gather(self) -> Outputs:
        merged = Outputs()
        blobs = []
        for i, link in enumerate(self._links):
            out, blob = link.recv()
            blobs.append(blob)
            merged.counts.update(out.counts)
            merged.scores += out.scores
            merged.alerts += out.alerts
            merged.triggers += out.triggers
            if i == 0:  # every worker learned the same labels: the same drifts
                merged.drifts = out.drifts
            fresh, labelled, _ = pickle.loads(blob)  # noqa: S301 - our own worker's bytes
            merged.fresh += fresh
            merged.labelled += labelled
        merged.fresh.sort(key=_example_order)
        merged.labelled.sort(key=_example_order)
        self._blobs = blobs
        self._inflight = False
        return merged


__all__ = ["SHARDED_BATCH_SIZE", "SHARDED_BATCH_SPAN_MS", "ShardedCore", "owner"]
