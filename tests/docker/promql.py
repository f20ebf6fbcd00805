"""PromQL checks shared by the dashboard and alert-rule tests: which ``riskstream_*`` series a
query selects, which labels it uses, and what a worker's metrics endpoint really serves."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Metrics


def _observe_everything(metrics: Metrics) -> set[str]:
    """Record one value in every metric (histograms then expose _bucket/_sum/_count, counters
    _total); return the metrics' names."""
    names = set()
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names.add(metric._name)
        labelnames = metric._labelnames
        child: Any = metric.labels(*["x"] * len(labelnames)) if labelnames else metric
        if isinstance(metric, Counter):
            child.inc()
        elif isinstance(metric, Gauge):
            child.set(1)
        elif isinstance(metric, Histogram):
            child.observe(0.01)
        elif isinstance(metric, Info):
            child.info({"version": "v1"})
        else:
            raise AssertionError(f"unhandled metric type {type(metric).__name__}")
    return names


def served_metrics() -> dict[str, set[str]]:
    """sample name -> label names, as a worker's metrics endpoint serves them."""
    metrics = Metrics()
    names = _observe_everything(metrics)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    silent = {n for n in names if not any(s.startswith(n) for s in out)}
    assert not silent, f"the endpoint serves no samples of {sorted(silent)}"
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|!~|!=|=)\s*"([^"]*)"')
_METRIC = re.compile(r"(?<![A-Za-z0-9_:])riskstream_[A-Za-z0-9_:]*")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*""')


def metric_names(expr: str) -> set[str]:
    """The ``riskstream_*`` series names a PromQL expression selects (string literals, such as
    label values, are not names; a ``__name__`` equality matcher is)."""
    names = set()
    for op, value in _NAME_MATCHER.findall(expr):
        assert op == "=", f"match metric names exactly, not with {op}: {expr}"
        names.add(value)
    return names | set(_METRIC.findall(_STRING.sub('""', expr)))


def label_names(expr: str) -> set[str]:
    """Label names an expression groups by or matches on."""
    bare = _STRING.sub('""', expr)
    out = {lb.strip() for grp in _GROUPING.findall(bare) for lb in grp.split(",") if lb.strip()}
    for selector in re.findall(r"\{([^}]*)\}", bare):
        out.update(_MATCHER.findall(selector))
    return out - {"__name__"}


def promtool() -> str:
    """The ``promtool`` executable (Debian package ``prometheus``): missing, it fails under CI
    (``CI`` set) and skips elsewhere."""
    exe = shutil.which("promtool")
    if exe is None:
        msg = "promtool not found: install the Debian package `prometheus` (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe
