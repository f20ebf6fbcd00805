"""The baseline of ``bench_worker.py``: a plain Faust agent written the usual way.

    python benchmarks/plain_faust_agent.py worker -l warning --web-port 6070

One event at a time (``async for value in stream``). Per event: parse it, read the user's
:class:`~modeling.features.UserState` from a Faust table (bytes snapshot, decoded per event),
run the same feature engine as the worker, write the snapshot back (one changelog record per
event), and for a transaction call the model on that row alone (batch 1, the same
:class:`~modeling.predictor.Predictor` through the same :class:`~modeling.scoring.Scorer`) and
send the risk event to the output topic. Terminal state lives in a plain dict (no changelog,
no forwarding topic): less work than the worker does, so the comparison favours this baseline.

Configured like the worker, from ``RISKSTREAM_*`` variables (topics, bootstrap, registry, app
id), with the worker's transport settings (producer linger and batch size, commit interval) so
that the comparison isolates the processing model, not producer tuning.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.errors import ValidationError
from modeling.features import FeatureEngine, TerminalState, UserState
from modeling.predictor import Predictor, PredictorOptions
from modeling.records import (
    ClickEvent,
    Label,
    Transaction,
    parse_click,
    parse_label,
    parse_transaction,
)
from modeling.registry import ModelRegistry
from modeling.scoring import Scorer
from modeling.settings import feature_config, load_settings

settings = load_settings()
app = faust.App(
    settings.app_id,
    broker=[f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
    store="memory://",
    datadir=str(settings.worker_data_dir),
    web_port=settings.web_port,
    web_bind="127.0.0.1",
    topic_partitions=settings.topic_partitions,
    key_serializer="raw",
    value_serializer="raw",
    broker_commit_interval=settings.commit_interval_s,
    producer_linger=0.005,
    producer_max_batch_size=256 * 1024,
    consumer_auto_offset_reset="earliest",
)
config = feature_config(settings)
engine = FeatureEngine(config)
options = PredictorOptions.from_settings(settings)
predictor = Predictor.load(
    ModelRegistry(settings.registry_dir), "behaviour", options, expected_feature_set=config.feature_set
)
scorer = Scorer(predictor, config)
parsers: dict[str, Callable[[bytes, int], Transaction | ClickEvent | Label]] = {
    settings.topic_transactions: parse_transaction,
    settings.topic_clickstream: parse_click,
    settings.topic_labels: parse_label,
}
inputs = app.topic(*parsers, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)
out = app.topic(settings.topic_risk_events, key_type=bytes, value_type=bytes)
users = app.Table("users", default=None, partitions=settings.topic_partitions, key_type=str, value_type=bytes)
terminals: dict[str, TerminalState] = {}


@app.agent(inputs)
async def score(stream: Any) -> None:
    async for value in stream:
        msg = stream.current_event.message
        try:
            rec = parsers[msg.topic](value, settings.max_message_bytes)
        except ValidationError:
            continue
        raw = users.get(rec.user_id)
        st = UserState.from_bytes(raw, config) if raw is not None else engine.new_user()
        if isinstance(rec, Transaction):
            t0 = time.monotonic()
            feats = engine.transaction(st, rec, terminals.get(rec.terminal_id))
            v = scorer.score([rec], [feats])[0]
            now = time.time() * 1000.0
            latency = {
                "inference": round((time.monotonic() - t0) * 1000.0, 3),
                "end_to_end": round(now - msg.timestamp * 1000.0, 3),
            }
            ev = scorer.risk_event(rec, v, int(now), latency)
            await out.send(key=rec.user_id.encode(), value=ev.to_json())
        elif isinstance(rec, Label):
            engine.user_label(st, rec)
            engine.terminal_label(terminals.setdefault(rec.terminal_id, TerminalState()), rec)
        else:
            engine.click(st, rec)
        users[rec.user_id] = st.to_bytes()


if __name__ == "__main__":
    app.main()
