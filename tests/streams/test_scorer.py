"""The worker's scoring side in a child process: the same outputs as in the worker's own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis

from features.events import parse_ts_ms
from streams.embedded import free_port
from streams.pipeline import Incoming, labelled_to_json, labels_from_record
from streams.scorer import Scorer, ScorerDied, ScorerPool, ScorerProcess
from streams.settings import Settings
from tests.streams.test_redis_state import _messages as simulated_messages

pytestmark = pytest.mark.integration


def _messages(n: int) -> list[Incoming]:
    return [*simulated_messages(n), Incoming("leadpulse.events.web", 0, n, b"c1", b"{not json", 0)]


def _run(scorer: Scorer | ScorerProcess | ScorerPool, messages: list[Incoming]) -> list[tuple[str, bytes | None]]:
    records: list[tuple[str, bytes | None]] = []
    for i in range(0, len(messages), 250):
        out, versions = scorer.score(messages[i:i + 250])
        assert out.counts["in"] == len(messages[i:i + 250])
        assert set(versions) == {"purchase_propensity", "churn_risk", "campaign_response"}
        records += [(r.topic, r.value) for r in out.records]
    return records


def test_a_scoring_process_gives_the_outputs_of_an_in_process_scorer(redis_url: str) -> None:
    messages = _messages(3000)
    local = Scorer(Settings(redis_url=redis_url, redis_prefix="sc-local"))
    remote = ScorerProcess(Settings(redis_url=redis_url, redis_prefix="sc-remote"))
    try:
        expected = _run(local, messages)
        got = _run(remote, messages)
        assert got == expected
        assert any(topic == "leadpulse.dlq" for topic, _ in got)
        assert sum(topic == "leadpulse.scores" for topic, _ in got) > 100
        cid = orjson.loads(messages[0].value or b"")["customer_id"]
        assert remote.customer_scores(cid) == local.customer_scores(cid)
        assert remote.customer_scores("nobody") is None
        [tombstone] = remote.erase(cid)
        assert tombstone.value is None and remote.customer_scores(cid) is None
    finally:
        remote.close()
    assert not remote._proc.is_alive()


def test_errors_come_back_with_their_type_and_a_dead_process_stops_the_worker(redis_url: str) -> None:
    remote = ScorerProcess(Settings(redis_url=redis_url, redis_prefix="sc-err"))
    try:
        # An error in the child comes back with its type, and the child serves on.
        with pytest.raises(ValueError, match="unknown call"):
            remote._call("nope")
        assert remote.refresh(True) == []  # the process still serves after an error
        assert remote._proc.pid is not None
        os.kill(remote._proc.pid, signal.SIGKILL)
        remote._proc.join(10)
        with pytest.raises(ScorerDied):
            remote.refresh(True)
    finally:
        remote.close()


def test_the_scoring_process_ignores_sigterm_and_exits_with_the_pipe(redis_url: str) -> None:
    remote = ScorerProcess(Settings(redis_url=redis_url, redis_prefix="sc-term"))
    try:
        assert remote.refresh(True) == []
        assert remote._proc.pid is not None
        # A worker's process group gets SIGTERM at shutdown: the scorer must outlive the worker's
        # last batch, and leave with it.
        os.kill(remote._proc.pid, signal.SIGTERM)
        assert remote.refresh(True) == []
    finally:
        remote.close(timeout=10)
    assert remote._proc.exitcode == 0


def test_a_score_call_that_fails_half_way_is_retried_with_the_same_positions(redis_url: str) -> None:
    messages = simulated_messages(1500)
    expected = _run(Scorer(Settings(redis_url=redis_url, redis_prefix="sc-once")), messages)
    scorer = Scorer(Settings(redis_url=redis_url, redis_prefix="sc-retry"))
    apply, calls = scorer.core.features.apply, []

    def flaky(updates):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:  # the first batch's (one apply for its three shards): nothing is applied
            raise ConnectionError("redis went away")
        return apply(updates)

    scorer.core.features.apply = flaky  # type: ignore[method-assign]
    records: list[tuple[str, bytes | None]] = []
    for i in range(0, len(messages), 250):
        try:
            out, _ = scorer.score(messages[i:i + 250])
        except ConnectionError:
            assert i == 0
            out, _ = scorer.score(messages[i:i + 250])  # the worker retries the same batch
        records += [(r.topic, r.value) for r in out.records]
    assert len(calls) > 3 and records == expected


def _by_customer(records: list[tuple[str, bytes | None]]) -> dict[str, list[tuple[str, bytes | None]]]:
    """Records per customer, in order; RFM grades left out: each scoring process learns its
    own quintile edges from the customers it scores (as separate workers do)."""
    out: dict[str, list[tuple[str, bytes | None]]] = {}
    for topic, value in records:
        if topic == "leadpulse.labels" and value:  # one record holds a batch's examples
            for ex in labels_from_record(value):
                out.setdefault(ex.customer_id, []).append((topic, labelled_to_json(ex)))
            continue
        record = orjson.loads(value) if value and topic != "leadpulse.dlq" else {}
        if record.get("kind") == "rfm_segment":
            continue
        out.setdefault(record.get("customer_id", ""), []).append((topic, value))
    return out


def test_a_pool_of_scoring_processes_gives_each_customer_the_outputs_of_one_scorer(redis_url: str) -> None:
    messages = _messages(3000)
    expected = _run(Scorer(Settings(redis_url=redis_url, redis_prefix="sc-one")), messages)
    pool = ScorerPool(Settings(redis_url=redis_url, redis_prefix="sc-pool"), 2)
    try:
        got = _run(pool, messages)
        # Each child owns its partitions; a customer's records come in the same order.
        assert _by_customer(got) == _by_customer(expected)
        assert len(_by_customer(got)) > 40 and sum(map(len, _by_customer(got).values())) > 1000
        # Both children scored: the shards (partitions 0-2) are split between them.
        assert {p % 2 for p in {m.partition for m in messages}} == {0, 1}
        cid = orjson.loads(messages[0].value or b"")["customer_id"]
        assert pool.customer_scores(cid) is not None
        assert pool.refresh(True) == []
    finally:
        pool.close()
    assert not any(child._proc.is_alive() for child in pool.children)


def test_a_pool_retry_calls_only_the_children_that_failed(redis_url: str) -> None:
    messages = simulated_messages(1500)
    expected = _run(Scorer(Settings(redis_url=redis_url, redis_prefix="sc-pool-one")), messages)
    pool = ScorerPool(Settings(redis_url=redis_url, redis_prefix="sc-pool-retry"), 2)
    calls: list[int] = []
    try:
        first, second = pool.children
        real_first, real_second = first.score, second.score

        def counted(messages):  # type: ignore[no-untyped-def]
            calls.append(0)
            return real_first(messages)

        def flaky_once(messages):  # type: ignore[no-untyped-def]
            calls.append(1)
            if calls.count(1) == 1:
                raise ConnectionError("redis went away")
            return real_second(messages)

        first.score, second.score = counted, flaky_once  # type: ignore[method-assign]
        records: list[tuple[str, bytes | None]] = []
        for i in range(0, len(messages), 250):
            try:
                out, _ = pool.score(messages[i:i + 250])
            except ConnectionError:
                assert i == 0 and sorted(calls) == [0, 1]  # both children were called at once
                out, _ = pool.score(messages[i:i + 250])
                assert calls.count(0) == 1  # the child that had scored its part is not called again
            records += [(r.topic, r.value) for r in out.records]
        assert _by_customer(records) == _by_customer(expected)
    finally:
        pool.close()


def test_a_custom_config_scores_its_own_kinds_and_features_on_redis(redis_url: str, tmp_path) -> None:
    import yaml

    from tests.scoring.test_config import UPSELL

    path = tmp_path / "upsell.yaml"
    path.write_text(yaml.safe_dump(UPSELL))
    scorer = Scorer(Settings(redis_url=redis_url, redis_prefix="sc-custom", scoring_config=str(path)))
    kinds: set[str] = set()
    versions: dict[str, int] = {}
    for i in range(0, 3000, 250):
        out, versions = scorer.score(simulated_messages(3000)[i:i + 250])
        kinds |= {orjson.loads(r.value)["kind"] for r in out.records if r.topic == "leadpulse.scores" and r.value}
    assert {"repeat_purchase_30d", "vip_points"} <= kinds and "rfm_segment" not in kinds
    assert "repeat_purchase_30d" in versions
    # The added feature is computed from the state kept in Redis, like the default ones.
    web = [orjson.loads(m.value or b"") for m in simulated_messages(3000) if m.topic.endswith("web")]
    cid, last = web[-1]["customer_id"], max(parse_ts_ms(e["ts"]) for e in web if e["customer_id"] == web[-1]["customer_id"])
    vector = scorer.engine.vector(scorer.features.read([cid])[cid], last)
    assert vector["sessions_90d"] >= 1 and vector["sessions_90d"] >= vector["sessions_30d"]


class CuttableProxy:
    """A TCP relay to Redis that can be cut (connections closed, new ones refused) and opened again."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        for sock in [self._listener, *self._socks]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._listener, self._socks = None, []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            sock.close()


