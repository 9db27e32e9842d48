"""scripts/real_history.py on a small file in CDNOW's layout (no download)."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

Loader = Callable[[str], ModuleType]


def _cdnow_like(path: Path, customers: int = 60) -> int:
    # The master file's layout: a header, then "id yyyymmdd cds dollars" padded with spaces.
    rng = random.Random(7)
    rows = [" customer_id  date number_of_cds  dollar_value"]
    for c in range(1, customers + 1):
        day = rng.randint(1, 80)
        for _ in range(1 + int(rng.random() < 0.4) * rng.randint(1, 5)):
            y, d = divmod(day, 365)
            month, dom = min(d // 28 + 1, 12), d % 28 + 1
            rows.append(f" {c:05d} {1997 + y}{month:02d}{dom:02d}  {rng.randint(1, 4)}  {rng.uniform(5, 80):.2f}")
            day += rng.randint(10, 120)
    path.write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def test_to_csv_skips_the_header_and_keeps_every_row(tmp_path: Path, load_script: Loader) -> None:
    n = _cdnow_like(tmp_path / "master.txt")
    rows = load_script("real_history").to_csv(tmp_path / "master.txt", tmp_path / "out.csv")
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert rows == n == len(lines) - 1
    assert lines[0] == "customer,date,cds,dollars" and lines[1].count(",") == 3


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess layout")
@pytest.mark.parametrize("workers", [1, 2])
def test_imports_and_backtests_a_local_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], load_script: Loader, workers: int
) -> None:
    n = _cdnow_like(tmp_path / "master.txt")
    assert load_script("real_history").main(["--file", str(tmp_path / "master.txt"), "--out", str(tmp_path / "out"),
                                             "--workers", str(workers)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["events"] == n and report["invalid"] == 0
    assert report["config"]["workers"] == (None if workers == 1 else workers)
    assert "purchase_propensity" in report["kinds"]
    assert "purchase_propensity" in capsys.readouterr().out
