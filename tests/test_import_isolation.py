"""Importing recoverly loads no optional dependency."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "sqlalchemy",
    "redis",
    "celery",
    "fastapi",
    "starlette",
    "prometheus_client",
    "opentelemetry",
    "torch",
    "numpy",
    "trio",
    "pytest",
]


def test_import_recoverly_loads_no_optional_dependency():
    """A fresh interpreter that imports recoverly has none of the heavy packages loaded."""
    code = (
        "import sys, json, recoverly, recoverly.testing; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(  # noqa: S603 - fixed command
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert json.loads(out.stdout) == []
