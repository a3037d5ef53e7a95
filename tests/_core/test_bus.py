"""The event bus: routing by class, isolation of failing subscribers."""

from __future__ import annotations

import logging

import pytest

from recoverly import events
from recoverly._core.bus import EventBus


def test_subscriber_receives_only_requested_kinds():
    """A subscriber for RetryScheduled sees it and not other events."""
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append, (events.RetryScheduled,))
    assert bus.wants(events.RetryScheduled)
    assert not bus.wants(events.TimedOut)
    bus.emit(events.RetryScheduled("f", 1, None, 0.0))
    bus.emit(events.TimedOut("f", 1.0))
    assert [type(e) for e in seen] == [events.RetryScheduled]


def test_subscribing_to_a_base_class_receives_subclasses():
    """CircuitStateChanged subscribers get CircuitOpened too."""
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append, (events.CircuitStateChanged,))
    opened = events.CircuitOpened(
        "b", events.CircuitState.CLOSED, events.CircuitState.OPEN, 5, 60.0
    )
    bus.emit(opened)
    assert seen == [opened]


def test_failing_subscriber_is_logged_and_others_still_run(caplog):
    """A raising subscriber never breaks emit; later subscribers still get the event."""
    bus = EventBus()
    seen = []

    def broken(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    bus.emit(events.TimedOut("f", 1.0))
    assert len(seen) == 1
    assert "subscriber" in caplog.text
    assert "subscriber bug" in caplog.text


def test_unsubscribe_stops_delivery():
    """After unsubscribe, nothing more arrives and wants() turns false."""
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    assert bus.unsubscribe(seen.append) is True
    assert bus.unsubscribe(seen.append) is False
    bus.emit(events.TimedOut("f", 1.0))
    assert seen == []
    assert not bus.wants(events.TimedOut)


def test_public_subscribe_validates_arguments():
    """events.subscribe rejects non-callables and non-event kinds."""
    with pytest.raises(TypeError, match="fn must be callable, got 3"):
        events.subscribe(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kinds must be Event subclasses"):
        events.subscribe(print, int)  # type: ignore[arg-type]


def test_default_log_subscriber_is_installed(caplog):
    """recoverly logs through log_event unless it is unsubscribed."""
    caplog.set_level(logging.INFO, logger="recoverly")
    assert events.log_event in events.subscribers()
    events.unsubscribe(events.log_event)
    from recoverly._core.bus import BUS

    BUS.emit(events.RetrySucceeded("f", 2))
    assert caplog.text == ""
