"""An input record larger than the dead-letter topic takes: its dead letter is cut to fit, with
the original's length and digest, and the worker scores on.

Input topics are the producers' (an operator may let one take 4 MB records), and so may be the
dead-letter topic (created before the worker, with the broker's 1 MB default). riskstream
creates it to take the largest stored state and 64 KiB more
(streams.broker.topics.dead_letter_max_bytes). Until session 35 a dead letter over the topic's
limit, its bytes untouched, was refused by the broker and the worker stopped, then met the same
record after every restart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from harness import WorkerProc, consume, isolated_scenario, produce, run

from modeling.records import Transaction
from streams.broker.topics import DEAD_LETTER_HEADROOM, ensure_topics
from streams.unreadable import MAX_KEY_BYTES

STATE_MAX = 1 << 20  # the smallest Settings.state_max_record_bytes allows


@pytest.mark.parametrize("dlq", ["riskstream's", "the broker's default"])
def test_a_record_over_the_dead_letter_limit_is_cut_and_the_worker_scores_on(
    kafka_broker: str, model_registry: Path, tmp_path: Path, dlq: str
) -> None:
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=1)
    t = sc.topics
    big_inputs = {"max.message.bytes": str(4 << 20), "retention.ms": "-1"}
    inputs = (t["transactions"], t["clickstream"], t["labels"])
    run(ensure_topics(sc.bootstrap, dict.fromkeys(inputs, 1), configs=dict.fromkeys(inputs, big_inputs)))
    room = STATE_MAX  # a dead letter keeps the largest state's size of a value
    if dlq != "riskstream's":
        run(ensure_topics(sc.bootstrap, {t["dead_letter"]: 1}))  # 1,048,588 bytes, Kafka's default
        room = 1_048_588 - DEAD_LETTER_HEADROOM
    w = WorkerProc(sc, "a", env={"RISKSTREAM_STATE_MAX_RECORD_BYTES": str(STATE_MAX)}).start()
    try:
        w.wait_metrics()
        huge = b"{" + b"x" * (2 << 20)  # 2 MiB of bad JSON: over the 1 MiB + 64 KiB the DLQ takes
        long_key = b"k" * (MAX_KEY_BYTES + 5)  # a key no user id has: dead-lettered as <key>
        first = orjson.dumps(Transaction("ok-1", "u1", "t1", 10.0, 1_528_000_000_000).to_dict())
        last = orjson.dumps(Transaction("ok-2", "u1", "t1", 12.0, 1_528_000_060_000).to_dict())
        items = [(b"u1", first), (b"u1", huge), (long_key, first), (b"u1", last)]
        run(produce(sc.bootstrap, t["transactions"], items, max_request_size=4 << 20))

        scored = run(consume(sc.bootstrap, t["risk_events"], until=2, timeout=120, idle=None))
        assert sorted(orjson.loads(r.value)["transaction_id"] for r in scored) == ["ok-1", "ok-2"]
        dead = run(consume(sc.bootstrap, t["dead_letter"], until=2, timeout=60))
        assert len(dead) == 2, [dict(r.headers) for r in dead]
        by_offset = {int(dict(r.headers)["riskstream-source-offset"]): r for r in dead}
        assert sorted(by_offset) == [1, 2]

        cut = by_offset[1]
        h = {k: v.decode() for k, v in cut.headers}
        assert bytes(cut.value) == huge[:room]
        assert int(h["riskstream-value-bytes"]) == len(huge)
        assert h["riskstream-value-sha256"] == hashlib.sha256(huge).hexdigest()
        assert h["riskstream-error-field"] == "<message>"
        assert bytes(cut.key) == b"u1" and "riskstream-key-bytes" not in h

        keyed = by_offset[2]
        h = {k: v.decode() for k, v in keyed.headers}
        assert bytes(keyed.key) == long_key[:MAX_KEY_BYTES] and bytes(keyed.value) == first
        assert int(h["riskstream-key-bytes"]) == len(long_key)
        assert h["riskstream-key-sha256"] == hashlib.sha256(long_key).hexdigest()
        assert h["riskstream-error-field"] == "<key>" and "riskstream-value-bytes" not in h

        w.check_alive()  # the worker carried on
        assert w.metric("riskstream_dead_letters_total") == 2
    finally:
        w.stop()
