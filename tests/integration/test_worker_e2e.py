"""The live scorer through the real broker: N in -> N out, dead letters, SIGKILL recovery,
two workers in one group, hot model swap under load, and verified-bundle refusal."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import orjson
import pandas as pd
import pytest
from harness import (
    Scenario,
    WorkerProc,
    consume,
    isolated_scenario,
    produce,
    run,
    state_view,
    topic_configs,
    wait_caught_up,
)

from modeling.features import FeatureConfig, FeatureEngine, FeatureRunner, TerminalState, UserState
from modeling.records import ClickEvent, Label, Transaction, parse_risk_event
from modeling.registry import ModelRegistry
from streams.broker.topics import dead_letter_max_bytes, terminal_labels_topic
from streams.replay import replay_events
from streams.terminal_overlay import APPLIED_KEY, decode_position
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """Two weeks of 250 customers (~6.7k transactions)."""
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[:250]
    return df[df["user_id"].isin(users)].reset_index(drop=True)


def _events(df: pd.DataFrame) -> list[Transaction | ClickEvent | Label]:
    return list(event_stream(df, FeatureConfig()).events())


def _replay(sc: Scenario, events: list[Transaction | ClickEvent | Label]) -> None:
    run(replay_events(events, sc.settings(), progress=False))


def _risk_ids(sc: Scenario, n: int, timeout: float = 240.0) -> list[str]:
    recs = run(consume(sc.bootstrap, sc.topics["risk_events"], until=n, timeout=timeout, idle=None))
    return [orjson.loads(r.value)["transaction_id"] for r in recs]


@pytest.mark.parametrize(
    "consumer_in_loop", ["true", "false"], ids=["consumer-on-the-loop", "faust-consumer-thread"]
)
def test_n_in_n_out_and_dead_letters(
    kafka_broker: str, model_registry: Path, tmp_path: Path, sample: pd.DataFrame, consumer_in_loop: str
) -> None:
    """Also with Faust's own consumer thread (``RISKSTREAM_CONSUMER_IN_LOOP=false``), the way
    back from streams/in_loop.py."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path)
    df = sample.iloc[:1500]
    w = WorkerProc(sc, "a", env={"RISKSTREAM_CONSUMER_IN_LOOP": consumer_in_loop}).start()
    try:
        w.wait_metrics()
        consumer = "InLoopBatchingConsumer" if consumer_in_loop == "true" else "BatchingConsumer"
        # the metrics endpoint comes up before Faust starts its services: wait for the line
        deadline = time.monotonic() + 60
        while f"[^--{consumer}]: Starting" not in w.log_path.read_text() and time.monotonic() < deadline:
            w.check_alive()
            time.sleep(0.2)
        assert f"[^--{consumer}]: Starting" in w.log_path.read_text(), w.log_tail()
        _replay(sc, _events(df))
        good = orjson.loads(orjson.dumps(Transaction("ok-1", "u1", "t1", 10.0, 1_528_000_000_000).to_dict()))
        bad = [
            b"{not json",
            orjson.dumps({**good, "amount": "12.5"}),
            orjson.dumps({k: v for k, v in good.items() if k != "user_id"}),
            b'{"schema": "transaction/1", "amount": NaN}',
            orjson.dumps({**good, "text": "x" * 70_000}),
            orjson.dumps({**good, "event_time": "2018-06-01"}),
            orjson.dumps({**good, "schema": "transaction/9"}),
            # an unpaired surrogate escape: no UTF-8 for its risk event or state key (a poison
            # pill that stopped the worker after every restart, until session 34)
            orjson.dumps({**good, "terminal_id": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"\\udc00"),
        ]
        run(
            produce(
                sc.bootstrap, sc.topics["transactions"], [(b"u1", v) for v in bad], max_request_size=1 << 20
            )
        )
        run(produce(sc.bootstrap, sc.topics["clickstream"], [(b"u1", b'{"schema": "click/1"}')]))
        # a record with no value (a tombstone): was a TypeError in the scoring step
        run(produce(sc.bootstrap, sc.topics["labels"], [(b"u1", None)]))
        # the internal terminal-labels topic holds only labels the workers validated; a record
        # written there by anything else must not stop the terminal loop on every restart
        internal = terminal_labels_topic(sc.settings())
        run(produce(sc.bootstrap, internal, [(b"t1", b'{"schema": "label/0"}')]))
        # a valid transaction of u1 keyed by another id: it would build u1 a second state in
        # another partition (require_user_keys)
        miskeyed = orjson.dumps({**good, "transaction_id": "ok-2"})
        run(produce(sc.bootstrap, sc.topics["transactions"], [(b"u2", miskeyed)]))
        # as large as the input topic takes (the broker's default limit, 1,048,588 bytes a record
        # batch): its dead letter, the same bytes plus headers, must fit the dead-letter topic
        at_limit = b"x" * 1_048_400
        run(produce(sc.bootstrap, sc.topics["transactions"], [(b"u1", at_limit)], max_request_size=2 << 20))
        bad.append(at_limit)
        # ok-1 sent twice (a producer's retry, a new offset): scored once, the second counted
        run(produce(sc.bootstrap, sc.topics["transactions"], [(b"u1", orjson.dumps(good))] * 2))
        n = len(df) + 1
        ids = _risk_ids(sc, n)
        assert Counter(ids) == Counter([*df["transaction_id"].tolist(), "ok-1"])  # exactly N, no duplicates
        dead = run(consume(sc.bootstrap, sc.topics["dead_letter"], until=len(bad) + 4, timeout=60))
        assert len(dead) == len(bad) + 4
        originals = {bytes(r.value) for r in dead if r.value is not None}
        assert set(bad) | {miskeyed} <= originals  # the original bytes, untouched
        sources = (sc.topics["transactions"], sc.topics["clickstream"], sc.topics["labels"], internal)
        assert {dict(r.headers)["riskstream-source-topic"].decode() for r in dead} == set(sources)
        for r in dead:
            h = {k: v.decode() for k, v in r.headers}
            assert h["riskstream-source-topic"] in sources
            assert int(h["riskstream-source-offset"]) >= 0
            assert h["riskstream-error"] and h["riskstream-error-field"]
        fields = {dict(r.headers)["riskstream-error-field"].decode() for r in dead}
        assert {"<message>", "amount", "user_id", "event_time", "schema", "terminal_id", "<key>"} <= fields
        ev = parse_risk_event(
            next(r.value for r in run(consume(sc.bootstrap, sc.topics["risk_events"], until=1, timeout=30)))
        )
        assert ev.model_version.startswith("behaviour-") and ev.feature_set == FeatureConfig().feature_set
        assert set(ev.latency_ms) == {"queue", "inference", "end_to_end"}
        w.check_alive()  # the worker carried on
        assert w.metric("riskstream_dead_letters_total") == len(bad) + 4
        tombstones = [r for r in dead if r.value is None]
        assert [dict(r.headers)["riskstream-source-topic"].decode() for r in tombstones] == [
            sc.topics["labels"]
        ]
        assert w.metric("riskstream_dead_letters_total", topic=internal, field="schema") == 1
        assert w.metric("riskstream_events_out_total", topic=sc.topics["risk_events"]) == n
        assert w.metric("riskstream_duplicate_transactions_total") == 1
        assert w.metric("riskstream_batch_size_count") > 0
        # Everything scored is committed: nothing after the group's committed offsets (what
        # RiskstreamInputStuck reads; reported every 5 s, committed every second), on every
        # partition of the three input topics (nothing committed: test_uncommitted.py)
        deadline = time.monotonic() + 30
        inputs = {
            (sc.topics[k], p) for k in ("transactions", "clickstream", "labels") for p in range(sc.partitions)
        }
        while True:
            owned = w.label_sets("riskstream_consumer_uncommitted")
            waiting = w.metric("riskstream_consumer_uncommitted")
            if {(x["topic"], int(x["partition"])) for x in owned} == inputs and not waiting:
                break
            assert time.monotonic() < deadline, (
                sorted((x["topic"], x["partition"]) for x in owned),
                waiting,
                w.log_tail(),
            )
            time.sleep(1)
        # A restarted worker rebuilds its tables by reading their whole changelogs (Faust's
        # memory store, faust-streaming #284); compaction keeps that to one record per key.
        logs = [f"rs-{sc.name}-user-state-changelog", f"rs-{sc.name}-terminal-state-changelog"]
        configs = run(topic_configs(sc.bootstrap, logs))
        assert {t: configs[t]["cleanup.policy"] for t in logs} == dict.fromkeys(logs, "compact")
        # the dead-letter topic takes a stored state of the largest size, with its headers
        dlq = sc.topics["dead_letter"]
        limit = run(topic_configs(sc.bootstrap, [dlq]))[dlq]["max.message.bytes"]
        assert int(limit) == dead_letter_max_bytes(sc.settings()) > sc.settings().state_max_record_bytes
    finally:
        w.stop()


def _republish(registry: ModelRegistry, version: str, staging: Path, **extra: str) -> str:
    """Publish a copy of ``version``'s files as a new version."""
    shutil.copytree(registry.path(version), staging, ignore=shutil.ignore_patterns("manifest.json"))
    reserved = {"version", "kind", "created", "files", "libraries"}
    manifest = {k: v for k, v in registry.manifest(version).items() if k not in reserved}
    return registry.publish("behaviour", staging, manifest | extra)


def _terminal_view(ts: TerminalState, config: FeatureConfig) -> tuple[object, ...]:
    """The labels a feature can still use: entries past the retention are pruned at times that
    depend on the order labels arrived in, which differs between the live path and a replay."""
    keep_from = ts.latest_label_ms - config.label_delay_ms - config.terminal_windows_ms[-1] - 2 * 86_400_000
    return (ts.latest_label_ms, {k: v for k, v in ts.labels.items() if v[0] > keep_from})


def _assert_tables_equal_replay(sc: Scenario, events: list[Transaction | ClickEvent | Label]) -> None:
    """The latest record per key of the user-state and terminal-state changelogs equals the
    state a from-scratch offline replay of ``events`` builds."""
    changelog = run(consume(sc.bootstrap, f"rs-{sc.name}-user-state-changelog", timeout=30, idle=3))
    latest: dict[str, bytes] = {}
    for r in changelog:
        if r.value is None:  # a tombstone: the state was deleted (streams/retention.py)
            latest.pop(orjson.loads(r.key), None)
        else:
            latest[orjson.loads(r.key)] = r.value  # table keys are JSON strings
    config = FeatureConfig()
    runner = FeatureRunner(FeatureEngine(config))
    for _ in runner.run(events):
        pass
    assert set(latest) == set(runner.users)
    for uid, st in runner.users.items():
        live = UserState.from_bytes(latest[uid], config)
        assert state_view(live) == state_view(st), uid
    # So does terminal state: every label reached its terminal, none was lost to a stale
    # read (the writer reads its own changelog back into the global table).
    term_log = run(consume(sc.bootstrap, f"rs-{sc.name}-terminal-state-changelog", timeout=30, idle=3))
    terms: dict[str, bytes] = {}
    for r in term_log:
        terms[orjson.loads(r.key)] = r.value
    # and the terminal loop's position (streams/terminal_sync.py): past every forwarded label
    assert (decode_position(terms.pop(APPLIED_KEY)) or 0) >= sum(isinstance(e, Label) for e in events)
    assert set(terms) == set(runner.terminals)
    for tid, ts in runner.terminals.items():
        live_t = TerminalState.from_bytes(terms[tid])
        assert _terminal_view(live_t, config) == _terminal_view(ts, config), tid


def _assert_each_user_state_held_once(
    workers: list[WorkerProc], events: list[Transaction | ClickEvent | Label]
) -> None:
    """Each user's state is in exactly one worker's store: no standby copies of another worker's
    partitions (``table_standby_replicas`` 0). With Faust's default of 1 each worker also reads
    the other's user-state changelog partitions and applies them to its store 1,000 records at a
    time (Faust's standby buffer, more than this test writes). The gauges are reported every
    5 s: they must settle first."""
    for w in workers:
        assert w.metric("riskstream_table_partitions", table="user", role="standby") == 0
        assert w.metric("riskstream_table_partitions", table="terminal", role="active") == 1
    assert sum(w.metric("riskstream_table_partitions", table="user", role="active") for w in workers) == 4
    runner = FeatureRunner(FeatureEngine(FeatureConfig()))
    for _ in runner.run(events):
        pass
    n_users = len(runner.users)
    held: list[float] = []
    deadline = time.monotonic() + 60
    while True:
        now = [w.metric("riskstream_states", kind="user") for w in workers]
        if now == held and sum(now) >= n_users:
            break
        assert time.monotonic() < deadline, f"user states {now}, {n_users} users"
        held = now
        time.sleep(6)
    assert all(n > 0 for n in held), held
    assert sum(held) == n_users, f"user states per worker {held}: {n_users} users"


def test_sigkill_mid_stream_loses_nothing_and_restores_state(
    kafka_broker: str, model_registry: Path, tmp_path: Path, sample: pd.DataFrame
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    events = _events(sample)
    n_tx = sum(isinstance(e, Transaction) for e in events)
    half = len(events) // 2
    w = WorkerProc(sc, "first").start()
    try:
        w.wait_metrics()
        _replay(sc, events[:half])
        # Kill it mid-stream: once it has emitted some risk events but not all of the first half.
        deadline = time.monotonic() + 180
        while w.metric("riskstream_events_out_total", topic=sc.topics["risk_events"]) < 200:
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.2)
        w.kill()
    finally:
        w.kill()
    _replay(sc, events[half:])
    w2 = WorkerProc(sc, "second").start()
    try:
        w2.wait_metrics()
        # Done when the group has committed every input message: a commit follows the delivery
        # of the batch's risk events and changelog records.
        wait_caught_up(sc, timeout=300, worker=w2, terminals=True)
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], timeout=60, idle=3))
        seen = {orjson.loads(r.value)["transaction_id"] for r in recs}
        assert seen == {e.transaction_id for e in events if isinstance(e, Transaction)}, "lost events"
        assert len(recs) >= n_tx  # at-least-once: redelivered ones may appear twice
        # Window state recovered from the changelog equals a from-scratch replay.
        _assert_tables_equal_replay(sc, events)
    finally:
        w2.stop()


