"""The public surface: __all__ is sorted and complete, and names show their public path."""

from __future__ import annotations

import inspect

import recoverly
from recoverly import events


def test_all_is_sorted_and_unique():
    """__all__ is sorted (case-sensitive) with no duplicates."""
    assert recoverly.__all__ == sorted(set(recoverly.__all__))


def test_all_lists_every_public_attribute():
    """Every public name defined in the package root is exported in __all__."""
    public = {
        name
        for name in dir(recoverly)
        if not name.startswith("_") and not inspect.ismodule(getattr(recoverly, name))
    }
    assert public <= set(recoverly.__all__)
    for name in recoverly.__all__:
        assert hasattr(recoverly, name), name


def test_public_objects_show_the_public_module():
    """Classes and functions exported from the root say they live in `recoverly`."""
    for name in recoverly.__all__:
        obj = getattr(recoverly, name)
        if inspect.ismodule(obj):
            continue
        assert obj.__module__ == "recoverly", name


def test_every_public_name_is_documented():
    """Every exported class and function has a docstring."""
    for name in recoverly.__all__:
        assert inspect.getdoc(getattr(recoverly, name)), name
    for name in events.__all__:
        assert inspect.getdoc(getattr(events, name)), name


def test_seed_import_line_works():
    """The seeds' import line, with the module renamed, imports everything it names."""
    namespace: dict[str, object] = {}
    exec(  # noqa: S102 - the statement under test is a fixed string
        "from recoverly import retry, RetryStrategy, CircuitBreaker, CircuitState, "
        "CircuitBreakerError, fallback, timeout, TransactionManager, safe_execute, "
        "batch_with_retry",
        namespace,
    )
    assert callable(namespace["retry"])


def test_version_is_a_string():
    """__version__ comes from the installed metadata."""
    assert isinstance(recoverly.__version__, str)
    assert recoverly.__version__
