"""Input written in Kafka transactions, as a producer with exactly-once semantics writes it:
the worker reads committed records only, so an aborted transaction's are never scored
(streams/intake.py, BatchingConsumerThread).

Every transaction ends with a control record (a marker) after its last message. The worker never
commits past it (Faust commits the last message's offset + 1), so Kafka's own consumer-group lag
reads 1 on each partition after its last transaction, for good. ``riskstream_consumer_uncommitted``
counts such a partition 0 once the worker fetched past the marker, or ``RiskstreamInputStuck``
would fire on every quiet spell of such input (``BatchingConsumer.uncommitted``).
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from harness import WorkerProc, consume, group_lag, isolated_scenario, run

from modeling.records import Transaction

T = 1_528_000_000_000  # 2018-06-03


async def produce_in_transactions(
    bootstrap: str, topic: str, txs: list[Transaction], aborted: list[Transaction]
) -> None:
    """Two of ``txs`` per Kafka transaction, and before each, one of ``aborted`` in a Kafka
    transaction that the producer aborts after its record was written."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"upstream-{topic}")
    await producer.start()
    try:
        for i in range(0, len(txs), 2):
            if aborted:
                await producer.begin_transaction()
                tx = aborted.pop()
                await producer.send_and_wait(topic, orjson.dumps(tx.to_dict()), key=tx.user_id.encode())
                await producer.abort_transaction()
            async with producer.transaction():
                for tx in txs[i : i + 2]:
                    await producer.send_and_wait(topic, orjson.dumps(tx.to_dict()), key=tx.user_id.encode())
    finally:
        await producer.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_transactional_input_is_scored_and_its_markers_are_not_counted_as_waiting(
    kafka_broker: str, model_registry: Path, tmp_path: Path, isolation: str
) -> None:
    """Read committed (the default), an aborted transaction's records are never scored; read
    uncommitted (``RISKSTREAM_INPUT_ISOLATION_LEVEL``, Faust's own), they are."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    txs = [Transaction(f"x{i}", f"u{i}", "term1", 20.0 + i, T + i * 1000) for i in range(8)]
    env = {} if isolation == "read_committed" else {"RISKSTREAM_INPUT_ISOLATION_LEVEL": isolation}
    w = WorkerProc(sc, "a", env).start()
    try:
        w.wait_metrics()
        # aborted: the same users, 900 a transaction, before each pair of committed ones
        aborted = [
            Transaction(f"aborted{i}", f"u{i}", "term1", 900.0, T + i * 1000 - 1) for i in range(0, 8, 2)
        ]
        run(produce_in_transactions(sc.bootstrap, sc.topics["transactions"], txs, list(aborted)))
        # read uncommitted, Kafka hands out the aborted records too: they are in the topic
        raw = run(consume(sc.bootstrap, sc.topics["transactions"], until=12, timeout=60))
        assert sum(orjson.loads(r.value)["transaction_id"].startswith("aborted") for r in raw) == 4
        risk = run(consume(sc.bootstrap, sc.topics["risk_events"], timeout=120, idle=8))
        scored = sorted(orjson.loads(r.value)["transaction_id"] for r in risk)
        if isolation == "read_committed":
            assert scored == [tx.transaction_id for tx in txs], "an aborted transaction's record was scored"
        else:
            assert scored == sorted(tx.transaction_id for tx in aborted + txs)
        deadline = time.monotonic() + 30
        while True:
            waiting = {
                p: w.metric(
                    "riskstream_consumer_uncommitted", topic=sc.topics["transactions"], partition=str(p)
                )
                for p in range(sc.partitions)
            }
            reported = {
                int(x["partition"])
                for x in w.label_sets("riskstream_consumer_uncommitted")
                if x["topic"] == sc.topics["transactions"]
            }
            if reported == set(range(sc.partitions)) and not any(waiting.values()):
                break
            assert time.monotonic() < deadline, (waiting, reported)
            time.sleep(1)
        # Kafka's own count of the same: everything scored and committed, and still 1 on each
        # partition, the marker after its last transaction (so both partitions got some)
        assert run(group_lag(sc.bootstrap, f"rs-{sc.name}", [sc.topics["transactions"]])) == sc.partitions
        w.check_alive()
    finally:
        w.stop()


async def _fetched_before_an_open_transaction(
    bootstrap: str, topic: str
) -> tuple[bool | None, tuple[int, int] | None, int, int, int]:
    """A record, then a transaction left open: what a committed-only consumer can fetch ends
    at the open transaction's first record (the last stable offset), before the log's end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.partition_state import held_back, unfetched

    plain = AIOKafkaProducer(bootstrap_servers=bootstrap)
    upstream = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"open-{topic}")
    await plain.start()
    await upstream.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    tp = TopicPartition(topic, 0)
    try:
        await plain.send_and_wait(topic, b"{}", partition=0)
        await upstream.begin_transaction()
        await upstream.send_and_wait(topic, b"{}", partition=0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got = await consumer.getmany(tp, timeout_ms=2000)
        while not got:
            got = await consumer.getmany(tp, timeout_ms=2000)
        await consumer.getmany(tp, timeout_ms=500)  # a fetch at the stable end: its marks read
        highwater = consumer.highwater(tp)
        seen = unfetched(consumer, tp), held_back(consumer, tp)
        await upstream.abort_transaction()
        return *seen, len(got[tp]), await consumer.position(tp), highwater
    finally:
        await consumer.stop()
        await upstream.stop()
        await plain.stop()


def test_what_waits_on_an_open_transaction_is_not_counted_unfetched_but_held(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    """The input alignment waits (bounded) for a partition with messages in Kafka not handed
    out yet (streams/wiring.py, ``lagging``). Past the last stable offset there is nothing the
    worker could fetch: it waits on the producer, as a message not produced yet does."""
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=1)
    fetchable, held, fetched, position, highwater = run(
        _fetched_before_an_open_transaction(sc.bootstrap, sc.topics["transactions"])
    )
    assert (fetched, position, highwater) == (1, 1, 2)
    assert fetchable is False
    # the held-back gauges' reading: the last stable offset 1, one message past it
    assert held == (1, 1)
