"""streams.child: a worker object in a child process, over a pipe with wide buffers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from streams.child import PIPE_BUFFER_BYTES, ChildProcess, OutOfTurn, widen


def _kernel_cap() -> int | None:
    cap = Path("/proc/sys/net/core/wmem_max")
    return int(cap.read_text()) if cap.exists() else None


def test_widen_gets_the_buffer_the_kernel_allows() -> None:
    a, b = multiprocessing.Pipe()
    try:
        before = widen(b, 1)  # the smallest the kernel gives
        got = widen(a)
    finally:
        a.close()
        b.close()
    cap = _kernel_cap()
    if cap is None:
        pytest.skip("no /proc/sys/net/core/wmem_max here")
    # Linux reports twice what it grants (bookkeeping included), up to the cap.
    assert got >= min(PIPE_BUFFER_BYTES, cap)
    assert got > before


def test_a_reply_larger_than_a_default_buffer_arrives_whole() -> None:
    big = bytes(range(256)) * 12_000  # 3 MB: several default socket buffers
    child = ChildProcess(dict, frozenset({"get", "pop"}), "test", {"big": big})
    try:
        assert child._call("get", "big") == big
        with pytest.raises(KeyError):  # the child's exception, with its type
            child._call("pop", "missing")
        with pytest.raises(ValueError, match="unknown call"):
            child._call("clear")
        assert child._call("get", "big") == big  # the child serves on after failures
    finally:
        child.close()
    assert not child._proc.is_alive()


# A list as the child's target (the child must import it; test modules are not importable):
# ordered appends, and an index() that fails while its item is missing and says where it is.
LIST_CALLS = frozenset({"append", "index", "copy"})


def test_requests_sent_ahead_run_in_order_and_a_retried_one_is_not_overtaken() -> None:
    child = ChildProcess(list, LIST_CALLS, "test")
    try:
        requests = [("append", 0), ("append", 1), ("index", 99), ("append", 3), ("append", 4)]
        for seq, (call, arg) in enumerate(requests):
            child._submit(seq, call, arg)  # all five wait in the pipe
        # A plain call is answered after them: 2 failed, so 3 and 4 were refused.
        assert child._call("copy") == [0, 1]
        assert child._collect(0, "append", 0) is None  # their answers waited for their callers
        assert child._collect(1, "append", 1) is None
        with pytest.raises(ValueError):  # 99 is not there yet
            child._collect(2, "index", 99)
        child._call("append", 99)  # what the failure waited for (Redis back)
        child._submit(2, "index", 99)  # the caller's retry
        assert child._collect(2, "index", 99) == 2  # 3 and 4 were not appended before it
        # 3 and 4 came while 2 was failing: refused, then sent again by _collect.
        assert child._collect(3, "append", 3) is None
        assert child._collect(4, "append", 4) is None
        assert child._call("copy") == [0, 1, 99, 3, 4]
    finally:
        child.close()


def test_a_request_behind_one_given_up_on_is_refused() -> None:
    child = ChildProcess(list, LIST_CALLS, "test")
    try:
        child._submit(0, "index", 99)
        child._submit(1, "append", 1)
        with pytest.raises(ValueError):
            child._collect(0, "index", 99)
        with pytest.raises(OutOfTurn, match="waiting for 0"):  # 0 never came again
            child._collect(1, "append", 1)
        assert child._call("copy") == []
    finally:
        child.close()
