"""The exception tree and its data."""

from __future__ import annotations

import pickle

from recoverly import CircuitBreakerError, RecoverlyError, RejectedError, TimeoutExceeded


def test_tree_and_builtin_bases():
    """Rejections share RejectedError; TimeoutExceeded is also a TimeoutError."""
    assert issubclass(CircuitBreakerError, RejectedError)
    assert issubclass(RejectedError, RecoverlyError)
    assert issubclass(TimeoutExceeded, TimeoutError)
    assert issubclass(TimeoutExceeded, RejectedError)


def test_errors_carry_their_data_through_pickling():
    """name, state, retry_after and seconds survive a pickle round trip (Celery ships them)."""
    err = CircuitBreakerError("Circuit breaker is OPEN", name="db", state="open", retry_after=3.5)
    back = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert type(back) is CircuitBreakerError
    assert (back.name, back.state, back.retry_after) == ("db", "open", 3.5)
    assert str(back) == "Circuit breaker is OPEN"

    t = TimeoutExceeded("too slow", name="f", seconds=2.0)
    back_t = pickle.loads(pickle.dumps(t))  # noqa: S301 - our own bytes
    assert back_t.seconds == 2.0
    assert back_t.name == "f"
    assert isinstance(back_t, TimeoutError)