def test_batches_sent_ahead_through_a_redis_outage_give_every_output_once(redis_url: str) -> None:
    """The worker sends each batch to the scoring process before the one ahead is answered.
    Redis goes away for one batch: it fails, the batch sent behind it is not scored first,
    and once both are sent again the outputs are an uninterrupted scorer's."""
    messages = simulated_messages(2000)
    batches = [messages[i:i + 250] for i in range(0, len(messages), 250)]
    expected = _run(Scorer(Settings(redis_url=redis_url, redis_prefix="sc-ahead-once")), messages)
    target = urlsplit(redis_url)
    proxy = CuttableProxy(target.port or 6379)
    via = urlunsplit(target._replace(netloc=target.netloc.replace(f":{target.port}", f":{proxy.port}")))
    remote = ScorerProcess(Settings(redis_url=via, redis_prefix="sc-ahead"))
    records: list[tuple[str, bytes | None]] = []
    failures = 0
    try:
        remote.submit(0, batches[0])
        for seq, batch in enumerate(batches):
            if seq == 4:
                proxy.cut()  # batch 4 meets no Redis; 5 is sent behind it all the same
            if seq + 1 < len(batches):
                remote.submit(seq + 1, batches[seq + 1])
            while True:
                try:
                    out, _ = remote.collect(seq, batch)
                    break
                except (ConnectionError, redis.ConnectionError):
                    failures += 1
                    assert seq == 4 and failures == 1
                    proxy.open()
                    remote.submit(seq, batch)  # the worker's retry, in place
            records += [(r.topic, r.value) for r in out.records]
    finally:
        remote.close()
        proxy.cut()
    assert failures == 1
    assert records == expected


