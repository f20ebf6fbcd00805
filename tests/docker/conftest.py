"""Fixtures of the deployment tests."""

from __future__ import annotations

import pytest
from promql import served_metrics


@pytest.fixture(scope="session")
def served() -> dict[str, set[str]]:
    """sample name -> label names, as a worker's metrics endpoint serves them."""
    return served_metrics()
