"""Backtest reports: ``metrics.json``, PNG plots and an HTML summary that links them."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from modeling.evaluation import average_precision, card_precision_top_k, days_from_ms, roc_auc
from training.backtest import BacktestResult, ModelRun


def model_metrics(res: BacktestResult, run: ModelRun) -> dict[str, Any]:
    s = run.scores
    out: dict[str, Any] = {
        "model_version": run.version,
        "n_transactions": len(s),
        "thresholds": run.thresholds,
        "decisions": {d: int((run.decisions == d).sum()) for d in ("approve", "review", "decline")},
    }
    if res.y is None or res.y.sum() == 0 or res.y.sum() == len(res.y):
        return out
    y = res.y.astype(bool)
    days = days_from_ms(res.time_ms)
    cp = card_precision_top_k(y, s, res.user_id, days, 100)
    out.update(
        auc_roc=roc_auc(y, s),
        average_precision=average_precision(y, s),
        card_precision_at_100=cp.mean,
        card_precision_at_100_daily={
            str(np.datetime64(int(d), "D")): p for d, p in zip(cp.days, cp.per_day, strict=True)
        },
        n_fraud=int(y.sum()),
        fraud_rate=float(y.mean()),
    )
    fraud_amount = float(res.amount[y].sum())
    at: dict[str, Any] = {}
    for name in ("review", "decline"):
        thr = run.thresholds[name]
        flagged = s >= thr
        tp = int((flagged & y).sum())
        at[name] = {
            "threshold": thr,
            "alert_rate": float(flagged.mean()),
            "alerts": int(flagged.sum()),
            "fraud_caught": tp,
            "recall": tp / int(y.sum()),
            "precision": tp / int(flagged.sum()) if flagged.any() else 0.0,
            "fraud_amount_caught": float(res.amount[flagged & y].sum()),
            "fraud_amount_caught_share": float(res.amount[flagged & y].sum()) / fraud_amount
            if fraud_amount
            else 0.0,
        }
        if res.scenario is not None:
            per: dict[str, float] = {}
            for sc in sorted(set(res.scenario[y].tolist())):
                m = y & (res.scenario == sc)
                per[str(sc)] = float((flagged & m).sum() / m.sum())
            at[name]["recall_per_scenario"] = per
    out["at_threshold"] = at
    out["fraud_amount_total"] = fraud_amount
    return out


def _curves(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    yy = y[order].astype(np.float64)
    tp = np.cumsum(yy)
    fp = np.cumsum(1 - yy)
    recall = tp / max(tp[-1], 1)
    precision = tp / np.arange(1, len(yy) + 1)
    tpr = recall
    fpr = fp / max(fp[-1], 1)
    return recall, precision, fpr, tpr


def plots(res: BacktestResult, out: Path, metrics: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    if res.y is None or res.y.sum() == 0:
        return files
    y = res.y.astype(bool)
    fig_pr, ax_pr = plt.subplots(figsize=(6, 5))
    fig_roc, ax_roc = plt.subplots(figsize=(6, 5))
    for run, m in zip(res.runs, metrics, strict=True):
        r, p, fpr, tpr = _curves(y, run.scores)
        ax_pr.plot(r, p, label=f"{run.version} (AP {m['average_precision']:.3f})")
        ax_roc.plot(fpr, tpr, label=f"{run.version} (AUC {m['auc_roc']:.3f})")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    for fig, ax, name in ((fig_pr, ax_pr, "pr_curve.png"), (fig_roc, ax_roc, "roc_curve.png")):
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    fig, axes = plt.subplots(1, len(res.runs), figsize=(6 * len(res.runs), 4), squeeze=False)
    bins = np.linspace(0, 1, 51)
    for ax, run in zip(axes[0], res.runs, strict=True):
        ax.hist(run.scores[~y], bins=bins, alpha=0.6, label="genuine", density=True, log=True)
        ax.hist(run.scores[y], bins=bins, alpha=0.6, label="fraud", density=True, log=True)
        for name, thr in run.thresholds.items():
            ax.axvline(thr, ls="--", lw=0.8, color="k")
            ax.text(thr, ax.get_ylim()[1] * 0.5, name, rotation=90, fontsize=7)
        ax.set(title=f"Scores: {run.version}", xlabel="score", ylabel="density (log)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "score_distribution.png", dpi=110)
    plt.close(fig)
    files.append("score_distribution.png")
    fig, ax = plt.subplots(figsize=(8, 4))
    for m in metrics:
        daily = m["card_precision_at_100_daily"]
        days = np.array(list(daily), dtype="datetime64[D]")
        ax.plot(days, list(daily.values()), marker="o", ms=3, label=m["model_version"])
    ax.set(title="Card Precision@100 per day", ylabel="CP@100")
    ax.tick_params(axis="x", rotation=70, labelsize=6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "daily_cp100.png", dpi=110)
    plt.close(fig)
    files.append("daily_cp100.png")
    return files


def write_report(res: BacktestResult, out: Path, source: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    per_model = [model_metrics(res, r) for r in res.runs]
    doc: dict[str, Any] = {
        "source": source,
        "n_events": res.n_events,
        "seconds": res.seconds,
        "events_per_s": res.events_per_s,
        "models": per_model,
    }
    # The champion's figures also at the top level, for scripts that read one model.
    for k in ("auc_roc", "average_precision", "card_precision_at_100", "at_threshold"):
        if k in per_model[0]:
            doc[k] = per_model[0][k]
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    files = plots(res, out, per_model)
    (out / "index.html").write_text(_html(doc, files))
    return doc


def _html(doc: dict[str, Any], files: list[str]) -> str:
    rows = []
    for m in doc["models"]:
        at = m.get("at_threshold", {})
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    m["model_version"],
                    f"{m.get('auc_roc', float('nan')):.4f}",
                    f"{m.get('average_precision', float('nan')):.4f}",
                    f"{m.get('card_precision_at_100', float('nan')):.4f}",
                    f"{at.get('review', {}).get('alert_rate', 0):.4%}",
                    f"{at.get('review', {}).get('recall', 0):.2%}",
                    f"{at.get('review', {}).get('fraud_amount_caught_share', 0):.2%}",
                )
            )
            + "</tr>"
        )
    imgs = "".join(f'<p><a href="{f}"><img src="{f}" style="max-width:48%"></a></p>' for f in files)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>riskstream backtest</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>riskstream backtest</h1>
<p>Source: {html.escape(doc["source"])} &middot; {doc["n_events"]:,} events in {doc["seconds"]:.1f} s
({doc["events_per_s"]:,.0f} events/s) &middot; <a href="metrics.json">metrics.json</a></p>
<table><tr><th>model</th><th>AUC ROC</th><th>Average precision</th><th>Card precision@100</th>
<th>review alert rate</th><th>fraud caught (review)</th><th>fraud amount caught</th></tr>
{"".join(rows)}</table>
<p>Clickstream features come from riskstream's SYNTHETIC clickstream generator (training/clickstream.py).</p>
{imgs}</body></html>
"""
