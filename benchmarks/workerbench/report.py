"""The summary of a benchmark's runs (ratios, targets) and the table printed at the end."""

from __future__ import annotations

from typing import Any

from workerbench.measure import STEADY_AFTER_S

# ------------------------------------------------------------------------------------ report


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def summarize(runs: list[dict[str, Any]], latency: dict[str, Any] | None) -> dict[str, Any]:
    """Headline numbers: (a) and (b) with default settings, (c); the best of each sweep too."""

    def pick(system: str, label: str | None = None) -> dict[str, Any] | None:
        ok = [r for r in runs if r["system"] == system and r.get("messages_per_s")]
        if label is not None:
            return next((r for r in ok if r["label"] == label), None)
        return max(ok, key=lambda r: r["messages_per_s"], default=None)

    def get(r: dict[str, Any] | None, key: str) -> Any:
        return r.get(key) if r else None

    a, b, c, d, e = pick("a", "default"), pick("b", "default"), pick("c"), pick("d"), pick("e")
    a_best, b_best = pick("a"), pick("b")
    p99 = latency["end_to_end_ms"]["p99"] if latency else None
    s: dict[str, Any] = {
        "a_default_messages_per_s": get(a, "messages_per_s"),
        "a_default_transactions_per_s": get(a, "transactions_per_s"),
        "a_best": {"label": get(a_best, "label"), "messages_per_s": get(a_best, "messages_per_s")},
        "b_default_messages_per_s": get(b, "messages_per_s"),
        "b_default_transactions_per_s": get(b, "transactions_per_s"),
        "b_best": {"label": get(b_best, "label"), "messages_per_s": get(b_best, "messages_per_s")},
        "c_messages_per_s": get(c, "messages_per_s"),
        "d_messages_per_s": get(d, "messages_per_s"),
        # (d) does all the per-message work but the features and the state: no worker with this
        # model and this Kafka client can pass it here
        "d_over_c": _ratio(get(d, "messages_per_s"), get(c, "messages_per_s")),
        "a_over_d": _ratio(get(a, "messages_per_s"), get(d, "messages_per_s")),
        # (e) adds the feature engine on in-memory state: the ceiling of a worker built on it
        "e_messages_per_s": get(e, "messages_per_s"),
        "e_over_c": _ratio(get(e, "messages_per_s"), get(c, "messages_per_s")),
        "a_over_e": _ratio(get(a, "messages_per_s"), get(e, "messages_per_s")),
        "a_over_b": _ratio(get(a, "messages_per_s"), get(b, "messages_per_s")),
        "a_over_c": _ratio(get(a, "messages_per_s"), get(c, "messages_per_s")),
        "a_best_over_b_best": _ratio(get(a_best, "messages_per_s"), get(b_best, "messages_per_s")),
        "a_best_over_c": _ratio(get(a_best, "messages_per_s"), get(c, "messages_per_s")),
        "a_over_b_per_cpu_s": _ratio(get(a, "messages_per_cpu_s"), get(b, "messages_per_cpu_s")),
        "a_over_c_per_cpu_s": _ratio(get(a, "messages_per_cpu_s"), get(c, "messages_per_cpu_s")),
        "latency_settings": latency["settings"] if latency else None,
        "latency_feed_rate": latency["feed"].get("rate") if latency else None,
        "latency_p50_ms": latency["end_to_end_ms"]["p50"] if latency else None,
        "latency_p99_ms": p99,
        # without the feed's first STEADY_AFTER_S seconds; the target is judged on the whole feed
        "latency_steady_p99_ms": (latency.get("end_to_end_ms_steady") or {}).get("p99") if latency else None,
    }
    s["half_of_c_budget"] = half_of_c_budget(a, get(c, "messages_per_s"))
    ab, ac = s["a_over_b"], s["a_over_c"]
    s["targets"] = {
        "a_at_least_10x_b": None if ab is None else ab >= 10.0,
        "a_at_least_half_of_c": None if ac is None else ac >= 0.5,
        "p99_at_most_100ms_at_half_rate": None if p99 is None else p99 <= 100.0,
    }
    return s


