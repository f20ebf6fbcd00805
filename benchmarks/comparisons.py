"""Every whole run of the live-scorer comparison (issue 5) in one table, read from the results.

    .venv/bin/python benchmarks/comparisons.py            # print the tables
    .venv/bin/python benchmarks/comparisons.py --write    # rewrite them in the READMEs
    .venv/bin/python benchmarks/comparisons.py --check    # fail if a README's table is stale

A *whole run* is a ``bench_worker.py`` results file with all three systems ((a) the worker, (b)
the plain Faust agent, (c) the raw relay) draining the same messages, and (a) fed at a fraction
of its drain rate for the latency figures. The tables hold only what those files recorded: no
figure in them is typed by hand. ``tests/benchmarks/test_comparisons.py`` fails when the blocks
between the ``comparisons:`` markers in ``README.md`` and ``benchmarks/README.md`` differ from
what this script renders from ``benchmarks/results/``.

The issue's targets: (a) at least 10 times (b), (a) at least half of (c), and a p99 end-to-end
latency of at most 100 ms fed at half of (a)'s drain rate. A figure that meets its target is
set in bold.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (file, marker name, which table): the full table in the benchmarks README, the runs of the
# current default settings and the target counts in the top-level README
BLOCKS = (
    (ROOT / "benchmarks" / "README.md", "all"),
    (ROOT / "README.md", "current"),
)
TARGET_RATIO_B = 10.0
TARGET_SHARE_C = 0.5
TARGET_P99_MS = 100.0


@dataclass(frozen=True)
class Comparison:
    """One whole run, as its results file recorded it."""

    file: str
    started: str  # ISO 8601, UTC
    batch: int  # (a)'s pipeline_max_batch
    model_batch: int  # (a)'s model_max_batch
    a: float  # messages/s
    b: float
    c: float
    a_per_cpu_s: float | None  # messages per CPU-second of the process
    b_per_cpu_s: float | None
    fed: float  # messages/s of the paced feed
    fraction: float  # fed / (a)'s drain rate, as the harness aimed it
    p50_ms: float
    p99_ms: float
    steal_s: float | None  # CPU the host took from the VM during (a)'s and (b)'s drains
    short: tuple[str, ...] = ()  # systems whose run stopped before writing every record
    d: float | None = None  # the floors, where the run measured them: (c) + parsing, the model
    e: float | None = None  # and risk events; (e): (d) + the feature engine on in-memory state

    @property
    def a_over_b(self) -> float:
        return self.a / self.b

    @property
    def a_over_b_per_cpu(self) -> float | None:
        if self.a_per_cpu_s is None or self.b_per_cpu_s is None:
            return None
        return self.a_per_cpu_s / self.b_per_cpu_s

    @property
    def a_over_c(self) -> float:
        return self.a / self.c

    @property
    def met(self) -> tuple[bool, bool, bool]:
        """The three targets, in the issue's order (the latency one only at half rate)."""
        half = abs(self.fraction - 0.5) < 1e-6
        return (
            self.a_over_b >= TARGET_RATIO_B,
            self.a_over_c >= TARGET_SHARE_C,
            half and self.p99_ms <= TARGET_P99_MS,
        )


def _default_run(runs: list[Any], system: str) -> dict[str, Any] | None:
    """The system's run with default settings that measured a rate (a run that timed out is
    measured over the records it wrote: the table marks it)."""
    for r in runs:
        if (
            isinstance(r, dict)
            and r.get("system") == system
            and r.get("messages_per_s")
            and (system == "c" or r.get("label") == "default")
        ):
            return r
    return None


