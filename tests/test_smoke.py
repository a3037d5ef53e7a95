"""The package imports and a retried call recovers."""

from recoverly import retry
from recoverly.testing import FlakyCall


def test_retry_recovers_from_two_failures():
    """A call that fails twice succeeds on the third attempt."""
    flaky = FlakyCall(failures=2, result="ok")
    assert retry(max_attempts=3, delay=1.0)(flaky)() == "ok"
    assert flaky.calls == 3