def half_of_c_budget(a: dict[str, Any] | None, c_rate: float | None) -> dict[str, Any] | None:
    """What half of (c)'s rate leaves a worker per message, against what (a)'s event loop spent
    per message over its drain outside the scoring step (``drain_cpu``: Kafka intake, Faust,
    alignment, acks, terminal labels, output, state flushes, metrics). The scoring step is
    parsing, features and the model; were it free, (a) would still need ``outside_score_us``
    of its one event-loop thread per message, so (a) can reach half of (c) only if that is
    below ``budget_us``."""
    dc = (a or {}).get("drain_cpu") or {}
    per = dc.get("us_per_message")
    if not per or not c_rate:
        return None
    outside = per.get("event_loop", 0.0) - per.get("score", 0.0)
    budget = 2e6 / c_rate
    return {
        "budget_us": round(budget, 2),
        "event_loop_us": per.get("event_loop"),
        "score_us": per.get("score"),
        "outside_score_us": round(outside, 2),
        "outside_score_over_budget": round(outside / budget, 2),
    }


def print_table(runs: list[dict[str, Any]], latency: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    cols = f"{'msg/s':>10}{'txn/s':>10}{'msg/CPU-s':>11}{'txn/call':>9}{'span s':>8}{'load':>7}"
    head = f"{'run':<28}{cols}  status"
    print("\n" + head + "\n" + "-" * len(head))
    for r in runs:
        name = f"({r['system']}) {r['label']}"
        txn = r.get("transactions_per_s")
        print(
            f"{name:<28}{r.get('messages_per_s') or 0:>10,.0f}{txn or 0:>10,.0f}"
            f"{r.get('messages_per_cpu_s') or 0:>11,.0f}"
            f"{r.get('batches', {}).get('transactions_per_call_mean') or 0:>9.1f}{r['span_s']:>8.1f}"
            f"{r['loadavg_end'][0]:>7.1f}  {r['status']}"
        )
    for lat in latency:
        f = lat["feed"]
        e = lat.get("end_to_end_ms") or lat["input_to_output_record_ms"]  # (c): record to record
        print(
            f"\n{lat['label']}: fed {f.get('rate', 0):,.0f} msg/s (target {f['target_rate']:,.0f}); "
            f"end-to-end p50 {e['p50']} ms  p90 {e['p90']} ms  p99 {e['p99']} ms  max {e['max']} ms"
            f"  [{lat['status']}]"
        )
        st = lat.get("end_to_end_ms_steady") or lat.get("input_to_output_record_ms_steady")
        if st and st["p50"] is not None:  # None: a feed shorter than STEADY_AFTER_S
            print(
                f"  after the first {STEADY_AFTER_S} s: "
                f"p50 {st['p50']} ms  p99 {st['p99']} ms  max {st['max']} ms"
            )
    t = summary["targets"]
    print(
        f"\n(a)/(b) = {summary['a_over_b']}  (target ≥ 10: {t['a_at_least_10x_b']})   "
        f"(a)/(c) = {summary['a_over_c']}  (target ≥ 0.5: {t['a_at_least_half_of_c']})   "
        f"p99 ≤ 100 ms: {t['p99_at_most_100ms_at_half_rate']}"
    )
    if summary.get("d_over_c") is not None:
        print(
            f"(d)/(c) = {summary['d_over_c']}: the floor without features or state   "
            f"(a)/(d) = {summary['a_over_d']}"
        )
    if summary.get("e_over_c") is not None:
        print(f"(e)/(c) = {summary['e_over_c']}: with the feature engine   (a)/(e) = {summary['a_over_e']}")
    print(
        f"best settings: (a) {summary['a_best']['label']} / (b) {summary['b_best']['label']} = "
        f"{summary['a_best_over_b_best']}   (a) best / (c) = {summary['a_best_over_c']}"
    )
    print(
        f"per CPU-second: (a)/(b) = {summary['a_over_b_per_cpu_s']}  "
        f"(a)/(c) = {summary['a_over_c_per_cpu_s']}"
    )
    hb = summary.get("half_of_c_budget")
    if hb:
        print(
            f"half of (c) leaves {hb['budget_us']} µs per message; (a)'s event loop spent "
            f"{hb['event_loop_us']} µs per message draining, {hb['outside_score_us']} of them outside "
            f"the scoring step ({hb['outside_score_over_budget']}× the budget)"
        )
