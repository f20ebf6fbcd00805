"""Metric helpers whose behaviour dashboards and alerts depend on."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from streams.metrics import Metrics, observe_many


def _lags(m: Metrics, name: str = "riskstream_consumer_lag") -> dict[tuple[str, str], float]:
    out = {}
    for family in m.registry.collect():
        if family.name == name:
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


def test_uncommitted_reports_exactly_the_partitions_owned_now_apart_from_the_lag() -> None:
    m = Metrics()
    m.set_consumer_lag({("tx", 0): 0, ("tx", 1): 4})
    m.set_consumer_uncommitted({("tx", 0): 3, ("tx", 1): 9})
    uncommitted = "riskstream_consumer_uncommitted"
    assert _lags(m, uncommitted) == {("tx", "0"): 3.0, ("tx", "1"): 9.0}
    m.set_consumer_uncommitted({("tx", 1): 0})
    assert _lags(m, uncommitted) == {("tx", "1"): 0.0}
    assert _lags(m) == {("tx", "0"): 0.0, ("tx", "1"): 4.0}  # the lag's partitions are its own


BOUNDS = (0.001, 0.01, 0.1, 0.5, 1.0, 10.0)
# the bounds themselves, values between them, beyond the last, negative and NaN
VALUES = st.lists(
    st.one_of(st.sampled_from([*BOUNDS, -1.0, 0.0, 1e9, math.nan]), st.floats(-5, 50, allow_nan=False)),
    max_size=60,
)


def _samples(h: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for f in h.collect()
        for s in f.samples
        if "created" not in s.name
    }


@given(VALUES)
def test_observe_many_counts_exactly_as_observe_does(values: list[float]) -> None:
    one = Histogram("one", "", buckets=BOUNDS, registry=CollectorRegistry())
    many = Histogram("many", "", buckets=BOUNDS, registry=CollectorRegistry())
    for v in values:
        one.observe(v)
    observe_many(many, values)
    a = {(n.replace("one", "x"), le): v for (n, le), v in _samples(one).items()}
    b = {(n.replace("many", "x"), le): v for (n, le), v in _samples(many).items()}
    sums = a.pop(("x_sum", "")), b.pop(("x_sum", ""))
    assert a == b  # every cumulative bucket and the count
    assert (math.isnan(sums[0]) and math.isnan(sums[1])) or math.isclose(*sums, rel_tol=1e-9, abs_tol=1e-9)


def test_observe_many_on_a_labelled_histogram() -> None:
    m = Metrics()
    observe_many(m.shadow_scores, [0.005, 0.5, 0.5, 0.999])
    observe_many(m.scores, [])
    got = {
        s.labels["le"]: s.value
        for f in m.registry.collect()
        if f.name == "riskstream_shadow_score"
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert got["0.01"] == 1 and got["0.5"] == 3 and got["0.99"] == 3 and got["+Inf"] == 4
