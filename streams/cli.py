"""The ``riskstream`` command. Each subcommand lives in its own module exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; modules import their heavy dependencies
(Paddle, faust) inside ``run`` so that ``riskstream kafka status`` starts instantly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> module implementing it
COMMANDS: dict[str, str] = {
    "kafka": "streams.broker.command",
    "worker": "streams.worker_command",
    "replay": "streams.replay_command",
    "warmup": "streams.warmup_command",
    "dead-letters": "streams.dead_letters_command",
    "group": "streams.group_command",
    "demo": "streams.demo",
    "train": "training.train_command",
    "train-text": "training.text_command",
    "backtest": "training.backtest_command",
    "evaluate": "training.evaluate_command",
    "models": "training.models_command",
}


def _offline_env() -> None:
    # paddlenlp / huggingface must never try the network: weights come from local dirs only.
    os.environ.setdefault("AISTUDIO_BOS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riskstream",
        description="riskstream: a streaming fraud scorer on Kafka, Faust and Paddle Inference.",
        epilog="Settings come from RISKSTREAM_* environment variables and --config (README).",
    )
    config_help = "TOML settings file (environment variables RISKSTREAM_* win)"
    parser.add_argument("--config", help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        # after the command too (`riskstream worker --config F`); SUPPRESS: absent, it leaves
        # the value given before the command
        p.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline_env()
    args = build_parser().parse_args(argv)
    if args.config:
        os.environ["RISKSTREAM_CONFIG"] = args.config
    from aiokafka.errors import KafkaError
    from pydantic import ValidationError as SettingsError

    from modeling.errors import RiskstreamError

    try:
        rc: int = args._run(args)
    except RiskstreamError as exc:  # a clear message, not a traceback (a broker refusing us, …)
        print(f"riskstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # the cluster unreachable, a request refused: no traceback
        print(
            f"riskstream {args.command}: Kafka: {exc} "
            "(check RISKSTREAM_BOOTSTRAP_SERVERS and the security settings)",
            file=sys.stderr,
        )
        return 2
    except SettingsError as exc:
        # Messages only: pydantic's own rendering repeats the input, passwords included.
        errors = exc.errors(include_url=False, include_input=False)
        why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in errors)
        print(f"riskstream {args.command}: invalid settings: {why}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
