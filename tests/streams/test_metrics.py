"""Metric helpers whose behaviour dashboards and alerts depend on."""

from __future__ import annotations

from streams.metrics import Metrics


def _lags(m: Metrics) -> dict[tuple[str, str], float]:
    out = {}
    for family in m.registry.collect():
        if family.name == "riskstream_consumer_lag":
            for s in family.samples:
                out[(s.labels["topic"], s.labels["partition"])] = s.value
    return out


def test_consumer_lag_reports_exactly_the_partitions_owned_now() -> None:
    m = Metrics()
    m.set_consumer_lag({("tx", 0): 5, ("tx", 1): 3, ("clicks", 0): 0})
    assert _lags(m) == {("tx", "0"): 5.0, ("tx", "1"): 3.0, ("clicks", "0"): 0.0}
    # A rebalance took tx/0 and clicks/0 away: their last values must not linger (another
    # worker reports them now, and sums across workers would count them twice).
    m.set_consumer_lag({("tx", 1): 2, ("tx", 2): 7})
    assert _lags(m) == {("tx", "1"): 2.0, ("tx", "2"): 7.0}
    m.set_consumer_lag({})
    assert _lags(m) == {}
