"""Paths, the message window's constants and the worker settings swept by ``bench_worker.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

DATA = ROOT.parent / "shared" / "data" / "handbook_2w.parquet"
PARTITIONS = 4
DAY_MS = 86_400_000

# Worker settings tried for (a); "default" spells out the settings' defaults, read from
# ``modeling.settings.Settings`` (a copy here went stale once: session 25 changed the batch
# sizes, and "default" kept running the old ones). ``loglevel`` is the worker's --loglevel
# (default info); the rest are RISKSTREAM_* settings.
_DEFAULT_SETTINGS = (
    "pipeline_max_batch",
    "pipeline_max_wait_ms",
    "pipeline_max_age_ms",
    "model_max_batch",
    "model_pad_step",
    "state_flush_interval_ms",
    "consumer_in_loop",
    "input_align_max_idle_ms",
    "terminal_overlay",
    "input_align_labels",
    "terminal_feed",
)


def _defaults() -> dict[str, Any]:
    from modeling.settings import Settings

    fields = Settings.model_fields
    return {**{k: fields[k].default for k in _DEFAULT_SETTINGS}, "loglevel": "info"}


DEFAULT_WORKER: dict[str, Any] = _defaults()
_MALLOC_KEEP = {
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
    "MALLOC_TOP_PAD_": str(64 << 20),
}
SWEEP: dict[str, dict[str, Any]] = {
    "default": {},
    "batch256": {"pipeline_max_batch": 256},
    "batch1024": {"pipeline_max_batch": 1024},
    "batch2048": {"pipeline_max_batch": 2048},
    "batch1024-model1024": {"pipeline_max_batch": 1024, "model_max_batch": 1024},
    # Aligned input mixes the topics in every batch: about 30 % of a batch's messages are
    # transactions, so 1,536 messages make model calls of about 460 rows.
    "batch1536-model512": {"pipeline_max_batch": 1536, "model_max_batch": 512},
    "batch1024-model512": {"pipeline_max_batch": 1024, "model_max_batch": 512},
    "batch2048-model512": {"pipeline_max_batch": 2048, "model_max_batch": 512},
    # The defaults before session 25 (since session 25: 1,536 messages, 512 rows)
    "batch512-model256": {"pipeline_max_batch": 512, "model_max_batch": 256},
    "model64": {"model_max_batch": 64},
    # The hot-path modules as Python, not compiled by mypyc (modeling/native.py)
    "pure-python": {"pure_python": True},
    # The defaults once more: after another entry, it brackets that entry in time (A B A)
    "default-again": {},
    "wait5": {"pipeline_max_wait_ms": 5},
    "wait10": {"pipeline_max_wait_ms": 10},
    "wait50": {"pipeline_max_wait_ms": 50},
    "wait100": {"pipeline_max_wait_ms": 100},
    # A batch also closes once its oldest message is this old since its Kafka timestamp
    # (pipeline_max_age_ms, 30 ms by default since session 27; 0: off, as before)
    "age-off": {"pipeline_max_age_ms": 0},
    # oneDNN (on by default) caches primitives per input shape, so the worker pads every model
    # call to one of a few row counts; off, Paddle's own CPU kernels run the unpadded batch.
    "onednn-off": {"use_onednn": False},
    # Model calls padded to a power of two rows, as before session 15 (the default pads to
    # powers of two below 32, then multiples of 32: a 159-row call ran as 256 rows).
    "pad-pow2": {"model_pad_step": 0},
    "onednn-off-wait100": {"use_onednn": False, "pipeline_max_wait_ms": 100},
    # User states written after every micro-batch: what the worker did before
    # streams/state_flush.py.
    "flush-every-batch": {"state_flush_interval_ms": 0},
    "flush200": {"state_flush_interval_ms": 200},
    "flush5000": {"state_flush_interval_ms": 5000},
    "wait50-flush5000": {"pipeline_max_wait_ms": 50, "state_flush_interval_ms": 5000},
    # Faust's worker sets the root logger to DEBUG when --loglevel is warning or above (its
    # progress spinner listens to every record), so every debug call builds a LogRecord.
    "loglevel-warning": {"loglevel": "warning"},
    # Consumer fetches: the broker holds a fetch until it has fetch_min_bytes or fetch_max_wait_ms
    # passed (the default is 64 KiB / 10 ms); 1 byte / 500 ms are aiokafka's and Java's defaults.
    "fetch-wait30": {"fetch_max_wait_ms": 30},
    "fetch-min1-wait500": {"fetch_min_bytes": 1, "fetch_max_wait_ms": 500},
    # The behaviour model in a child process (modeling/inference_process.py): a model call no
    # longer holds the worker's GIL, so the event loop (fetches included) goes on meanwhile.
    "inference-process": {"inference_process": True},
    # Paddle's CPU kernels on two threads (the default is one): the model call holds the worker's
    # GIL either way. Session 25: slower, and half the messages per CPU-second (oneDNN's second
    # thread spins on the vCPU the broker needs).
    "threads2": {"cpu_threads": 2},
    # Faust's consumer in its own thread, as before streams/in_loop.py (the default runs it on the
    # worker's event loop).
    "consumer-thread": {"consumer_in_loop": False},
    # Input topics taken in the order they were fetched, not aligned by timestamp (the default
    # before session 12): draining a backlog, one topic ran far ahead of the others.
    "no-align": {"input_align_max_idle_ms": 0},
    # Terminal state from the global table alone, without the labels this worker forwarded and
    # the table does not hold yet (streams/terminal_overlay.py; the default before session 13).
    "no-terminal-overlay": {"terminal_overlay": False},
    # Transactions wait for the labels of their own partition group only, not of every partition
    # (streams/input_buffer.py, LabelRule; the default before session 13).
    "no-label-rule": {"input_align_labels": False},
    # The C library keeps memory it freed instead of returning it to the kernel (glibc's malloc
    # tunables), and with it every Python object (PYTHONMALLOC=malloc; pymalloc's arenas go back
    # to the kernel when empty). Session 27: no gain beyond the spread; pymalloc off is slower.
    "malloc-keep": {"env": _MALLOC_KEEP},
    "mmap-only": {"env": {"MALLOC_MMAP_THRESHOLD_": _MALLOC_KEEP["MALLOC_MMAP_THRESHOLD_"]}},
    "trim-only": {"env": {k: v for k, v in _MALLOC_KEEP.items() if k != "MALLOC_MMAP_THRESHOLD_"}},
    "pymalloc-off-keep": {"env": {"PYTHONMALLOC": "malloc", **_MALLOC_KEEP}},
    "no-overlay-no-label-rule": {"terminal_overlay": False, "input_align_labels": False},
    # No terminal feed: this worker neither reads other workers' labels and floors from the
    # terminal-labels topic nor publishes its own (streams/terminal_feed.py; the default before
    # session 14). With one worker the feed only reads its own labels back, and skips them.
    "no-terminal-feed": {"terminal_feed": False},
    # Every record of the global terminal table's changelog through Faust's per-record recovery
    # path, as before session 32 (streams/replica.py applies a fetch's records at once).
    "replica-faust": {"terminal_replica_direct": False},
    # CPython's own young and full collections (after gc_pauses.tune: 20,000 / 20 / 20), instead
    # of sweeps only (streams/gc_pauses.py; the default before session 18).
    "gc-auto-full": {"gc_auto_full": True},
    # Young collections as CPython runs them (700 / 10) or as the worker did in sessions 18-23
    # (20,000 / 20), instead of none (the default since session 24: sweeps only).
    "gc-young-700": {"gc_thresholds": "[700, 10]"},  # as JSON: the environment variable
    "gc-young-20000": {"gc_thresholds": "[20000, 20]"},
    # No automatic collection (threshold 0), spelled out: the default since session 24.
    "gc-off": {"gc_thresholds": "[0, 0]"},
    # The user-state table in RocksDB files (streams/user_store.py) instead of Faust's memory
    # store: the worker starts on an empty data directory, so it first copies the seeded changelog
    # into its databases; its state flushes then write each delivered batch of states to disk.
    "disk-store": {"user_store": "disk"},
    # The global terminal table in a RocksDB database (streams/terminal_store.py): the scorer reads
    # a transaction's terminal from it (a bloom filter check and a read) instead of from a dict.
    "terminal-disk": {"terminal_store": "disk"},
    "disk-stores": {"user_store": "disk", "terminal_store": "disk"},
    "read-uncommitted": {"input_isolation_level": "read_uncommitted"},  # the worker before session 38
}
# (b) calls the model one transaction at a time, where oneDNN is slowest (batch 1: 0.40 ms
# against 0.11 with Paddle's own kernels, results/predictor.json): its "default" runs with oneDNN
# off, its fastest, so that (a)/(b) is not flattered; "onednn-on" is the settings' default.
PLAIN_SWEEP: dict[str, dict[str, Any]] = {
    "default": {"use_onednn": False},
    "onednn-on": {"use_onednn": True},
}
QUICK_SWEEP = ("default", "flush-every-batch")


def sweep_entry(label: str) -> str:
    """The SWEEP entry a run label names: ``NAME--2`` (``--3``, …) runs ``NAME`` once more, so
    that one invocation can alternate two settings (A B A B)."""
    name, sep, n = label.partition("--")
    return name if sep and n.isdigit() else label
