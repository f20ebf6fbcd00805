"""The Prometheus alerting rules (``docker/prometheus/alerts.yml``): loaded by the compose
stack's Prometheus, written against metrics a worker really serves, and evaluated by
Prometheus's own rule engine (``promtool test rules``) on synthetic series: each alert fires
where it should, with the labels and summary an operator sees, and stays quiet where it should.

promtool comes from the Debian package ``prometheus``: missing, it fails under CI and skips
elsewhere.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import label_names, metric_names, promtool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "docker" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"

W1 = {"job": "riskstream-worker", "instance": "w1:9464"}
W2 = {"job": "riskstream-worker", "instance": "w2:9464"}
A = {"job": "group-a", "instance": "a:9464"}  # two consumer groups: one alerting, one not
B = {"job": "group-b", "instance": "b:9464"}


def _s(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def _buckets(name: str, labels: dict[str, str], per_le: dict[str, str]) -> list[dict[str, str]]:
    return [_s(name, {**labels, "le": le}, v) for le, v in per_le.items()]


# Each case: one promtool test group. "expect" lists (eval time, alert, alerts firing then), an
# alert given as (its labels beyond alertname and severity, its rendered summary).
CASES: list[dict[str, Any]] = [
    {
        "name": "a worker stops answering scrapes",
        "series": [_s("up", W1, "1 1 1 0x12"), _s("up", W2, "1x15")],
        "expect": [
            ("1m", "RiskstreamWorkerDown", []),
            ("2m", "RiskstreamWorkerDown", [(W1, "Scorer worker w1:9464 is not answering scrapes")]),
        ],
    },
    {
        "name": "a worker's event loop stops while its metrics thread still answers",
        "series": [
            _s("riskstream_event_loop_cpu_seconds_total", W1, "0+1x20 20x20"),
            _s("riskstream_event_loop_cpu_seconds_total", W2, "0+1x40"),  # idle or busy: it moves
        ],
        "expect": [
            ("6m", "RiskstreamEventLoopStalled", []),
            (
                "8m30s",
                "RiskstreamEventLoopStalled",
                [(W1, "Worker w1:9464 serves metrics but its event loop is not running")],
            ),
        ],
    },
    {
        # 100,400 waiting at 1,000/s: 100.4 s (humanizeDuration truncates; rate() is 1000.0000000000001)
        "name": "one group falls a minute and more behind its input",
        "series": [
            _s("riskstream_consumer_lag", {**A, "topic": "tx", "partition": "0"}, "100400x40"),
            _s("riskstream_events_in_total", {**A, "topic": "tx"}, "0+15000x40"),  # 1,000/s
            _s("riskstream_consumer_lag", {**B, "topic": "tx", "partition": "0"}, "10000x40"),
            _s("riskstream_events_in_total", {**B, "topic": "tx"}, "0+15000x40"),
        ],
        "expect": [
            ("4m", "RiskstreamBehind", []),
            ("7m", "RiskstreamBehind", [({"job": "group-a"}, "Scorers are 1m 40s of input behind")]),
        ],
    },
    {
        # rate() over 5 minutes reaches the full rate after 5 minutes of samples: fires at ~20m.
        "name": "a worker at its one-core ceiling",
        "series": [
            _s("riskstream_event_loop_cpu_seconds_total", W1, "0+14x120"),  # 0.93 s per s
            _s("riskstream_event_loop_cpu_seconds_total", W2, "0+7x120"),
        ],
        "expect": [
            ("10m", "RiskstreamEventLoopSaturated", []),
            ("21m", "RiskstreamEventLoopSaturated", [(W1, "Worker w1:9464 is at its one-core ceiling")]),
        ],
    },
    {
        "name": "p99 end-to-end latency above a second",
        "series": [
            *_buckets(
                "riskstream_end_to_end_seconds_bucket",
                A,
                {"0.5": "0x60", "1.0": "0x60", "2.0": "0+10x60", "+Inf": "0+10x60"},
            ),
            *_buckets(
                "riskstream_end_to_end_seconds_bucket",
                B,
                {"0.5": "0+10x60", "1.0": "0+10x60", "2.0": "0+10x60", "+Inf": "0+10x60"},
            ),
        ],
        "expect": [
            ("5m", "RiskstreamEndToEndLatencyHigh", []),
            (
                "12m",
                "RiskstreamEndToEndLatencyHigh",
                [({"job": "group-a"}, "p99 end-to-end scoring latency is 1.99s")],
            ),
        ],
    },
    {
        "name": "2 % of one group's input is dead-lettered, 0.5 % of the other's",
        "series": [
            _s("riskstream_dead_letters_total", {**A, "topic": "tx", "field": "amount"}, "0+30x80"),
            _s("riskstream_events_in_total", {**A, "topic": "tx"}, "0+1500x80"),
            _s("riskstream_dead_letters_total", {**B, "topic": "tx", "field": "amount"}, "0+15x80"),
            _s("riskstream_events_in_total", {**B, "topic": "tx"}, "0+3000x80"),
        ],
        "expect": [
            ("5m", "RiskstreamDeadLettersHigh", []),
            (
                "12m",
                "RiskstreamDeadLettersHigh",
                [({"job": "group-a"}, "2% of input goes to the dead-letter topic")],
            ),
        ],
    },
    {
        # group-a's partition 0: a transaction open since the start, its last stable offset
        # still; partition 1: transactions that end, so the stable offset moves; group-b: none
        "name": "a producer's Kafka transaction left open holds a partition back",
        "series": [
            _s("riskstream_consumer_held", {**A, "topic": "tx", "partition": "0"}, "1+10x80"),
            _s("riskstream_consumer_stable_offset", {**A, "topic": "tx", "partition": "0"}, "500x80"),
            _s("riskstream_consumer_held", {**A, "topic": "tx", "partition": "1"}, "3x80"),
            _s("riskstream_consumer_stable_offset", {**A, "topic": "tx", "partition": "1"}, "0+10x80"),
            _s("riskstream_consumer_held", {**B, "topic": "tx", "partition": "0"}, "0x80"),
            _s("riskstream_consumer_stable_offset", {**B, "topic": "tx", "partition": "0"}, "700x80"),
        ],
        "expect": [
            ("4m", "RiskstreamInputHeldByOpenTransaction", []),
            (
                "6m",
                "RiskstreamInputHeldByOpenTransaction",
                [
                    (
                        {"job": "group-a", "topic": "tx", "partition": "0"},
                        "241 messages of tx [0] wait behind a Kafka transaction open for 10 minutes and more",
                    )
                ],
            ),
        ],
    },
    {
        "name": "a published bundle is refused",
        "series": [
            _s("riskstream_model_rejections_total", {**W1, "kind": "behaviour"}, "0x20 1x20"),
            _s("riskstream_model_rejections_total", {**W2, "kind": "behaviour"}, "0x40"),
        ],
        "expect": [
            ("4m", "RiskstreamModelRejected", []),
            (
                "6m",
                "RiskstreamModelRejected",
                [
                    (
                        {**W1, "kind": "behaviour"},
                        "Worker w1:9464 refused a published model bundle (behaviour)",
                    )
                ],
            ),
        ],
    },
    {
        # w1 cannot read the registry from 5 min on (a round every 5 s); w2's metrics report
        # failed once, in a rebalance: not an alert
        "name": "a worker's model refresh keeps failing",
        "series": [
            _s("riskstream_housekeeping_errors_total", {**W1, "round": "model_refresh"}, "0x20 3+3x20"),
            _s("riskstream_housekeeping_errors_total", {**W2, "round": "metrics_report"}, "0x20 1x20"),
        ],
        "expect": [
            ("4m", "RiskstreamHousekeepingFailing", []),
            (
                "6m",
                "RiskstreamHousekeepingFailing",
                [({**W1, "round": "model_refresh"}, "Worker w1:9464: its model_refresh rounds keep failing")],
            ),
        ],
    },
    {
        # w1 is reassigned every minute (a worker in a crash loop); w2 went through six
        # rebalances in five minutes (a rolling deploy), then none
        "name": "a worker keeps taking part in rebalances",
        "interval": "1m",
        "series": [
            _s("riskstream_partition_assignments_total", W1, "1+1x45"),
            _s("riskstream_partition_assignments_total", W2, "1x5 2+1x5 7x35"),
        ],
        "expect": [
            ("12m", "RiskstreamRebalanceLoop", []),
            (
                "26m",
                "RiskstreamRebalanceLoop",
                [(W1, "Worker w1:9464 keeps taking part in rebalances")],
            ),
        ],
    },
    {
        "name": "a stored state cannot be read",
        "series": [
            _s("riskstream_states_unreadable_total", {**W1, "kind": "user"}, "0x20 1x20"),
            _s("riskstream_states_unreadable_total", {**W2, "kind": "terminal"}, "0x40"),
        ],
        "expect": [
            ("4m", "RiskstreamUnreadableState", []),
            (
                "6m",
                "RiskstreamUnreadableState",
                [({**W1, "kind": "user"}, "Worker w1:9464 found an unreadable stored user state")],
            ),
        ],
    },
    {
        "name": "input arrives and one group runs no inference batch",
        "series": [
            _s("riskstream_events_in_total", {**A, "topic": "clicks"}, "0+100x60"),
            _s("riskstream_batch_size_count", A, "5x60"),
            _s("riskstream_events_in_total", {**B, "topic": "tx"}, "0+100x60"),
            _s("riskstream_batch_size_count", B, "0+10x60"),
        ],
        "expect": [
            ("3m", "RiskstreamScoringStalled", []),
            (
                "8m",
                "RiskstreamScoringStalled",
                [({"job": "group-a"}, "Input arrives but no transaction has been scored for 5 minutes")],
            ),
        ],
    },
    {
        # group A: 3 messages wait and nothing is taken (its lag reads 0: they were fetched and
        # dropped); group B: as many wait, but it takes input (they are in flight)
        "name": "input waits after the committed offsets and one group takes none",
        "series": [
            _s("riskstream_consumer_uncommitted", {**A, "topic": "tx", "partition": "0"}, "0x10 3x50"),
            _s("riskstream_consumer_lag", {**A, "topic": "tx", "partition": "0"}, "0x60"),
            _s("riskstream_events_in_total", {**A, "topic": "tx"}, "0+100x10 1000x50"),
            _s("riskstream_consumer_uncommitted", {**B, "topic": "tx", "partition": "0"}, "3x60"),
            _s("riskstream_events_in_total", {**B, "topic": "tx"}, "0+100x60"),
        ],
        "expect": [
            ("8m", "RiskstreamInputStuck", []),
            (
                "16m",
                "RiskstreamInputStuck",
                [({"job": "group-a"}, "3 input messages wait and no worker has taken any for 5 minutes")],
            ),
        ],
    },
    {
        "name": "after a day at 0.1 %, one group declines 5 % of transactions",
        "interval": "1m",
        "series": [
            _s("riskstream_decisions_total", {**A, "decision": "decline"}, "0+1x1440 1490+50x59"),
            _s("riskstream_decisions_total", {**A, "decision": "approve"}, "0+999x1440 1439510+950x59"),
            _s("riskstream_decisions_total", {**B, "decision": "decline"}, "0+1x1500"),
            _s("riskstream_decisions_total", {**B, "decision": "approve"}, "0+999x1500"),
        ],
        "expect": [
            ("1440m", "RiskstreamDeclineRateSpike", []),
            (
                "1490m",
                "RiskstreamDeclineRateSpike",
                [({"job": "group-a"}, "Decline share 5%: over 3x its daily level")],
            ),
        ],
    },
]


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _unit_tests(rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The promtool unit-test document for CASES."""
    by_name = {r["alert"]: r for r in rules}
    groups = []
    for case in CASES:
        checks = []
        for at, alert, firing in case["expect"]:
            rule = by_name[alert]
            checks.append(
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": [
                        {
                            "exp_labels": {**labels, **rule["labels"]},
                            "exp_annotations": {
                                "summary": summary,
                                "description": rule["annotations"]["description"],
                            },
                        }
                        for labels, summary in firing
                    ],
                }
            )
        groups.append(
            {
                "name": case["name"],
                "interval": case.get("interval", "15s"),
                "input_series": case["series"],
                "alert_rule_test": checks,
            }
        )
    return {"rule_files": [str(ALERTS)], "evaluation_interval": "15s", "tests": groups}


