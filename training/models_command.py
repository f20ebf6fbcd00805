"""``riskstream models``: list, show, verify, current, rollback, and the shadow (challenger)
version's shadow / promote / unshadow, on the model registry (the setting ``registry_dir``, env
``RISKSTREAM_REGISTRY_DIR``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "list, show, verify, roll back, shadow and promote published model versions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", type=Path, help="registry directory (default: the registry_dir setting)"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser(
        "list", help="published versions, oldest first; * marks the one served, ~ the one in shadow"
    )
    p.add_argument("--kind", help="only this model kind (behaviour, text, …)")
    p = sub.add_parser("show", help="print a version's manifest")
    p.add_argument("version")
    p = sub.add_parser("verify", help="recompute a version's checksums (and feature set)")
    p.add_argument("version")
    p.add_argument("--feature-set", help="also require this feature-set identity")
    p = sub.add_parser("current", help="the version served for a kind")
    p.add_argument("--kind", default="behaviour")
    p = sub.add_parser("rollback", help="serve the previous version (or --to VERSION)")
    p.add_argument("--kind", default="behaviour")
    p.add_argument("--to", help="the version to serve")
    p = sub.add_parser(
        "shadow", help="score VERSION beside the served one (in risk events and metrics, not decisions)"
    )
    p.add_argument("version", nargs="?", help="the version to shadow (default: print the one in shadow)")
    p.add_argument("--kind", default="behaviour")
    p = sub.add_parser("promote", help="serve the version in shadow, and stop shadowing")
    p.add_argument("--kind", default="behaviour")
    p = sub.add_parser("unshadow", help="stop scoring a shadow version")
    p.add_argument("--kind", default="behaviour")


def _metric_line(manifest: dict[str, object]) -> str:
    metrics = manifest.get("metrics")
    val = metrics.get("validation") if isinstance(metrics, dict) else None
    if not isinstance(val, dict):
        return ""
    parts = []
    for key, label in (("auc_roc", "AUC"), ("average_precision", "AP"), ("card_precision_at_100", "CP@100")):
        v = val.get(key)
        if isinstance(v, int | float):
            parts.append(f"{label} {v:.3f}")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    from modeling.errors import RiskstreamError
    from modeling.registry import ModelRegistry
    from modeling.settings import load_settings

    root = args.registry if args.registry is not None else load_settings().registry_dir
    reg = ModelRegistry(root)
    try:
        if args.action == "list":
            kinds = [args.kind] if args.kind else reg.kinds()
            if not any(reg.list(k) for k in kinds):
                print(f"no models published in {root}")
                return 0
            for kind in kinds:
                cur, shadow = reg.current(kind), reg.shadow(kind)
                for v in reg.list(kind):
                    m = reg.manifest(v)
                    mark = "*" if v == cur else "~" if v == shadow else " "
                    print(
                        f"{mark} {v:<18} {m.get('created', '?'):<32} {m.get('feature_set') or '-':<22} "
                        f"{_metric_line(m)}"
                    )
        elif args.action == "show":
            json.dump(reg.manifest(args.version), sys.stdout, indent=2, sort_keys=True)
            print()
        elif args.action == "verify":
            bundle = reg.load(args.version, args.feature_set)
            print(f"{bundle.version}: {len(bundle.manifest['files'])} files verified")
        elif args.action == "current":
            cur = reg.current(args.kind)
            if cur is None:
                print(f"no {args.kind!r} model published in {root}", file=sys.stderr)
                return 1
            print(cur)
        elif args.action == "rollback":
            print(reg.rollback(args.kind, args.to))
        elif args.action == "shadow":
            if args.version is None:
                shadow = reg.shadow(args.kind)
                if shadow is None:
                    print(f"no {args.kind!r} version in shadow", file=sys.stderr)
                    return 1
                print(shadow)
            else:
                print(reg.set_shadow(args.kind, args.version))
        elif args.action == "promote":
            print(reg.promote(args.kind))
        elif args.action == "unshadow":
            print(reg.clear_shadow(args.kind) or "no version was in shadow")
    except RiskstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
