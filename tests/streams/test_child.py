"""streams.child: a worker object in a child process, over a pipe with wide buffers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from streams.child import PIPE_BUFFER_BYTES, ChildProcess, widen


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
