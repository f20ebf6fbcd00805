"""Dead letters: input that fails validation, and stored states that cannot be read (the key
starts over), each cut to fit the dead-letter topic where too large (:func:`fit`).

A user's or terminal's state in a table may be unreadable: truncated or corrupt bytes, or a
record some other producer wrote to a changelog. Before session 20 the decode error escaped the
batch and stopped the worker; restarted, it met the same state again. Now such a state goes to
the dead-letter topic (its bytes untouched, keyed by its id, with the reason and
``riskstream-state-kind``), is counted (``riskstream_dead_letters_total{topic="user-state"|
"terminal-state", field="snapshot"}``, ``riskstream_states_unreadable_total{kind}``) and the key
starts over as if new; the next flush overwrites the stored state, so the dead-letter topic keeps
the only copy of the old one.

A snapshot in another format version (:class:`~modeling.errors.StateVersionError`) is not
corruption: another riskstream release wrote it (workers rolled back after a newer one wrote
states). Starting those keys over would overwrite every state the newer release wrote, so the
error stops the worker instead, with the versions in the message: roll forward, or migrate.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from modeling.errors import StateError, StateVersionError, ValidationError
from modeling.features import FeatureEngine, TerminalState, UserState

log = logging.getLogger("riskstream.worker")

KIND_USER_STATE, KIND_TERMINAL_STATE = "user-state", "terminal-state"
# A dead letter keeps at most this much of an input message's key (a user id is short; the
# rest of the dead-letter topic's room over the largest state is for the headers:
# streams.broker.topics.dead_letter_max_bytes)
MAX_KEY_BYTES = 16 << 10
# Dead-letter headers (streams/dead_letters.py reads them back)
SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET = (
    f"riskstream-source-{k}" for k in ("topic", "partition", "offset")
)
ERROR_FIELD, ERROR, STATE_KIND = "riskstream-error-field", "riskstream-error", "riskstream-state-kind"
S = TypeVar("S")


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None  # the original bytes, untouched (None: the input record had no value)
    headers: list[tuple[str, bytes]]


class _Message(Protocol):
    """An input message: streams.pipeline's InMessage, or a Faust message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def input_dead_letter(m: _Message, exc: ValidationError) -> DeadLetter:
    """An input message that failed validation, as a dead letter: its bytes and key untouched,
    headers naming where it came from, the field and the reason."""
    return DeadLetter(
        key=m.key,
        value=m.value,
        headers=[
            (SOURCE_TOPIC, m.topic.encode()),
            (SOURCE_PARTITION, str(m.partition).encode()),
            (SOURCE_OFFSET, str(m.offset).encode()),
            (ERROR_FIELD, exc.field.encode()[:1000]),
            (ERROR, str(exc).encode()[:1000]),
        ],
    )


def fit(dl: DeadLetter, max_value_bytes: int) -> DeadLetter:
    """``dl`` as the dead-letter topic takes it: a value over ``max_value_bytes``
    (streams.broker.topics.dead_letter_room) or a key over :data:`MAX_KEY_BYTES` cut to that
    length, with headers ``riskstream-<value|key>-bytes`` (the original length) and
    ``riskstream-<value|key>-sha256`` (hex) to match the cut against the original.

    The topic refuses a record over its limit, and a refused dead letter stopped the worker, on
    every restart: an input topic may take larger records than the dead-letter topic, and an
    operator's dead-letter topic may take less than riskstream creates it with. An input
    message's whole record stays where its source headers say, for as long as that topic keeps
    it; a stored state's is lost past the cut."""
    key, value = dl.key, dl.value
    if (key is None or len(key) <= MAX_KEY_BYTES) and (value is None or len(value) <= max_value_bytes):
        return dl
    headers = list(dl.headers)
    return DeadLetter(
        _cut("key", key, MAX_KEY_BYTES, headers), _cut("value", value, max_value_bytes, headers), headers
    )


def cut_header(part: str, what: str) -> str:
    """The header :func:`fit` gives a cut ``part`` (``key``, ``value``): ``what`` is ``bytes``
    (the original length) or ``sha256``."""
    return f"riskstream-{part}-{what}"


def dead_letter_record(
    topic: str, dl: DeadLetter, room: int
) -> tuple[str, None, bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``dl`` fitted to ``room`` (:func:`fit`), as a record for streams.output.BatchOutput."""
    dl = fit(dl, room)
    return (topic, None, dl.key, dl.value, dl.headers)


def _cut(part: str, data: bytes | None, limit: int, headers: list[tuple[str, bytes]]) -> bytes | None:
    if data is None or len(data) <= limit:
        return data
    headers.append((cut_header(part, "bytes"), str(len(data)).encode()))
    headers.append((cut_header(part, "sha256"), hashlib.sha256(data).hexdigest().encode()))
    return data[:limit]


def state_dead_letter(kind: str, key: str, raw: bytes, exc: StateError) -> DeadLetter:
    """A stored state that cannot be read, as a dead letter."""
    return DeadLetter(
        key=key.encode(),
        value=raw,
        headers=[
            (STATE_KIND, kind.encode()),
            (ERROR_FIELD, b"snapshot"),
            (ERROR, str(exc).encode()[:1000]),
        ],
    )


def decode_or_start_over(
    kind: str, key: str, raw: bytes, decode: Callable[[bytes], S], new: Callable[[], S]
) -> tuple[S, DeadLetter | None]:
    """``decode(raw)``; an unreadable state gives ``new()`` and its dead letter. A
    :class:`StateVersionError` propagates (module doc)."""
    try:
        return decode(raw), None
    except StateVersionError:
        raise
    except StateError as exc:
        log.error("%s %s has an unreadable stored state (dead-lettered, starting over): %s", kind, key, exc)
        return new(), state_dead_letter(kind, key, raw, exc)


def user_or_new(uid: str, raw: bytes, engine: FeatureEngine) -> tuple[UserState, DeadLetter | None]:
    """A stored user state, or a new one and the stored state's dead letter."""
    return decode_or_start_over(
        KIND_USER_STATE, uid, raw, lambda b: UserState.from_bytes(b, engine.config), engine.new_user
    )


def terminal_or_new(tid: str, raw: bytes) -> tuple[TerminalState, DeadLetter | None]:
    """A stored terminal state, or a new one and the stored state's dead letter."""
    return decode_or_start_over(KIND_TERMINAL_STATE, tid, raw, TerminalState.from_bytes, TerminalState)
