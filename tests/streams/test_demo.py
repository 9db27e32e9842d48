"""``leadpulse demo``, the README's first command: embedded services, a worker, a live table, a clean stop.

Run as a user runs it (a process of its own, its output read back): it must show score
changes and stop everything it started. Its own check of leftover processes is what
makes it exit 1; the test also looks for them itself.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scoring.simulator import SimulationConfig, write_jsonl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LEADPULSE = [sys.executable, "-c", "import sys; from streams.cli import main; sys.exit(main())"]
TOTALS = re.compile(r"sent ([\d,]+) events; ([\d,]+) score changes, ([\d,]+) alerts, ([\d,]+) triggers, "
                    r"([\d,]+) dead letters\.")


def _demo(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    env = {**os.environ, "COLUMNS": "160"}
    env.pop("LEADPULSE_SCORING_CONFIG", None)
    before = _services()
    proc = subprocess.run(
        [*LEADPULSE, "demo", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert _services() <= before, "the demo left a broker or redis-server running"
    found = TOTALS.search(proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = ("sent", "scores", "alerts", "triggers", "dead_letters")
    return proc, {n: int(v.replace(",", "")) for n, v in zip(names, found.groups(), strict=True)}


def _services() -> set[int]:
    """Pids of tansu brokers and redis-servers running now (ours or not)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if cmd.endswith((b"tansu", b"redis-server")):
                pids.add(int(entry.name))
    return pids


def test_the_demo_shows_score_changes_and_stops_cleanly() -> None:
    proc, totals = _demo("--seconds", "20", "--customers", "80", "--days", "30")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "stopped cleanly: broker, Redis and worker are gone." in proc.stdout
    assert totals["sent"] > 1000 and totals["scores"] > 100
    assert totals["dead_letters"] > 0  # the simulator's dirty lines (1%)
    assert "not in time order" not in proc.stderr  # sent as written: its late lines reach the worker


def test_the_demo_replays_a_history_of_your_own(tmp_path: Path) -> None:
    # Purchases only, shuffled and gzipped, as an export of one's own history may come.
    events = tmp_path / "events.jsonl"
    write_jsonl(SimulationConfig(customers=150, days=60, seed=3), events)
    lines = [ln for ln in events.read_text().splitlines() if '"type":"purchase"' in ln]
    random.Random(1).shuffle(lines)
    history = tmp_path / "mine.jsonl.gz"
    history.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    proc, totals = _demo("--seconds", "20", "--file", str(history))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"mine.jsonl.gz: {len(lines):,} lines from 2024-" in proc.stdout
    assert "not in time order" in proc.stderr  # sorted before it is sent
    assert totals["sent"] == len(lines) and totals["scores"] > 0 and totals["dead_letters"] == 0


def test_the_demo_refuses_a_file_that_is_not_there(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*LEADPULSE, "demo", "--file", str(tmp_path / "nope.jsonl")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
