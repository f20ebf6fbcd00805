"""What a Faust worker's aiokafka consumer knows of each assigned partition from its last
fetch: its high-water mark, its last stable offset and its position. The input alignment's
"messages not fetched yet" and the held-back gauges read them (streams/intake.py), straight
from aiokafka's partition state, without an await: the consumer's thread writes them, and each
read is of one attribute."""

from __future__ import annotations

from typing import Any


def _state(consumer: Any, tp: Any) -> Any:
    """aiokafka's own path to a partition's state (AIOKafkaConsumer.highwater); None for a
    partition not assigned (aiokafka keeps a state for each assigned partition only)."""
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    return assignment.state_value(tp) if assignment is not None else None


def held_back(consumer: Any, tp: Any) -> tuple[int, int] | None:
    """``(last stable offset, high-water mark minus it)`` of ``tp`` from an aiokafka consumer's
    last fetch: what lies past the last stable offset was written in Kafka transactions still
    open, and a consumer reading committed takes none of it, nor anything after it, until they
    end. None: not assigned, not fetched yet, or read uncommitted."""
    if consumer._isolation_level != "read_committed":
        return None
    state = _state(consumer, tp)
    if state is None or state.lso is None or state.highwater is None or state.lso < 0:
        return None
    return state.lso, max(state.highwater - state.lso, 0)


def unfetched(consumer: Any, tp: Any) -> bool | None:
    """:meth:`BatchingConsumer.unfetched` for an aiokafka consumer: the end it can fetch to
    beyond its position; False when ``tp`` is not assigned, None when not fetched yet. Read
    committed, that end is the last stable offset: what lies past it waits on a transaction
    still open, as a message not produced yet does."""
    state = _state(consumer, tp)
    if state is None:
        return False
    end = (
        state.lso
        if state.lso is not None and consumer._isolation_level == "read_committed"
        else state.highwater
    )
    if end is None or not state.has_valid_position:
        return None
    return bool(end > state.position)
