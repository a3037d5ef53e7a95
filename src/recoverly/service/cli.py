"""The ``recoverly`` command: ``recoverly demo`` and ``recoverly serve``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recoverly", description="The recoverly reference ML service."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train and predict under injected faults, then report the recovery"
    )
    demo.add_argument("--fast", action="store_true", help="a short run (a few seconds)")
    demo.add_argument(
        "--no-serve", action="store_true", help="exit after the report instead of serving"
    )
    demo.add_argument("--data-dir", type=Path, help="keep the database and checkpoints here")
    demo.add_argument("--json-report", type=Path, help="also write the report as JSON here")
    demo.add_argument(
        "--port", type=int, default=8000, help="port to serve on (taken: any free one)"
    )
    serve = commands.add_parser("serve", help="run the service (settings: RECOVERLY_* / .env)")
    serve.add_argument("--host", help="address to bind (default: RECOVERLY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: RECOVERLY_PORT or 8000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``recoverly`` command line; return the exit status.

    ``recoverly demo`` exits with 1 when a fault was not recovered.

    .. versionadded:: 0.2
    """
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from recoverly.service.demo import run_demo  # noqa: PLC0415 - loads the whole service

        report = run_demo(
            fast=args.fast, serve=not args.no_serve, data_dir=args.data_dir, port=args.port
        )
        if args.json_report is not None:
            args.json_report.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        return 0 if report.all_recovered else 1
    import uvicorn  # noqa: PLC0415

    from recoverly.service.app import create_app  # noqa: PLC0415
    from recoverly.service.settings import Settings  # noqa: PLC0415

    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
