"""The pytest plugin's recoverly_clock fixture."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def test_fixture_makes_retries_instant(pytester):
    """A test using recoverly_clock sees the sleeps recorded and none really taken."""
    pytester.makepyfile(
        """
        from recoverly import retry
        from recoverly.testing import FlakyCall

        def test_it(recoverly_clock):
            flaky = FlakyCall(failures=2, result="ok")
            assert retry(max_attempts=3, delay=30.0)(flaky)() == "ok"
            assert recoverly_clock.sleeps == [30.0, 60.0]
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--timeout=20")
    result.assert_outcomes(passed=1)
    assert result.duration < 15


def test_flaky_call_validates_and_counts():
    """FlakyCall raises the given exception for its failures, then returns."""
    import pytest

    from recoverly.testing import FlakyCall

    flaky = FlakyCall(failures=1, exception=lambda: KeyError("k"), result=7)
    with pytest.raises(KeyError):
        flaky()
    assert flaky() == 7
    assert flaky.calls == 2
    assert repr(flaky) == "<FlakyCall calls=2 failures=1>"
    with pytest.raises(ValueError, match="failures must be an integer >= 0, got -1"):
        FlakyCall(failures=-1)