def parse(name: str, doc: Any) -> Comparison | None:
    """The whole run in one results document, or None when it is not one (a sweep, an A/B of
    settings, a run without the baselines or without the paced feed)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        return None
    runs = doc["runs"]
    a, b, c = (_default_run(runs, s) for s in ("a", "b", "c"))
    lat = next(
        (
            r
            for r in doc.get("latency") or []
            if isinstance(r, dict) and r.get("system") == "a" and r.get("label") == "latency-default-constant"
        ),
        None,
    )
    if a is None or b is None or c is None or lat is None or lat.get("status") != "ok":
        return None
    e2e = lat.get("end_to_end_ms") or {}
    feed = lat.get("feed") or {}
    if "p99" not in e2e or "rate" not in feed:
        return None
    steals = [r.get("machine_steal_s") for r in (a, b)]
    steal = None if None in steals else round(sum(float(x) for x in steals if x is not None), 2)
    settings = a.get("settings") or {}
    fraction = (doc.get("settings") or {}).get("latency_fraction", 0.5)
    return Comparison(
        file=name,
        started=str(doc.get("started", "")),
        batch=int(settings.get("pipeline_max_batch", 0)),
        model_batch=int(settings.get("model_max_batch", 0)),
        a=float(a["messages_per_s"]),
        b=float(b["messages_per_s"]),
        c=float(c["messages_per_s"]),
        a_per_cpu_s=a.get("messages_per_cpu_s"),
        b_per_cpu_s=b.get("messages_per_cpu_s"),
        fed=float(feed["rate"]),
        fraction=float(fraction),
        p50_ms=float(e2e["p50"]),
        p99_ms=float(e2e["p99"]),
        steal_s=steal,
        short=tuple(s for s, r in zip("abc", (a, b, c), strict=True) if r.get("status") != "ok"),
        d=_rate(runs, "d"),
        e=_rate(runs, "e"),
    )


def _rate(runs: list[Any], system: str) -> float | None:
    for r in runs:
        if isinstance(r, dict) and r.get("system") == system and r.get("status") == "ok":
            return float(r["messages_per_s"])
    return None


def load(results: Path = RESULTS) -> list[Comparison]:
    """Every whole run under ``results``, oldest first."""
    found = []
    for path in sorted(results.glob("worker*.json")):
        run = parse(path.name, json.loads(path.read_text()))
        if run is not None:
            found.append(run)
    return sorted(found, key=lambda r: (r.started, r.file))


def _span(values: list[float]) -> str:
    return f"{min(values):.0f}–{max(values):.0f}"


def _bold(text: str, met: bool) -> str:
    return f"**{text}**" if met else text


def table(runs: list[Comparison]) -> str:
    head = (
        "| results file | started (UTC) | batch / model call | (a) msg/s | (b) | (c) | (a)/(b) "
        "| per CPU-s | (a)/(c) | fed msg/s | p50 / p99 ms | host steal s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in runs:
        ratio_b, share_c, p99 = r.met
        per_cpu = r.a_over_b_per_cpu
        a, b, c = (
            f"{x:,.0f}" + (" †" if s in r.short else "") for s, x in zip("abc", (r.a, r.b, r.c), strict=True)
        )
        rows.append(
            f"| `{r.file}` | {r.started[:16].replace('T', ' ')} | {r.batch} / {r.model_batch} "
            f"| {a} | {b} | {c} | {_bold(f'{r.a_over_b:.1f}×', ratio_b)} "
            f"| {'–' if per_cpu is None else f'{per_cpu:.1f}×'} "
            f"| {_bold(f'{100 * r.a_over_c:.1f} %', share_c)} "
            f"| {r.fed:,.0f} | {r.p50_ms:.0f} / {_bold(f'{r.p99_ms:.1f}', p99)} "
            f"| {'–' if r.steal_s is None else f'{r.steal_s:.1f}'} |"
        )
    out = head + "\n".join(rows) + "\n"
    if any(r.short for r in runs):
        out += "\n† the run timed out short of its last records; its rate is over those it wrote.\n"
    return out


def counts(runs: list[Comparison]) -> str:
    """How often each target was met, with the range of each figure."""
    n = len(runs)
    if not n:
        return "No whole runs.\n"
    met = [r.met for r in runs]
    ratios = [r.a_over_b for r in runs]
    per_cpu = [x for x in (r.a_over_b_per_cpu for r in runs) if x is not None]
    shares = [100 * r.a_over_c for r in runs]
    p99s = [r.p99_ms for r in runs]
    cpu = f"; per CPU-second {min(per_cpu):.1f}–{max(per_cpu):.1f}×" if per_cpu else ""
    lines = [
        f"- (a) ≥ 10× (b): met in {sum(m[0] for m in met)} of {n} runs "
        f"({min(ratios):.1f}–{max(ratios):.1f}×{cpu}).",
        f"- (a) ≥ 50 % of (c): met in {sum(m[1] for m in met)} of {n} runs "
        f"({min(shares):.1f}–{max(shares):.1f} %).",
        f"- p99 ≤ 100 ms at half rate: met in {sum(m[2] for m in met)} of {n} runs "
        f"({min(p99s):.1f}–{max(p99s):.1f} ms).",
    ]
    with_floors = [r for r in runs if r.d is not None and r.e is not None]
    if with_floors:
        d_c = [100 * r.d / r.c for r in with_floors if r.d is not None]
        e_c = [100 * r.e / r.c for r in with_floors if r.e is not None]
        e_d = [100 * r.e / r.d for r in with_floors if r.e is not None and r.d is not None]
        a_e = [100 * r.a / r.e for r in with_floors if r.e is not None]
        lines.append(
            f"- The floors, in {len(with_floors)} of those runs: (d) {_span(d_c)} % of (c) (the relay "
            "plus parsing, the model and risk events; no features, no state); (e) "
            f"{_span(e_c)} % of (c), {_span(e_d)} % of (d) ((d) plus the feature engine on in-memory "
            f"state); (a) {_span(a_e)} % of (e)."
        )
    lines.append(
        f"- (a) {min(r.a for r in runs):,.0f}–{max(r.a for r in runs):,.0f} msg/s; "
        f"(b) {min(r.b for r in runs):,.0f}–{max(r.b for r in runs):,.0f}; "
        f"(c) {min(r.c for r in runs):,.0f}–{max(r.c for r in runs):,.0f}."
    )
    return "\n".join(lines) + "\n"


def current(runs: list[Comparison]) -> list[Comparison]:
    """The runs of the newest run's batch sizes (the worker's defaults when it ran)."""
    if not runs:
        return []
    latest = runs[-1]
    return [r for r in runs if (r.batch, r.model_batch) == (latest.batch, latest.model_batch)]


def render(which: str, runs: list[Comparison]) -> str:
    if which == "all":
        return (
            f"Every whole run in `benchmarks/results/` ({len(runs)}), oldest first; bold: a target met.\n\n"
            + table(runs)
            + "\nOver all of them:\n\n"
            + counts(runs)
        )
    now = current(runs)
    if not now:
        return "No whole runs.\n"
    return (
        f"The {len(now)} whole runs with the current batch sizes (pipeline batches of up to "
        f"{now[-1].batch:,} messages, model calls of up to {now[-1].model_batch:,} rows), oldest first; "
        "bold: a target met.\n\n" + table(now) + "\n" + counts(now)
    )


def marked(text: str, name: str) -> tuple[int, int]:
    """Where the block between ``<!-- comparisons:NAME:begin -->`` and its end marker sits."""
    begin, end = f"<!-- comparisons:{name}:begin -->\n", f"<!-- comparisons:{name}:end -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers for {name!r} missing or out of order")
    return i + len(begin), j


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the marked blocks in the READMEs")
    mode.add_argument("--check", action="store_true", help="exit 1 if a marked block is stale")
    args = ap.parse_args(argv)
    runs = load(args.results)
    if not (args.write or args.check):
        print(render("all", runs))
        return 0
    stale = []
    for path, name in BLOCKS:
        text = path.read_text()
        i, j = marked(text, name)
        want = render(name, runs)
        if text[i:j] == want:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text[:i] + want + text[j:])
            print(f"rewrote the {name!r} block of {path.relative_to(ROOT)}")
    if stale:
        print(f"stale comparison tables in {', '.join(stale)}: run benchmarks/comparisons.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
