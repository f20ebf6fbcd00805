"""The parts of ``benchmarks/bench_worker.py``, the live worker compared with a plain Faust agent
and a raw aiokafka relay: its settings (``config``), the machine's /proc readers (``system``),
the message window and the model (``messages``), Kafka helpers and the relay role (``kafka``),
the processes under test (``procs``), what a run measures (``measure``), the paced latency runs
(``latency``), the throughput runs (``runs``) and the summary (``report``). ``bench_worker.py``
stays the entry point, and its docstring says what the benchmark measures; it imports this
package as ``workerbench``, ``benchmarks/`` being on ``sys.path`` when a script there runs."""