def test_rules_pass_promtool_check() -> None:
    res = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, f"promtool check rules:\n{res.stdout}{res.stderr}"


def test_each_alert_fires_where_it_should_and_nowhere_else(
    rules: list[dict[str, Any]], tmp_path: Path
) -> None:
    exe = promtool()
    covered = {(alert, bool(firing)) for case in CASES for _, alert, firing in case["expect"]}
    for r in rules:
        both = {(r["alert"], True), (r["alert"], False)}
        assert both <= covered, f"{r['alert']}: needs a firing and a quiet case"
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump(_unit_tests(rules), sort_keys=False))
    res = subprocess.run(
        [exe, "test", "rules", str(spec)], capture_output=True, text=True, timeout=300, check=False
    )
    assert res.returncode == 0, f"promtool test rules:\n{res.stdout}{res.stderr}"


def test_rules_are_well_formed_for_operators(rules: list[dict[str, Any]]) -> None:
    assert len({r["alert"] for r in rules}) == len(rules), "alert names must be unique"
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"].get("summary"), f"{r['alert']}: no summary"
        # The description is the runbook pointer; templated values belong in the summary.
        assert "{{" not in r["annotations"]["description"], f"{r['alert']}: templated description"
        assert r["alert"] in (ROOT / "DEVELOPERS.md").read_text(), f"{r['alert']}: no runbook entry"


def test_rules_query_only_metrics_and_labels_the_worker_serves(
    rules: list[dict[str, Any]], served: dict[str, set[str]]
) -> None:
    used: set[str] = set()
    for r in rules:
        names = metric_names(r["expr"])
        unknown = names - set(served)
        assert not unknown, f"{r['alert']} queries {sorted(unknown)}, which no worker serves"
        have = {"le", "instance", "job"}.union(*(served[n] for n in names))
        missing = label_names(r["expr"]) - have
        assert not missing, f"{r['alert']} uses labels {sorted(missing)} that {sorted(names)} lack"
        used |= names
    assert "riskstream_consumer_lag" in used and "riskstream_end_to_end_seconds_bucket" in used


def test_the_compose_prometheus_loads_the_rules() -> None:
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert prom.get("rule_files") == ["alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
