"""A replay sharded by customer over worker processes (``leadpulse backtest --workers N``).

One Python process runs on one core. A replay's work is mostly per customer (features,
vectors, scores, the label join), so :class:`ShardedCore` gives each of N worker
processes the customers whose id hashes to it, as the live worker gives each scoring
process its partitions. The models stay one model per kind, learned in the replay's own
process, as the live worker's central learner does: it reads and decodes the events,
learns the labels the workers hand back, and sends them the models' serving copies
(:meth:`~scoring.models.OnlineModel.for_serving`, kilobytes) with each batch.

The replay's batches are the plain replay's (at most 500 events or an hour of event time);
the workers meet once per round of batches (5,000 events or a day), so the result does
not depend on N:

- within a round, every worker scores with the models and the RFM counts as
  learned up to the round before the previous one (the previous round's labels are being
  learned meanwhile), and each batch's watermark is the newest event of the whole batch,
  not of the worker's part, so labels mature and idle customers are rescored at the same
  moments as in the plain replay;
- the labels of a round are learned in the order (horizon end, example id), and the graded
  RFM values observed in the order (time, customer), whichever worker made them.

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
import os
import pickle
import signal
import traceback
import zlib
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from features.events import AnyEvent
from features.spec import DAY_MS
from features.store import InMemoryFeatureStore
from scoring.core import Labelled, ModelRegistry, Outputs, ScoringCore
from scoring.rfm import RfmGrader
from scoring.state import ShardSave

SHARD = "0"  # each worker's core sees one shard: its customers
# The workers meet once per round of batches, not once per batch: a batch spans at most an
# hour of event time (tens of events on a typical history), and meeting that often cost
# more than the second core gave. A round ends with the batch that makes it this long.
ROUND_EVENTS = 5_000
ROUND_SPAN_MS = DAY_MS


def fork_cores() -> int:
    """The CPUs this process may fork workers onto: its share on Linux (a container's or a
    taskset's, not the machine's); 1 elsewhere, where a forked copy of a process holding
    numpy and matplotlib is not safe (macOS), so nothing is forked by default.

    >>> fork_cores() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return 1


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


def _pack(examples: list[Labelled]) -> tuple[list[tuple[str, ...]], list[tuple[Any, ...]]]:
    """Examples as plain tuples, each input dict as its values and the index of its names.

    A replay hands back an example or more per event; unpickling a dataclass with a dict
    in it cost the learning process 11 µs each, this 2 (names repeat across examples).
    """
    shapes: dict[tuple[str, ...], int] = {}
    rows = []
    for e in examples:
        names = tuple(e.x)
        shape = shapes.get(names)
        if shape is None:
            shape = shapes[names] = len(shapes)
        rows.append((e.kind, e.customer_id, e.example_id, e.t_ms, e.end_ms, e.prob, e.rule_prob,
                     e.source, e.label, shape, tuple(e.x.values()), e.fresh, e.event_id))
    return list(shapes), rows


def _unpack(packed: tuple[list[tuple[str, ...]], list[tuple[Any, ...]]]) -> list[Labelled]:
    """The examples :func:`_pack` packed, equal field for field.

    >>> ex = Labelled("k", "c1", "k:c1:5", 5, 9, 0.25, 0.5, "model", 1, {"a": 1.0, "b_missing": 1.0},
    ...               event_id="e7")
    >>> _unpack(_pack([ex, ex])) == [ex, ex]
    True
    """
    shapes, rows = packed
    return [
        Labelled(kind, cid, eid, t, end, prob, rule, source, label, dict(zip(shapes[shape], values, strict=True)),
                 fresh, event)
        for kind, cid, eid, t, end, prob, rule, source, label, shape, values, fresh, event in rows
    ]


