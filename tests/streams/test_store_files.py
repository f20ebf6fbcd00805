"""The start-time check of user-state databases against their changelog
(streams/store_files.py, ``judge``): a database built from the changelog is never found stale,
whatever compaction removed; one from another changelog is. Through a broker, with a changelog
deleted and written again past the files' offset: tests/integration/test_disk_store.py."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.store_files import Record, judge

Log = list[tuple[bytes, bytes | None]]  # a changelog partition: (key, value or None), offset = index


def _prefix(log: Log, offset: int) -> dict[bytes, bytes]:
    """What a database holding ``offset`` holds: the log applied up to it."""
    db: dict[bytes, bytes] = {}
    for key, value in log[: offset + 1]:
        if value is None:
            db.pop(key, None)
        else:
            db[key] = value
    return db


def _records(log: Log, lo: int, hi: int, removed: set[int] = frozenset()) -> list[Record]:  # type: ignore[assignment]
    return [(i, k, v) for i, (k, v) in enumerate(log) if lo <= i < hi and i not in removed]


def _compact(log: Log, cleaned_to: int, drop_tombstones: bool) -> set[int]:
    """The offsets Kafka's cleaner removes when it has cleaned the log up to ``cleaned_to``:
    every record there that a later record of its key (up to ``cleaned_to``) supersedes, and,
    with ``drop_tombstones`` (a later pass, past delete.retention.ms), the deletes left."""
    latest = {key: i for i, (key, _) in enumerate(log[:cleaned_to])}
    removed = {i for i, (key, _) in enumerate(log[:cleaned_to]) if latest[key] != i}
    if drop_tombstones:
        removed |= {i for i in latest.values() if log[i][1] is None}
    return removed


LOG = [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1"), (b"b", None), (b"c", b"2")]


def test_a_database_past_the_changelog_s_end_is_stale() -> None:
    db = _prefix(LOG, 5)
    v = judge(9, 0, 6, _records(LOG, 0, 6), db.get)
    assert v.kind == "stale" and "past the changelog's end (6)" in v.reason
    assert judge(5, 0, 6, _records(LOG, 0, 6), db.get).kind == "ok"
    assert judge(5, 0, 6, [], db.get).kind == "unchecked"  # nothing read yet


def test_the_last_record_of_each_key_up_to_the_offset_is_compared() -> None:
    db = _prefix(LOG, 3)  # a=2, b=1, c=1
    v = judge(3, 0, 6, _records(LOG, 0, 6), db.get)  # records after offset 3 do not count
    assert v.kind == "ok" and "3 states agree" in v.reason
    assert judge(3, 0, 6, _records(LOG, 2, 6), db.get).kind == "ok"  # a window: a and c only
    # the same changelog, a database one record behind (b deleted at 4 is not in it)
    assert judge(4, 0, 6, _records(LOG, 0, 6), db.get).kind == "stale"


def test_a_changelog_written_again_differs_from_the_files() -> None:
    db = _prefix(LOG, 5)  # a=2, c=2
    other: Log = [(b"c", b"1"), (b"d", b"1"), (b"a", b"2"), (b"a", b"3"), (b"e", None), (b"d", b"2")]
    other.append((b"x", b"1"))
    v = judge(5, 0, 7, _records(other, 0, 7), db.get)
    assert v.kind == "stale"
    assert "key b'c'" in v.reason
    assert "(offset 0) has a state of 1 bytes and the database a different" in v.reason
    # a state the files hold where the other log deleted it; one they lack
    assert "has a delete and the database a different" in judge(4, 0, 7, [(4, b"a", None)], db.get).reason
    assert "the database nothing" in judge(6, 0, 7, [(6, b"x", b"1")], db.get).reason
    # the same users' states from other events
    assert judge(5, 0, 7, [(5, b"c", b"1")], db.get).kind == "stale"


def test_deletes_alone_or_a_changelog_that_starts_later_cannot_be_checked() -> None:
    db = _prefix(LOG, 4)
    assert judge(4, 0, 6, [(4, b"b", None)], db.get).kind == "unchecked"
    v = judge(4, 5, 6, [], db.get)
    assert v.kind == "unchecked" and "before the changelog's start, 5" in v.reason


_LOGS = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"c", b"d", b"e"]), st.none() | st.binary(min_size=1, max_size=2)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LOGS, st.data())
def test_files_built_from_the_changelog_are_never_found_stale(log: Log, data: st.DataObject) -> None:
    """Whatever the cleaner removed since, and whichever window of records before the offset
    is read, a database holding a prefix of this changelog agrees with it."""
    offset = data.draw(st.integers(0, len(log) - 1))
    lo = data.draw(st.integers(0, offset))
    removed: set[int] = set()
    for _ in range(data.draw(st.integers(0, 2))):  # cleaner passes, each further along
        removed |= _compact(log, data.draw(st.integers(0, len(log))), data.draw(st.booleans()))
    db = _prefix(log, offset)
    v = judge(offset, 0, len(log), _records(log, lo, offset + 1, removed), db.get)
    assert v.kind in ("ok", "unchecked"), v.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LOGS, _LOGS, st.data())
def test_files_from_another_changelog_are_not_found_ok_unless_they_agree(
    built: Log, other: Log, data: st.DataObject
) -> None:
    """Against another changelog, "ok" means every key's last record in the window up to the
    offset is what the files hold: the files are then what that changelog would have built
    for those keys."""
    offset = data.draw(st.integers(0, len(built) - 1))
    db = _prefix(built, offset)
    records = _records(other, 0, offset + 1)
    v = judge(offset, 0, len(other), records, db.get)
    if v.kind == "ok":
        mine = _prefix(other, offset)
        keys = {k for _, k, _ in records}
        assert {k: db.get(k) for k in keys} == {k: mine.get(k) for k in keys}
    if offset >= len(other):
        assert v.kind == "stale"
