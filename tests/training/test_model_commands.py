"""``riskstream train``, ``evaluate`` and ``models`` end to end on a small handbook-format file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modeling.features import FeatureConfig
from modeling.registry import ModelRegistry
from modeling.settings import feature_config, load_settings
from streams.cli import main

START = pd.Timestamp("2018-04-01")
SMALL_NET = [
    "--hidden",
    "16,8",
    "--seq-channels",
    "8",
    "--head-hidden",
    "8",
    "--device",
    "cpu",
    "--no-progress",
]


def handbook_file(
    path: Path, days: int = 40, customers: int = 150, terminals: int = 60, seed: int = 0
) -> Path:
    """A miniature of the handbook simulator: its columns and its three fraud scenarios."""
    rng = np.random.default_rng(seed)
    mean_amount = rng.uniform(5, 100, customers)
    rows = []
    for day in range(days):
        for c in range(customers):
            for _ in range(rng.poisson(2.0)):
                secs = day * 86400 + int(rng.integers(0, 86400))
                amount = float(max(0.5, rng.normal(mean_amount[c], mean_amount[c] / 2)))
                if rng.random() < 0.003:
                    amount = float(rng.uniform(221, 400))
                rows.append((c, int(rng.integers(0, terminals)), amount, secs, day))
    df = pd.DataFrame(
        rows, columns=["CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_SECONDS", "TX_TIME_DAYS"]
    )
    df = df.sort_values("TX_TIME_SECONDS", kind="stable").reset_index(drop=True)
    df["TRANSACTION_ID"] = np.arange(len(df))
    df["TX_DATETIME"] = START + pd.to_timedelta(df["TX_TIME_SECONDS"], unit="s")
    scen = np.where(df["TX_AMOUNT"] > 220, 1, 0)
    for term, first in ((3, 8), (17, 20), (29, 30)):  # compromised terminals, 7 days each
        hit = (df["TERMINAL_ID"] == term) & df["TX_TIME_DAYS"].between(first, first + 6)
        scen = np.where(hit & (scen == 0), 2, scen)
    for cust, first in ((5, 10), (44, 18), (90, 26), (120, 33)):  # compromised customers
        hit = (df["CUSTOMER_ID"] == cust) & df["TX_TIME_DAYS"].between(first, first + 6)
        pick = hit & (rng.random(len(df)) < 1 / 3) & (scen == 0)
        df.loc[pick, "TX_AMOUNT"] *= 5
        scen = np.where(pick, 3, scen)
    df["TX_FRAUD_SCENARIO"] = scen
    df["TX_FRAUD"] = (scen > 0).astype(int)
    cols = [
        "TRANSACTION_ID",
        "TX_DATETIME",
        "CUSTOMER_ID",
        "TERMINAL_ID",
        "TX_AMOUNT",
        "TX_TIME_SECONDS",
        "TX_TIME_DAYS",
        "TX_FRAUD",
        "TX_FRAUD_SCENARIO",
    ]
    df[cols].to_parquet(path)
    return path


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return handbook_file(tmp_path_factory.mktemp("hist") / "mini.parquet")


def test_train_publishes_and_models_commands_manage_versions(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg_dir = tmp_path / "registry"
    common = ["--registry", str(reg_dir), "--epochs", "2", "--warmup-days", "10", *SMALL_NET]
    assert main(["train", str(history), *common, "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "behaviour-0001"
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["version"] == "behaviour-0001" and "validation" in metrics

    manifest = ModelRegistry(reg_dir).manifest("behaviour-0001")
    assert manifest["training_data"]["train_from"].startswith("2018-04-11")
    assert manifest["training_data"]["validation_until"].startswith("2018-05-10")
    assert manifest["training_data"]["label_delay_days"] == 7.0
    assert manifest["feature_set"].startswith("fs")
    blend = manifest["hyperparameters"]["blend"]  # the default blends a smooth second member
    assert [b["net"]["numeric_encoding"] for b in blend] == ["none"]
    assert manifest["hyperparameters"]["net"]["numeric_encoding"] == "ple_tree"

    assert (
        main(
            [
                "train",
                str(history),
                *common,
                "--from",
                "2018-04-15",
                "--until",
                "2018-05-08",
                "--no-clicks",
                "--seq-encoder",
                "none",
                "--no-blend",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == "behaviour-0002"

    assert main(["models", "--registry", str(reg_dir), "list"]) == 0
    listing = capsys.readouterr().out
    assert "  behaviour-0001" in listing and "* behaviour-0002" in listing
    assert main(["models", "--registry", str(reg_dir), "current"]) == 0
    assert capsys.readouterr().out.strip() == "behaviour-0002"
    assert main(["models", "--registry", str(reg_dir), "rollback"]) == 0
    assert capsys.readouterr().out.strip() == "behaviour-0001"
    assert main(["models", "--registry", str(reg_dir), "current"]) == 0
    assert capsys.readouterr().out.strip() == "behaviour-0001"
    assert main(["models", "--registry", str(reg_dir), "show", "behaviour-0002"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "behaviour-0002" and shown["hyperparameters"]["net"]["seq_encoder"] == "none"
    assert shown["hyperparameters"]["blend"] == []
    assert main(["models", "--registry", str(reg_dir), "verify", "behaviour-0002"]) == 0
    assert "verified" in capsys.readouterr().out
    assert (
        main(["models", "--registry", str(reg_dir), "verify", "behaviour-0002", "--feature-set", "fs-x"]) == 1
    )
    assert "fs-x" in capsys.readouterr().err
    assert main(["models", "--registry", str(reg_dir), "rollback", "--to", "behaviour-0009"]) == 1
    # A challenger in shadow: listed with ~, promoted to serve, or stopped.
    models = ["models", "--registry", str(reg_dir)]
    capsys.readouterr()
    assert main([*models, "shadow"]) == 1 and "no 'behaviour' version in shadow" in capsys.readouterr().err
    assert main([*models, "shadow", "behaviour-0002"]) == 0
    assert main([*models, "list"]) == 0
    listing = capsys.readouterr().out
    assert "* behaviour-0001" in listing and "~ behaviour-0002" in listing
    assert main([*models, "shadow", "behaviour-0001"]) == 1 and "current" in capsys.readouterr().err
    assert main([*models, "promote"]) == 0 and capsys.readouterr().out.strip() == "behaviour-0002"
    assert main([*models, "current"]) == 0 and capsys.readouterr().out.strip() == "behaviour-0002"
    assert main([*models, "shadow", "behaviour-0001"]) == 0
    assert main([*models, "unshadow"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "behaviour-0001"
    assert main([*models, "shadow"]) == 1
    assert main(["models", "--registry", str(tmp_path / "empty"), "current"]) == 1
    assert main(["models", "--registry", str(tmp_path / "empty"), "list"]) == 0
    assert "no models" in capsys.readouterr().out


def test_evaluate_prints_the_handbook_table_and_writes_json(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "eval.json"
    argv = [
        "evaluate",
        str(history),
        "--first-train-day",
        "2018-04-10",
        "--folds",
        "2",
        "--tune-folds",
        "1",
        "--epochs",
        "1",
        "--json",
        str(out_json),
        "--cache",
        str(tmp_path / "cache.npz"),
        *SMALL_NET,
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Handbook: XGBoost" in printed and "riskstream FraudNet (held-out folds)" in printed
    res = json.loads(out_json.read_text())
    assert [f["role"] for f in res["folds"]] == ["tune", "held-out"]
    assert res["folds"][0]["train_days"][1] - res["folds"][0]["train_days"][0] == 6
    assert res["folds"][1]["test_days"][0] - res["folds"][0]["test_days"][0] == 7
    assert set(res["summary"]["held-out"]) == {"auc_roc", "average_precision", "card_precision_at_100"}
    assert (tmp_path / "cache.npz").exists()
    # the cache is reused, and a protocol that runs past the data is refused
    assert main([*argv[:3], "2018-04-25", *argv[4:]]) == 1


def test_train_uses_the_feature_definition_the_worker_runs(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Settings that shape the features (label delay, retention, clicks) reach the trainer as
    they reach the worker: the worker serves only models of its own feature set."""
    monkeypatch.setenv("RISKSTREAM_LABEL_DELAY_DAYS", "10")
    monkeypatch.setenv("RISKSTREAM_USER_RETENTION_DAYS", "200")
    monkeypatch.setenv("RISKSTREAM_USE_CLICKS", "false")
    reg_dir = tmp_path / "registry"
    args = ["train", str(history), "--registry", str(reg_dir), "--epochs", "1", "--warmup-days", "10"]
    assert main([*args, *SMALL_NET, "--no-blend"]) == 0
    capsys.readouterr()
    worker = feature_config(load_settings())
    assert not worker.use_clicks and worker.label_delay_ms == 10 * 86_400_000
    manifest = ModelRegistry(reg_dir).manifest("behaviour-0001")
    assert manifest["feature_set"] == worker.feature_set != FeatureConfig().feature_set
    assert manifest["training_data"]["label_delay_days"] == 10.0