class _Shard:
    """One worker: a core that scores its customers with the models this process learns."""

    def __init__(self, core: ScoringCore) -> None:
        core.learn_inline = False
        core.explain = False
        core.rfm_deferred = []
        # Its own registry: the replay's process learns in the one it was given.
        core.registry = ModelRegistry(core.kinds, core.sensitive)
        self.core = core

    def handle(self, msg: tuple[Any, ...]) -> Any:
        op = msg[0]
        if op == "round":
            _, serving, batches = msg
            core = self.core
            if serving is not None:
                models, grader = pickle.loads(serving)  # noqa: S301 - the replay's own bytes
                core.registry.models.update(models)
                core.state.save({SHARD: ShardSave({}, grader=grader)})
            total = Outputs()
            for events, newest in batches:
                if events:
                    out = core.process(events, SHARD, newest)
                else:  # none of this batch's customers are ours: time still moves
                    out = core.advance(SHARD, newest - core.lateness_ms)
                total.extend(out)
            deferred = core.rfm_deferred or []
            core.rfm_deferred = []
            blob = pickle.dumps((_pack(total.fresh), _pack(total.labelled), deferred),
                                protocol=pickle.HIGHEST_PROTOCOL)
            total.fresh, total.labelled = [], []
            # What a replay's report reads of them; whole records cost the replay's process
            # 5 µs each to unpickle, about one per event.
            total.scores = [{"ts": r["ts"], "kind": r["kind"], "band": r["band"]} for r in total.scores]
            total.alerts = [{"ts": r["ts"]} for r in total.alerts]
            total.triggers = [{"ts": r["ts"], "trigger": r["trigger"]} for r in total.triggers]
            return total, blob
        if op == "features":
            return pickle.dumps(self.core.features, protocol=pickle.HIGHEST_PROTOCOL)
        raise ValueError(f"unknown request {op!r}")


class _Link(Protocol):
    def send(self, msg: tuple[Any, ...]) -> None: ...

    def recv(self) -> Any: ...

    def close(self, wait: bool = True) -> None: ...


class _Local:
    """A worker in this process (``workers=1``): the same requests, answered at once."""

    def __init__(self, core: ScoringCore) -> None:
        self.shard = _Shard(core)
        self.reply: Any = None

    def send(self, msg: tuple[Any, ...]) -> None:
        self.reply = self.shard.handle(msg)

    def recv(self) -> Any:
        return self.reply

    def close(self, wait: bool = True) -> None:
        self.reply = None


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel stop this worker when the replay's process dies.

    A replay killed outright (SIGKILL, or a SIGTERM nothing turned into a clean stop) left
    its workers blocked forever on a pipe to a parent gone, holding their memory and the
    command's stdout (a ``| tee`` never ended).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pipe's EOF still stops an idle worker
        return
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)


