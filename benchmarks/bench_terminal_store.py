"""The scorer's read of a transaction's terminal state: from the memory store's dict or from the
disk-backed terminal table's RocksDB database (``terminal_store = "disk"``), no broker.

    .venv/bin/python benchmarks/bench_terminal_store.py [--file handbook_dev.parquet]
                                                        [--lookups 200000] [--rounds 3]

Terminal states are built by folding every label of ``--file`` (handbook_dev: 10,000 terminals)
into them with the feature engine, as the terminal loop does, and put in both stores: a dict, and
a real Faust global table on Faust's RocksDB store (rocksdict), written with
``apply_changelog_batch`` as the changelog read back writes it. Each round then looks up
``--lookups`` terminal ids, drawn at random from the stored ones plus a tenth unknown ones,
through ``BatchProcessor._terminal`` (the scorer's path: the store's read, then the decoded-state
cache, which holds every terminal here, so that the store's read is what differs), from each
store in turn. Per round and store: µs per lookup.

``--sweep-keys N`` (200,000): the sweep's reading of the keys on disk, N terminals of 900 bytes:
every key in one listing (what the sweep did first) against chunks of 500
(``DiskTerminalStore.key_chunks``, the sweep's since): the event loop is held for one chunk at a
time, so the longest chunk is what a scoring batch may wait. Writes
``results/terminal-store.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def terminal_states(path: Path) -> dict[str, bytes]:
    """Every terminal's state after all the file's labels, serialized."""
    from modeling.features import FeatureConfig, FeatureEngine, TerminalState
    from modeling.records import Label
    from training.history import event_stream, load_history

    config = FeatureConfig()
    engine = FeatureEngine(config)
    states: dict[str, TerminalState] = {}
    for e in event_stream(load_history(path), config).events():
        if isinstance(e, Label):
            engine.terminal_label(states.setdefault(e.terminal_id, TerminalState()), e)
    return {tid: ts.to_bytes() for tid, ts in states.items()}


def disk_store(home: Path, states: dict[str, bytes]) -> Any:
    """A Faust global table on RocksDB holding ``states``, as the worker's replica writes it."""
    import faust
    from faust.events import Event
    from faust.types import TP, Message

    from modeling.settings import Settings
    from streams.output import ChangelogKeys
    from streams.terminal_store import terminal_store, terminal_table

    asyncio.set_event_loop(asyncio.new_event_loop())
    settings = Settings(terminal_store="disk")
    app = faust.App("bench-terminals", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(home))
    table = terminal_table(app, settings)  # as the worker builds it
    keys = ChangelogKeys(table)
    topic = table.changelog_topic.get_topic_name()
    tp = TP(topic, 0)
    items = list(states.items())
    for i in range(0, len(items), 1000):  # a fetch at a time
        events = [
            Event(app, tid, raw, None, Message(topic, 0, i + j, 0.0, 0, None, keys(tid), raw, None, tp=tp))
            for j, (tid, raw) in enumerate(items[i : i + 1000])
        ]
        table.apply_changelog_batch(events)
    return terminal_store(settings, table, keys)


def _no_scorer() -> Any:
    raise AssertionError("no model is called here")


def time_lookups(get: Any, ids: list[str]) -> float:
    """µs per lookup through the scorer's path, its cache warmed with every stored terminal."""
    from modeling.features import FeatureConfig, FeatureEngine
    from streams.pipeline import BatchProcessor

    proc = BatchProcessor(
        FeatureEngine(FeatureConfig()), _no_scorer, lambda _: None, get, terminal_cache_bytes=8 << 30
    )
    for tid in ids:
        proc._terminal(tid)
    t0 = time.perf_counter()
    for tid in ids:
        proc._terminal(tid)
    return (time.perf_counter() - t0) / len(ids) * 1e6


def sweep_keys(home: Path, n: int, rounds: int) -> dict[str, Any]:
    """ms to list every key of ``n`` stored terminals at once, and in chunks of 500."""
    disk = disk_store(home, {f"T{i:07d}": b"x" * 900 for i in range(n)})
    out: dict[str, Any] = {"terminals": n, "all_at_once_ms": [], "chunks_of_500_longest_ms": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        assert sum(len(c) for c in disk.key_chunks(n + 1)) == n  # one chunk: every key
        out["all_at_once_ms"].append(round((time.perf_counter() - t0) * 1000, 1))
        longest, chunks = 0.0, disk.key_chunks(500)
        while True:
            t0 = time.perf_counter()
            if next(chunks, None) is None:
                break
            longest = max(longest, time.perf_counter() - t0)
        out["chunks_of_500_longest_ms"].append(round(longest * 1000, 2))
    print(f"sweep keys: {out}", flush=True)
    return out


def main() -> int:
    from workerbench.system import result_header

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=ROOT.parent / "shared" / "data" / "handbook_dev.parquet")
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sweep-keys", type=int, default=200_000, help="terminals for the sweep's key listing")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "terminal-store.json")
    args = ap.parse_args()
    result: dict[str, Any] = {**result_header("bench_terminal_store.py", sys.argv[1:]), "runs": []}
    t0 = time.monotonic()
    states = terminal_states(args.file)
    sizes = sorted(len(v) for v in states.values())
    result["terminals"] = {
        "count": len(states),
        "snapshot_bytes_mean": round(sum(sizes) / len(sizes), 1),
        "snapshot_bytes_max": sizes[-1],
        "built_s": round(time.monotonic() - t0, 1),
    }
    print(result["terminals"], flush=True)
    rng = random.Random(7)
    known = list(states)
    ids = [rng.choice(known) if rng.random() < 0.9 else f"unknown-{i}" for i in range(args.lookups)]
    with tempfile.TemporaryDirectory(prefix="bench-terminal-store-") as home:
        disk = disk_store(Path(home), states)
        stores = {"memory": states.get, "disk": disk.get}
        for r in range(args.rounds):
            for name in list(stores) if r % 2 == 0 else list(stores)[::-1]:
                us = time_lookups(stores[name], ids)
                result["runs"].append({"round": r + 1, "store": name, "us_per_lookup": round(us, 3)})
                print(f"round {r + 1}: {name} {us:.3f} µs a lookup", flush=True)
        result["sweep_keys"] = sweep_keys(Path(home) / "sweep", args.sweep_keys, args.rounds)
    result["summary"] = {
        name: sorted(x["us_per_lookup"] for x in result["runs"] if x["store"] == name)
        for name in ("memory", "disk")
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
