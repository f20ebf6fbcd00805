"""Input written in Kafka transactions, as a producer with exactly-once semantics writes it.

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


async def produce_in_transactions(bootstrap: str, topic: str, txs: list[Transaction]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"upstream-{topic}")
    await producer.start()
    try:
        for i in range(0, len(txs), 2):  # two transactions of ours per Kafka transaction
            async with producer.transaction():
                for tx in txs[i : i + 2]:
                    await producer.send_and_wait(topic, orjson.dumps(tx.to_dict()), key=tx.user_id.encode())
    finally:
        await producer.stop()


@pytest.mark.timeout(300)
def test_transactional_input_is_scored_and_its_markers_are_not_counted_as_waiting(
    kafka_broker: str, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    txs = [Transaction(f"x{i}", f"u{i}", "term1", 20.0 + i, T + i * 1000) for i in range(8)]
    w = WorkerProc(sc, "a").start()
    try:
        w.wait_metrics()
        run(produce_in_transactions(sc.bootstrap, sc.topics["transactions"], txs))
        risk = run(consume(sc.bootstrap, sc.topics["risk_events"], until=len(txs), timeout=120))
        assert sorted(orjson.loads(r.value)["transaction_id"] for r in risk) == [
            tx.transaction_id for tx in txs
        ]
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