def test_worker_joining_mid_stream_rebalances_without_hang_or_loss(
    kafka_broker: str, model_registry: Path, tmp_path: Path, sample: pd.DataFrame
) -> None:
    """A second worker joins while events stream in: partitions move away from the first worker
    with messages in flight (taken, scored, waiting for their state flush), the joiner recovers
    their state from the changelog while their input waits (faust-streaming #74: recovery hung
    with a full stream buffer), and the group still scores every transaction and ends with the
    state of a from-scratch replay."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=4)
    events = _events(sample)
    n_tx = sum(isinstance(e, Transaction) for e in events)
    step = len(events) // 16 + 1
    chunks = [events[i : i + step] for i in range(0, len(events), step)]
    # Small batches (32 messages), so that many are in flight when partitions move; the input
    # buffer's high-water mark is 16 batches with the alignment on (streams/wiring.py).
    small = {"RISKSTREAM_PIPELINE_MAX_BATCH": "32"}
    w1 = WorkerProc(sc, "first", env=small).start()
    w2 = WorkerProc(sc, "joiner", env=small)

    def joined() -> bool:
        """w2 owns input partitions (it reports their lag every 5 s)."""
        try:
            return "riskstream_consumer_lag{" in w2.metrics()
        except OSError:  # its metrics endpoint is not up yet
            return False

    try:
        w1.wait_metrics()
        for chunk in chunks[:2]:
            _replay(sc, chunk)
        deadline = time.monotonic() + 180
        while w1.metric("riskstream_events_out_total", topic=sc.topics["risk_events"]) < 200:
            assert time.monotonic() < deadline, w1.log_tail()
            time.sleep(0.2)
        w2.start()
        # The stream goes on while w2 starts, joins and recovers; the last chunks wait until it
        # owns partitions, so that both score after the move.
        for i, chunk in enumerate(chunks[2:], start=2):
            if i == len(chunks) - 4:
                deadline = time.monotonic() + 180
                while not joined():
                    assert time.monotonic() < deadline, w2.log_tail()
                    w1.check_alive()
                    w2.check_alive()
                    time.sleep(0.5)
            _replay(sc, chunk)
            time.sleep(0.75)
        wait_caught_up(sc, timeout=300, worker=w1, terminals=True)  # a recovery hang fails here
        for w in (w1, w2):
            w.check_alive()
            assert w.metric("riskstream_events_in_total") > 0, "each worker must own partitions"
        # the joiner recovered the states of the partitions it took a fetch at a time
        # (streams/replica.py, during_recovery)
        assert w2.metric("riskstream_user_state_records_read_total", path="direct") > 0
        # A revocation runs a full collection (streams/gc_pauses.py): w1's first assignment and
        # the rebalance w2's joining made.
        assert w1.metric("riskstream_gc_pause_seconds_count", generation="sweep") >= 2
        # Consumer lag: each input partition reported by exactly one worker (the one that gave
        # partitions away must stop reporting them), within two 5 s reporting rounds.
        inputs = {sc.topics[k] for k in ("transactions", "clickstream", "labels")}
        everyone = {(t, str(p)) for t in inputs for p in range(sc.partitions)}
        deadline = time.monotonic() + 12
        while True:
            owned = [
                {(x["topic"], x["partition"]) for x in w.label_sets("riskstream_consumer_lag")}
                for w in (w1, w2)
            ]
            if not owned[0] & owned[1] and owned[0] | owned[1] == everyone:
                break
            assert time.monotonic() < deadline, f"lag reported for {owned}, expected each of {everyone} once"
            time.sleep(1.0)
        recs = run(consume(sc.bootstrap, sc.topics["risk_events"], timeout=60, idle=3))
        seen = {orjson.loads(r.value)["transaction_id"] for r in recs}
        assert seen == {e.transaction_id for e in events if isinstance(e, Transaction)}, "lost events"
        assert len(recs) >= n_tx  # at-least-once: redelivered ones may appear twice
        _assert_tables_equal_replay(sc, events)
    finally:
        w1.stop()
        w2.stop()


INFERENCE_CHILD = "modeling.inference_process"


def test_two_workers_share_partitions_and_swap_models_under_load(
    kafka_broker: str, model_registry: Path, tmp_path: Path, sample: pd.DataFrame
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=4)
    registry = ModelRegistry(sc.registry_dir)
    first = registry.current("behaviour")
    assert first is not None
    events = _events(sample)
    n_tx = sum(isinstance(e, Transaction) for e in events)
    # w2 runs its model in a child process (modeling/inference_process.py), w1 in-process
    child_env = {"RISKSTREAM_INFERENCE_PROCESS": "true"}
    workers = [WorkerProc(sc, "w1").start(), WorkerProc(sc, "w2", env=child_env).start()]
    try:
        for w in workers:
            w.wait_metrics()
        assert len(workers[1].children(INFERENCE_CHILD)) == 1 and not workers[0].children(INFERENCE_CHILD)
        time.sleep(5)  # both in the group before traffic
        _replay(sc, events[: len(events) // 2])
        # A tampered bundle is refused and the old model keeps serving.
        bad = _republish(registry, first, tmp_path / "bad", note="tampered")
        weights = next(iter(registry.path(bad).rglob("*.pdiparams")))
        weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
        deadline = time.monotonic() + 60
        while sum(w.metric("riskstream_model_rejections_total") for w in workers) < 2:
            assert time.monotonic() < deadline, workers[0].log_tail()
            time.sleep(0.5)
        # A good new version is picked up without a restart, mid-stream: the workers swap while
        # they score the next quarter of the events; the last quarter goes in once both have
        # swapped, so the new version must show in the output.
        registry.rollback("behaviour", to=first)
        good = _republish(registry, first, tmp_path / "good", note="retrained")
        second = events[len(events) // 2 :]
        _replay(sc, second[: len(second) // 2])
        deadline = time.monotonic() + 60
        while min(w.metric("riskstream_model_swaps_total", kind="behaviour") for w in workers) < 1:
            assert time.monotonic() < deadline, workers[0].log_tail()
            time.sleep(0.5)
        _replay(sc, second[len(second) // 2 :])
        recs = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            recs = run(consume(sc.bootstrap, sc.topics["risk_events"], timeout=20, idle=3))
            if len({orjson.loads(r.value)["transaction_id"] for r in recs}) >= n_tx:
                break
        ids = {orjson.loads(r.value)["transaction_id"] for r in recs}
        assert ids == {e.transaction_id for e in events if isinstance(e, Transaction)}  # nothing lost
        versions = Counter(orjson.loads(r.value)["model_version"] for r in recs)
        assert bad not in versions
        assert good in versions, versions
        for w in workers:
            w.check_alive()
            assert w.metric("riskstream_events_in_total") > 0, "each worker must own partitions"
            assert w.metric("riskstream_model_swaps_total", kind="behaviour") >= 1
        # the swapped-out model's child has exited; the serving model's is the only one left
        deadline = time.monotonic() + 30
        while len(workers[1].children(INFERENCE_CHILD)) != 1:
            assert time.monotonic() < deadline, workers[1].children(INFERENCE_CHILD)
            time.sleep(0.5)
        _assert_each_user_state_held_once(workers, events)
    finally:
        for w in workers:
            w.stop()
