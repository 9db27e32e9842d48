"""An object of the worker's, built and called in a child process of its own.

A Python process runs Python on one core at a time. The worker's event loop
(fetching, acking, publishing), its scoring core and its learner would share one
interpreter lock; each of the latter two gets a process of its own instead
(:class:`streams.scorer.ScorerProcess`, :class:`streams.learning.LearnerProcess`).
The worker calls it over a pipe; the child answers one request at a time, in the
order they come, and the scoring batches are sent ahead of their turn.

>>> child = ChildProcess(dict, frozenset({"get"}), "demo", {"answer": 42}, lazy=True)
>>> child._proc is None  # not started until called
True
>>> child._call("get", "answer")
42
>>> child.close()
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from streams.runtime import tune_gc

__all__ = ["ChildDied", "ChildProcess", "OutOfTurn", "widen"]


class ChildDied(RuntimeError):
    """The child process is gone; the worker stops (Kafka redelivers what it had)."""


class OutOfTurn(RuntimeError):
    """The answer to an ordered request that reached the child out of turn: it was not run.

    After an ordered request fails, the child runs no later one until that one comes
    again (the worker retries it), so a batch sent ahead never overtakes a failed one.
    """


Key = tuple[str, int]  # ("call", n) for a call, ("ordered", seq) for an ordered request


class ChildProcess:
    """``build(*args)`` in a child process, whose methods named in ``calls`` :meth:`_call` runs.

    A call blocks its thread until the child answers; calls from several threads
    are answered in the order they reach the child. An exception in the child is
    raised here with its type (Redis errors stay retryable). The object is built at
    the first call, so a Redis outage at start is retried like any call. The child
    exits when the worker closes the pipe, or dies: it ignores SIGINT and SIGTERM
    so that a worker shutting down can still finish what it started.

    Ordered requests (:meth:`_submit`, :meth:`_collect`) are sent ahead, so the
    child finds the next one waiting when it finishes one, and run in the order of
    their sequence numbers (see :class:`OutOfTurn`).
    """

    died: type[RuntimeError] = ChildDied

    def __init__(
        self, build: Callable[..., Any], calls: frozenset[str], name: str, *args: Any, lazy: bool = False
    ) -> None:
        self._spec = (build, args, calls, name)
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._replies: dict[Key, tuple[bool, Any]] = {}
        self._calls = itertools.count()
        self._proc: Any = None
        if not lazy:
            self._start()

    def start(self) -> None:
        """Start the child now, if not yet (``lazy``: else at the first call)."""
        with self._send_lock:
            if self._proc is None:
                self._start()

    def _start(self) -> None:
        build, args, calls, name = self._spec
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads running
        self._conn, child = ctx.Pipe()
        for end in (self._conn, child):
            widen(end)
        self._proc = ctx.Process(
            target=_serve,
            args=(child, build, args, calls, name, logging.getLogger().getEffectiveLevel()),
            name=f"leadpulse-{name}", daemon=True,
        )
        self._proc.start()
        child.close()
        # Before multiprocessing's own exit hook, which would SIGTERM (ignored) and wait forever.
        atexit.register(self.close)

    def _died(self) -> RuntimeError:
        return self.died(f"the {self._proc.name} process exited (code {self._proc.exitcode})")

    def _send(self, key: Key, name: str, args: tuple[Any, ...]) -> None:
        with self._send_lock:
            if self._proc is None:
                self._start()
            try:
                self._conn.send((key, name, args))
            except (EOFError, OSError) as exc:
                raise self._died() from exc

    def _reply(self, key: Key) -> tuple[bool, Any]:
        """The child's answer to the request ``key`` (answers to others wait for their callers)."""
        with self._recv_lock:
            while key not in self._replies:
                try:
                    got, ok, value = self._conn.recv()
                except (EOFError, OSError) as exc:
                    raise self._died() from exc
                self._replies[got] = (ok, value)
            return self._replies.pop(key)

    def _call(self, name: str, *args: Any) -> Any:
        key = ("call", next(self._calls))
        self._send(key, name, args)
        ok, value = self._reply(key)
        if not ok:
            raise value
        return value

    def _submit(self, seq: int, name: str, *args: Any) -> None:
        """Send ordered request ``seq`` (one more than the one before) without waiting."""
        self._send(("ordered", seq), name, args)

    def _collect(self, seq: int, name: str, *args: Any) -> Any:
        """The answer to ordered request ``seq``; sent again (the same ``name`` and ``args``)
        once if it came out of turn. A failure is raised: the caller retries with :meth:`_submit`.

        Collect in sequence order, from one thread: then every earlier request has been
        answered when a request is sent again, and the child runs it. Out of turn twice
        means an earlier one was given up on; that is raised too.
        """
        resent = False
        while True:
            ok, value = self._reply(("ordered", seq))
            if ok:
                return value
            if resent or not isinstance(value, OutOfTurn):
                raise value
            resent = True
            self._submit(seq, name, *args)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (it finishes the call in progress first); closing twice is fine."""
        with self._send_lock, self._recv_lock:
            if self._proc is None:
                return  # lazy, never called
            self._conn.close()
        atexit.unregister(self.close)
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout)


PIPE_BUFFER_BYTES = 4 << 20


def widen(conn: Any, size: int = PIPE_BUFFER_BYTES) -> int:
    """Ask for ``size`` bytes of socket buffer on one end of a pipe; returns what the kernel gave.

    A scoring reply (a 500-event batch's records) is about 300 KB, and Linux's default
    socket buffer about 200 KB. With the default, the child blocked in its send until the
    worker's reader thread took the first part, and that thread waits for the interpreter
    lock that Faust's event loop holds: 15% of the scoring process's time in a profile.
    The kernel caps the size (``net.core.wmem_max``); a smaller buffer only means waiting.

    >>> import multiprocessing
    >>> a, b = multiprocessing.Pipe()
    >>> widen(a) > 0
    True
    >>> a.close(); b.close()
    """
    sock = socket.socket(fileno=os.dup(conn.fileno()))  # a second handle on the same socket
    try:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):  # not allowed here: the default buffer still works
                sock.setsockopt(socket.SOL_SOCKET, option, size)
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    finally:
        sock.close()


def _portable(exc: BaseException, name: str) -> BaseException:
    """``exc`` if it pickles both ways, else a RuntimeError naming its type (never its message: PII)."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, this process
    except Exception:  # noqa: BLE001 - any pickling failure, either way
        return RuntimeError(f"{type(exc).__name__} in the {name} process")
    return exc


def _serve(
    conn: Any, build: Callable[..., Any], args: tuple[Any, ...], calls: frozenset[str], name: str,
    loglevel: int,
) -> None:
    """The child's loop: one request, one answer, until the worker closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=loglevel, format=f"[%(asctime)s] [{name}] [%(levelname)s] %(name)s: %(message)s")
    tune_gc()
    target: Any = None
    turn: int | None = None  # the ordered request to run next (None: whichever comes first)
    while True:
        try:
            key, call, call_args = conn.recv()
        except (EOFError, OSError):
            return
        ordered = key[0] == "ordered"
        try:
            if ordered and turn is not None and key[1] != turn:
                raise OutOfTurn(f"request {key[1]} while waiting for {turn}")
            if call not in calls:
                raise ValueError(f"unknown call {call!r}")
            if target is None:  # built on first use: a Redis outage at start is then retried
                target = build(*args)
            reply: tuple[bool, Any] = (True, getattr(target, call)(*call_args))
            if ordered:
                turn = key[1] + 1
        except OutOfTurn as exc:
            reply = (False, exc)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the worker
            reply = (False, _portable(exc, name))
            if ordered:
                turn = key[1]  # nothing after it runs before it does
        try:
            conn.send((key, *reply))
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - a reply that does not pickle
            if ordered:
                turn = key[1]  # the worker retries it or stops; either way nothing overtakes it
            conn.send((key, False, RuntimeError(f"{type(exc).__name__} sending the reply to {call}")))
