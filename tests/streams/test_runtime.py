import gc

import pytest

from streams.runtime import GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_gc_raises_the_young_threshold_and_freezes_start_up_objects(restore_gc):
    gen1, gen2 = gc.get_threshold()[1:]
    assert tune_gc() == (GEN0_THRESHOLD, gen1, gen2)
    assert gc.get_freeze_count() > 0
    # Cyclic garbage is still collected.
    class Node:
        pass
    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_tune_gc_refuses_a_threshold_below_one(restore_gc):
    with pytest.raises(ValueError):
        tune_gc(0)


def test_the_exit_watchdog_ends_a_stop_that_hangs_and_its_children_with_one_log_line(tmp_path):
    # A process whose stop never finishes: a non-daemon thread blocked for good (Python joins
    # it at exit) and a child process that ignores SIGTERM, as the scoring process does.
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "hang.py"
    script.write_text(
        "import logging, multiprocessing, signal, threading, time\n"
        "from streams.runtime import exit_after\n"
        "def child():\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    logging.basicConfig(level=logging.INFO)\n"
        "    p = multiprocessing.get_context('spawn').Process(target=child)\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    threading.Thread(target=threading.Event().wait).start()\n"
        "    log = logging.getLogger('leadpulse.worker')\n"
        "    assert exit_after(1.0, log) and not exit_after(1.0, log)  # armed once\n"
    )
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=os.getcwd(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and time.monotonic() - started < 20
    lines = [line for line in err.splitlines() if "did not finish" in line]
    assert lines == ["ERROR:leadpulse.worker:the stop did not finish within 1s (LEADPULSE_SHUTDOWN_TIMEOUT_S); "
                     "exiting now: what was not committed is redelivered and counted once"]
    child = int(out.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # killed, then reaped by init
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived the watchdog")
