"""A real Prometheus server (Debian's `prometheus`) scrapes a live worker and answers queries
about its throughput, batches, latency and model version."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import WorkerProc, free_port, isolated_scenario, run

from modeling.features import FeatureConfig
from streams.replay import replay_events
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"


def _query(port: int, q: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def test_prometheus_scrapes_the_worker(kafka_broker: str, model_registry: Path, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("Debian's prometheus package is required (make setup installs it)", pytrace=False)
    sc = isolated_scenario(kafka_broker, model_registry, tmp_path, partitions=2)
    w = WorkerProc(sc, "prom").start()
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: riskstream\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{w.metrics_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        w.wait_metrics()
        df = load_history(DATA).iloc[:800]
        run(replay_events(list(event_stream(df, FeatureConfig()).events()), sc.settings(), progress=False))
        deadline = time.monotonic() + 120
        out: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                out = _query(
                    prom_port, f'sum(riskstream_events_out_total{{topic="{sc.topics["risk_events"]}"}})'
                )
            except OSError:
                out = []
            if out and float(out[0]["value"][1]) >= len(df):
                break
            time.sleep(1)
        assert out and float(out[0]["value"][1]) == len(df), out
        up = _query(prom_port, 'up{job="riskstream"}')
        assert up and up[0]["value"][1] == "1"
        info = _query(prom_port, "riskstream_model_info")
        assert info and info[0]["metric"]["behaviour"].startswith("behaviour-")
        batches = _query(prom_port, "sum(riskstream_batch_size_count)")
        assert batches and float(batches[0]["value"][1]) > 0
        p99 = _query(
            prom_port, "histogram_quantile(0.99, sum by (le) (riskstream_end_to_end_seconds_bucket))"
        )
        assert p99 and float(p99[0]["value"][1]) > 0
    finally:
        prom.terminate()
        prom.wait(30)
        log.close()
        w.stop()
