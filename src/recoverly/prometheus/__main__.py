"""``python -m recoverly.prometheus``: print the Prometheus alert rules, or their thresholds.

::

    python -m recoverly.prometheus rules [--set KEY=VALUE ...] [--namespace NS]
                                         [--runbook-url URL] [--output FILE]
    python -m recoverly.prometheus thresholds

.. versionadded:: 0.2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from recoverly.prometheus._rule_table import THRESHOLDS
from recoverly.prometheus.alerts import DEFAULT_RUNBOOK_URL, alert_rules

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recoverly.prometheus",
        description="Prometheus alerting and recording rules for recoverly's metrics.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rules = commands.add_parser("rules", help="print the rules file (YAML)")
    rules.add_argument(
        "--set",
        dest="changes",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a threshold (repeatable); see the `thresholds` command",
    )
    rules.add_argument("--namespace", default="recoverly", help="the namespace given to install()")
    rules.add_argument(
        "--runbook-url", default=DEFAULT_RUNBOOK_URL, help="page the runbook_url annotations use"
    )
    rules.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    commands.add_parser("thresholds", help="list the thresholds, their defaults and meaning")
    return parser


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for a usage error).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success.

    .. versionadded:: 0.2
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "thresholds":
        width = max(len(t.key) for t in THRESHOLDS)
        for t in THRESHOLDS:
            sys.stdout.write(f"{t.key:<{width}}  {t.default:<6g} {t.kind:<8} {t.meaning}\n")
        return 0
    changes: dict[str, float] = {}
    for item in args.changes:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError  # noqa: TRY301 - reported like a bad number
            changes[key.strip()] = _number(value.strip())
        except ValueError:
            parser.error(f"--set needs KEY=NUMBER, got {item!r}")
    try:
        text = alert_rules(namespace=args.namespace, runbook_url=args.runbook_url, **changes)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