def test_live_scoring_dead_letters_an_event_more_than_the_lateness_ahead_of_the_wall_clock(redis_url: str) -> None:
    # A skewed client clock 5 h ahead (within decode's one-day bound) moved the customer's
    # clock, and their real events were then dropped as late, only counted.
    import time

    now_ms = int(time.time() * 1000)

    def web(eid: str, ts_ms: int) -> bytes:
        return orjson.dumps({"event_id": eid, "customer_id": "c-skew", "ts": ts_ms, "type": "web",
                             "action": "product_view", "session_id": "s1"})

    scorer = Scorer(Settings(redis_url=redis_url, redis_prefix="sc-ahead"))
    out, _ = scorer.score([Incoming("leadpulse.events.web", 0, 0, b"c-skew", web("w-ahead", now_ms + 5 * 3_600_000)),
                           Incoming("leadpulse.events.web", 0, 1, b"c-skew", web("w-now", now_ms))])
    [dead] = [r for r in out.records if r.topic == "leadpulse.dlq"]
    assert dict(dead.headers)["__connect.errors.stage"] == b"event_time"
    assert out.counts["applied"] == 1 and out.counts["late"] == 0


@pytest.mark.parametrize("made", [True, False], ids=["made", "not-made"])
@pytest.mark.parametrize("lost", [1, 2, 5, 9])
def test_a_save_whose_reply_is_lost_is_redone_only_if_it_was_not_made(redis_url: str, lost: int, made: bool) -> None:
    """The connection dropped on a save (a network blip, a proxy cut): Redis ran it and its
    reply was lost (``made``), or it never reached Redis. The worker retries the batch, and
    must neither lose the outputs of what was saved nor make them twice. Before, a round of
    due customers saved without its reply was taken for one never made: the retry found its
    customers' ticks and labels done, and their scores and labels were never published."""
    messages = simulated_messages(1500)
    expected = _run(Scorer(Settings(redis_url=redis_url, redis_prefix=f"sc-lost-once-{lost}-{made}")), messages)
    scorer = Scorer(Settings(redis_url=redis_url, redis_prefix=f"sc-lost-{lost}-{made}"))
    save, calls = scorer.core.state.save, []

    def cut(shards, token=None):  # type: ignore[no-untyped-def]
        calls.append(token)
        if len(calls) == lost:
            if made:
                save(shards, token)
            raise redis.ConnectionError("connection lost")
        return save(shards, token)

    scorer.core.state.save = cut  # type: ignore[method-assign]
    records: list[tuple[str, bytes | None]] = []
    failures = 0
    for i in range(0, len(messages), 250):
        while True:
            try:
                out, _ = scorer.score(messages[i:i + 250])
                break
            except redis.ConnectionError:
                failures += 1
        records += [(r.topic, r.value) for r in out.records]
    assert calls[lost - 1] is not None  # a batch's save, given a token
    assert failures == 1 and records == expected