def _serve(conn: Connection, core: ScoringCore, parent: int) -> None:
    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group, and systemd's SIGTERM every process of the
    # service: the replay's process stops its workers, which would otherwise each print a
    # traceback of their own (or run the SIGTERM handler `leadpulse backtest` forked them with).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
        self.proc = ctx.Process(target=_serve, args=(theirs, core, os.getpid()), daemon=True,
                                name=f"leadpulse-backtest-{index}")
        self.proc.start()
        theirs.close()

    def send(self, msg: tuple[Any, ...]) -> None:
        self.conn.send(msg)

    def recv(self) -> Any:
        try:
            tag, value = self.conn.recv()
        except EOFError:
            # Its end of the pipe closes as it dies, a moment before it can be reaped: wait for
            # that moment, or the message says "exit code None".
            self.proc.join(timeout=5)
            raise RuntimeError(f"backtest worker {self.index} stopped (exit code {self.proc.exitcode})") from None
        if tag == "error":
            raise RuntimeError(f"backtest worker {self.index} failed:\n{value}")
        return value

    def close(self, wait: bool = True) -> None:
        """Stop the worker: asked to when it is idle, at once when it still has a round (the
        replay failed: no one reads its answer, and a large one would block it on the pipe)."""
        with contextlib.suppress(OSError):  # already gone
            self.conn.send(("stop",))
        self.proc.join(timeout=10 if wait else 0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class ShardedCore:
    """Replay batches over ``workers`` processes, each holding the customers hashed to it.

    ``submit`` takes a batch; when that completes a round it hands the round out and
    returns the round before's outputs, so this process learns and reads on while the
    workers score. ``finish`` returns what is left. The outputs keep of score changes,
    alerts and triggers only what a report reads (time; kind and band of a score).
    ``merged`` is then one core with the learned models and every customer's features
    (for the report's models and ``--customers-out``). Close it.
    """

    def __init__(self, core: ScoringCore, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if not isinstance(core.features, InMemoryFeatureStore):
            raise ValueError("a sharded replay runs on the in-process store")
        self.workers = workers
        self.kinds = core.kinds
        self.policy = core.policy  # the workers' alerts and triggers (the report lists its rules)
        self._template = core
        # Learned here, in this process, for every worker (taken before a worker in this
        # process, workers=1, gives the core a registry of its own).
        self.registry = core.registry
        self.grader = core.state.shard_states([SHARD])[SHARD].grader or RfmGrader()
        self.explain = False  # nothing reads reasons in a replay
        self._changed = False
        self._inflight = False
        self._round: list[tuple[list[list[AnyEvent]], int]] = []  # batches not yet handed out
        self._round_events = 0
        self._round_start = 0
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

    def submit(self, events: Sequence[AnyEvent]) -> Outputs | None:
        """Take one batch; when it completes a round, hand the round to the workers.

        Returns the outputs of the round before, when one was handed out (None otherwise).
        """
        parts: list[list[AnyEvent]] = [[] for _ in self._links]
        n = self.workers
        for ev in events:
            parts[owner(ev.customer_id, n) if n > 1 else 0].append(ev)
        newest = max(ev.ts_ms for ev in events)
        if not self._round:
            self._round_start = min(ev.ts_ms for ev in events)
        self._round.append((parts, newest))
        self._round_events += len(events)
        if self._round_events < ROUND_EVENTS and newest - self._round_start < ROUND_SPAN_MS:
            return None
        return self._send_round()

    def finish(self) -> Outputs:
        """Everything not yet returned, its labels learned."""
        done = self._send_round() if self._round else None
        if not self._inflight:
            return done or Outputs()
        last, labels = self._gather()
        last.drifts = self._learn(*labels)
        if done is not None:
            done.extend(last)
            return done
        return last

    def _send_round(self) -> Outputs | None:
        done = labels = None
        if self._inflight:
            done, labels = self._gather()
        serving = self._serving()  # the models after the round before the previous one
        for i, link in enumerate(self._links):
            link.send(("round", serving, [(parts[i], newest) for parts, newest in self._round]))
        self._round, self._round_events = [], 0
        self._inflight = True
        if done is not None and labels is not None:
            done.drifts = self._learn(*labels)  # while the workers score this round
        return done

    def merged(self) -> ScoringCore:
        """One core: the learned models and RFM counts, and every worker's customers' features.

        Customers' scoring records (pending examples, last scores) stay with the workers.
        """
        core = self._template
        core.registry = self.registry
        core.state.save({SHARD: ShardSave({}, grader=self.grader)})
        core.rfm = self.grader  # what scores_now grades against
        core.rfm_deferred = None
        for i, link in enumerate(self._links):
            link.send(("features",))
            features = pickle.loads(link.recv())  # noqa: S301 - our own worker's bytes
            if i == 0:
                core.features = features
            else:
                features_0 = core.features
                assert isinstance(features_0, InMemoryFeatureStore)  # checked in __init__
                features_0.absorb(features)
        return core

    def close(self) -> None:
        for link in self._links:
            link.close(wait=not self._inflight)
        self._links = []
        self._inflight = False

    def _serving(self) -> bytes | None:
        """The models and RFM counts for the workers, when learning changed them since last sent."""
        if not self._changed:
            return None
        self._changed = False
        models = {name: model.for_serving() for name, model in self.registry.models.items()}
        return pickle.dumps((models, self.grader), protocol=pickle.HIGHEST_PROTOCOL)

    def _learn(self, fresh: list[Labelled], labelled: list[Labelled], rfm: list[Any]) -> list[dict[str, Any]]:
        """Learn a batch's labels (in one order) and count its customers' RFM moves."""
        drifts = self.registry.learn(fresh + labelled) if fresh or labelled else []
        if rfm:
            rfm.sort(key=_rfm_order)  # moves add up in any order; one order keeps ``seen`` alike
            for _, _, (old, new) in rfm:
                self.grader.move(old, new)
        self._changed = self._changed or bool(fresh or labelled or rfm)
        return drifts

    def _gather(self) -> tuple[Outputs, tuple[list[Labelled], list[Labelled], list[Any]]]:
        merged = Outputs()
        rfm: list[Any] = []
        for link in self._links:
            out, blob = link.recv()
            merged.extend(out)  # its examples travel packed, in the blob
            fresh, labelled, graded = pickle.loads(blob)  # noqa: S301 - our own worker's bytes
            merged.fresh += _unpack(fresh)
            merged.labelled += _unpack(labelled)
            rfm += graded
        # Keys differ between customers, hence between workers; a tie is one customer's
        # and keeps its worker's order (the sorts are stable): the same order for any N.
        merged.fresh.sort(key=_example_order)
        merged.labelled.sort(key=_example_order)
        self._inflight = False
        return merged, (merged.fresh, merged.labelled, rfm)


__all__ = ["ROUND_EVENTS", "ROUND_SPAN_MS", "ShardedCore", "owner"]
