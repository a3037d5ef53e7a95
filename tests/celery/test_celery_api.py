"""The public surface of recoverly.celery: sorted, documented, and a helpful ImportError."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

pytest.importorskip("celery")

import recoverly.celery as rc


def test_all_is_sorted_and_complete():
    """__all__ is sorted (constants first, as ruff keeps it), unique, and every name exists."""
    assert rc.__all__ == sorted(set(rc.__all__), key=lambda n: (not n.isupper(), n))
    for name in rc.__all__:
        assert hasattr(rc, name), name


def test_every_public_name_is_documented_with_its_version():
    """Every exported class and function has a docstring saying when it was added."""
    for name in rc.__all__:
        obj = getattr(rc, name)
        if isinstance(obj, str):
            continue
        doc = inspect.getdoc(obj)
        assert doc, name
        assert "versionadded:: 0.2" in doc, name


def test_public_names_show_the_public_module():
    """The task API and the errors say they live in recoverly.celery."""
    for name in ("ResilientTask", "resilient_task", "configure_app", "LeaseLost", "LeaseHeld"):
        assert getattr(rc, name).__module__ == "recoverly.celery", name


def test_missing_celery_names_the_extra():
    """Without Celery installed, importing recoverly.celery says which extra to install."""
    code = (
        "import sys\n"
        "sys.modules['celery'] = None\n"
        "try:\n"
        "    import recoverly.celery\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install 'recoverly[celery]'" in out
