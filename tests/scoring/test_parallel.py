"""A replay sharded by customer over worker processes: the same report for any number of them."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from scoring.backtest import BacktestConfig, run_backtest
from scoring.core import ScoringCore
from scoring.parallel import ShardedCore, owner
from scoring.simulator import SimulationConfig, write_jsonl
from streams.cli import main

# What may differ between runs of one replay: time taken, and how many processes it took.
TIMING = ("seconds", "events_per_second", "labels_per_second", "peak_memory_bytes")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "events.jsonl"
    # Dirty: malformed lines (no customer to hash) and redelivered events must count alike.
    write_jsonl(SimulationConfig(customers=300, days=150, seed=21, dirty=0.03), path)
    return path


def _config(tmp: Path, name: str, **kw: Any) -> BacktestConfig:
    return BacktestConfig(scores_out=tmp / f"{name}.scores.jsonl", customers_out=tmp / f"{name}.customers.csv", **kw)


def _replay(path: Path, config: BacktestConfig, core: ScoringCore | ShardedCore) -> dict[str, Any]:
    with open(path, "rb") as lines:
        report = run_backtest(lines, config, core)
    for key in TIMING:
        report.pop(key)
    report["config"].pop("workers")
    report["customers_out"].pop("path")
    return report


def test_two_and_three_workers_give_the_one_worker_report_scores_and_customers(history: Path, tmp_path: Path) -> None:
    reports = {}
    for n in (1, 2, 3):
        reports[n] = _replay(history, _config(tmp_path, f"w{n}"), ShardedCore(ScoringCore.in_memory(), n))
    one = reports[1]
    assert one["invalid"] > 0 and one["duplicates"] > 0, "the history exercises bad lines and redelivery"
    assert all(one["kinds"][k]["labels"] > 100 for k in ("purchase_propensity", "campaign_response"))
    for n in (2, 3):
        # Exact: every figure, each model's weights, the drift events, RFM grades in the files,
        # and the order of every key (report.json is compared byte for byte, not only its figures).
        assert json.dumps(reports[n]) == json.dumps(one), n
        for suffix in ("scores.jsonl", "customers.csv"):
            assert (tmp_path / f"w{n}.{suffix}").read_bytes() == (tmp_path / f"w1.{suffix}").read_bytes()
    assert not multiprocessing.active_children(), "the workers stopped"


def test_sharding_neither_loses_nor_repeats_an_example(history: Path, tmp_path: Path) -> None:
    # The plain replay learns labels as they mature within a batch, the workers' models a
    # round or two later, so probabilities differ a little (and with them which changes are
    # big enough to publish); which customers were scored when, and what was labelled how,
    # may not: the batches, their watermarks and so every moment scored are the same.
    plain = _replay(history, _config(tmp_path, "plain"), ScoringCore.in_memory())
    sharded = _replay(history, _config(tmp_path, "two"), ShardedCore(ScoringCore.in_memory(), 2))
    for key in ("lines", "events", "invalid", "duplicates", "late", "scored", "idle_rescores"):
        assert sharded[key] == plain[key], key
    for kind, figures in plain["kinds"].items():
        assert (sharded["kinds"][kind]["labels"], sharded["kinds"][kind]["positives"]) == \
            (figures["labels"], figures["positives"]), kind
        assert abs(sharded["kinds"][kind]["auc"] - figures["auc"]) < 0.02, kind

    def examples(name: str) -> set[tuple[str, int]]:
        lines = (tmp_path / f"{name}.scores.jsonl").read_text().splitlines()
        return {(rec["example_id"], rec["label"]) for rec in map(json.loads, lines)}

    assert examples("two") == examples("plain")


def test_customers_spread_over_the_workers() -> None:
    held = [owner(f"c{i}", 3) for i in range(3000)]
    assert all(800 < held.count(w) < 1200 for w in range(3))
    assert owner("ünïcode \ud800", 2) in (0, 1)  # a lone surrogate from a malformed id still hashes


def test_a_failing_worker_stops_the_replay_with_its_traceback(
    history: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ScoringCore.process

    def broken(self: ScoringCore, events: Any, *args: Any, **kw: Any) -> Any:
        if len(events) > 3:
            raise ZeroDivisionError("a bug in the core")
        return real(self, events, *args, **kw)

    monkeypatch.setattr(ScoringCore, "process", broken)  # the forked workers inherit it
    with pytest.raises(RuntimeError, match=r"backtest worker \d failed:[\s\S]*ZeroDivisionError: a bug"), \
            open(history, "rb") as lines:
        run_backtest(lines, BacktestConfig(batch_baseline=False), ShardedCore(ScoringCore.in_memory(), 2))
    assert not multiprocessing.active_children(), "no worker left behind"


def test_a_killed_worker_stops_the_replay_and_leaves_nothing_running(
    history: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed with rounds queued for it (the out-of-memory killer, say): the replay's process
    # must neither hang on the round it was writing nor on the answer it awaited.
    real = ScoringCore.process

    def killed(self: ScoringCore, events: Any, *args: Any, **kw: Any) -> Any:
        if len(events) > 3 and multiprocessing.current_process().name.endswith("-1"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, events, *args, **kw)

    monkeypatch.setattr(ScoringCore, "process", killed)
    with pytest.raises(RuntimeError, match=r"backtest worker 1 stopped \(exit code -9\)"), \
            open(history, "rb") as lines:
        run_backtest(lines, BacktestConfig(batch_baseline=False), ShardedCore(ScoringCore.in_memory(), 2))
    assert not multiprocessing.active_children(), "no worker left behind"
    assert not [t for t in threading.enumerate() if t.name.startswith("leadpulse-backtest")], "no sender left"


def test_cli_workers(history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", str(history), "--out", str(tmp_path / "r"), "--workers", "2",
                 "--no-batch-baseline"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["config"]["workers"] == 2
    assert report["kinds"]["purchase_propensity"]["labels"] > 100
    capsys.readouterr()
    assert main(["backtest", str(history), "--out", str(tmp_path / "r2"), "--workers", "2",
                 "--redis", "redis://127.0.0.1:1"]) == 2
    assert "--workers replays on the in-process store" in capsys.readouterr().err
    assert main(["backtest", str(history), "--out", str(tmp_path / "r3"), "--workers", "0"]) == 2


def test_cli_shards_a_large_file_by_default(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import scoring.parallel as parallel
    import streams.cli as cli

    monkeypatch.setattr(parallel, "fork_cores", lambda: 2)
    assert main(["backtest", str(history), "--out", str(tmp_path / "small"), "--no-batch-baseline"]) == 0
    small = json.loads((tmp_path / "small" / "report.json").read_text())
    assert history.stat().st_size < cli.AUTO_WORKERS_MIN_BYTES
    assert small["config"]["workers"] is None and small["config"]["workers_chosen"] == "auto"

    monkeypatch.setattr(cli, "AUTO_WORKERS_MIN_BYTES", history.stat().st_size)
    capsys.readouterr()
    assert main(["backtest", str(history), "--out", str(tmp_path / "auto"), "--no-batch-baseline"]) == 0
    assert "replaying on 2 worker processes" in capsys.readouterr().err
    assert main(["backtest", str(history), "--out", str(tmp_path / "two"), "--no-batch-baseline",
                 "--workers", "2"]) == 0
    auto, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("auto", "two"))
    assert auto["config"]["workers"] == 2 and auto["config"]["workers_chosen"] == "auto"
    assert two["config"]["workers_chosen"] == "given"
    for rep in (auto, two):
        for key in TIMING:
            rep.pop(key)
        rep["config"].pop("workers_chosen")
    assert auto == two, "auto is --workers 2, figure for figure"
    assert not multiprocessing.active_children()


def test_cli_replays_in_one_process_when_no_worker_can_start(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import scoring.parallel as parallel
    import streams.cli as cli

    def no_fork(*_: Any) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(parallel, "_Process", no_fork)
    monkeypatch.setattr(parallel, "fork_cores", lambda: 2)
    monkeypatch.setattr(cli, "AUTO_WORKERS_MIN_BYTES", 1)
    assert main(["backtest", str(history), "--out", str(tmp_path / "auto"), "--no-batch-baseline"]) == 0
    assert "replaying in one" in capsys.readouterr().err
    report = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert report["config"]["workers"] is None and report["kinds"]["purchase_propensity"]["labels"] > 100
    assert main(["backtest", str(history), "--out", str(tmp_path / "two"), "--workers", "2"]) == 2
    assert "could not start 2 worker processes" in capsys.readouterr().err


def test_compare_never_replays_its_two_configurations_in_different_modes(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import scoring.parallel as parallel
    import streams.cli as cli

    started = []
    real = parallel._Process

    def second_replay_cannot_fork(*args: Any) -> Any:
        started.append(1)
        if len(started) > 2:  # the first replay's two workers started
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(*args)

    monkeypatch.setattr(parallel, "_Process", second_replay_cannot_fork)
    monkeypatch.setattr(parallel, "fork_cores", lambda: 2)
    monkeypatch.setattr(cli, "AUTO_WORKERS_MIN_BYTES", 1)
    other = tmp_path / "other.yaml"
    other.write_text("kinds:\n  purchase_propensity:\n    horizon: 14d\n")
    assert main(["backtest", str(history), "--out", str(tmp_path / "c"), "--no-batch-baseline",
                 "--compare", str(other)]) == 2
    assert "could not start 2 worker processes" in capsys.readouterr().err
    assert not multiprocessing.active_children()


def test_auto_workers_keeps_one_process_where_two_are_not_known_to_help(history: Path, tmp_path: Path) -> None:
    from scoring.config import load_scoring_config, scoring_config_from_dict
    from streams.cli import auto_workers

    default = [load_scoring_config(None)]
    large = tmp_path / "large.jsonl"
    large.write_bytes(b"\n" * (5 << 20))
    assert auto_workers(large, default, redis=False, cores=2) == 2
    assert auto_workers(large, default, redis=False, cores=1) == 1
    assert auto_workers(large, default, redis=True, cores=4) == 1
    assert auto_workers(history, default, redis=False, cores=4) == 1, "a small file"
    assert auto_workers(Path("-"), default, redis=False, cores=4) == 1, "a pipe"
    packed = tmp_path / "large.jsonl.gz"
    packed.write_bytes(gzip.compress(os.urandom(1 << 20)))  # random bytes stay about their size
    assert auto_workers(packed, default, redis=False, cores=2) == 2, "counted as unpacked"
    forest = scoring_config_from_dict({"kinds": {"purchase_propensity": {"model": "forest"}}})
    fresh = scoring_config_from_dict({"kinds": {"purchase_propensity": {"learn_at": "fresh"}}})
    assert auto_workers(large, [forest], redis=False, cores=2) == 1, "a forest is shipped whole each round"
    assert auto_workers(large, [default[0], fresh], redis=False, cores=2) == 1, "--compare with fresh learning"


def test_only_the_in_process_store_is_sharded() -> None:
    import redis

    from features.engine import FeatureEngine
    from features.redis_store import RedisFeatureStore
    from scoring.state import InMemoryStateStore

    # Refused before any worker starts (nothing here connects).
    core = ScoringCore(FeatureEngine(), RedisFeatureStore(redis.Redis(port=1)), InMemoryStateStore())
    with pytest.raises(ValueError, match="in-process store"):
        ShardedCore(core, 2)
    assert not multiprocessing.active_children()


def test_fresh_learning_and_tree_models_shard_alike(history: Path, tmp_path: Path) -> None:
    # learn_at: fresh hands back samples at registration and at the outcome (Outputs.fresh),
    # and a tree model's serving copy is its whole River pipeline.
    from features.engine import FeatureEngine
    from features.store import InMemoryFeatureStore
    from scoring.config import load_scoring_config
    from scoring.state import InMemoryStateStore

    path = tmp_path / "config.yaml"
    path.write_text("kinds:\n  purchase_propensity: {learn_at: fresh}\n  churn_risk: {model: tree}\n")
    scfg = load_scoring_config(str(path))

    def core() -> ScoringCore:
        return ScoringCore(FeatureEngine(scfg.catalog, scfg.sensitive), InMemoryFeatureStore(scfg.lateness_ms),
                           InMemoryStateStore(), kinds=scfg.kinds, policy=scfg.policy,
                           lateness_ms=scfg.lateness_ms, sensitive=scfg.sensitive)

    one, two = (_replay(history, _config(tmp_path, f"f{n}"), ShardedCore(core(), n)) for n in (1, 2))
    fresh = one["models"]["purchase_propensity"]
    assert fresh["labels"] > one["kinds"]["purchase_propensity"]["labels"] > 100, "fresh samples were learned"
    assert json.dumps(two, sort_keys=True) == json.dumps(one, sort_keys=True)
