"""recoverly.otel: metrics and span events recorded through the OpenTelemetry SDK."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import recoverly
import recoverly.otel as ro
from recoverly import CircuitBreaker, CircuitBreakerError, events


class Telemetry:
    """An SDK meter and tracer provider with in-memory readers, and the installed exporter."""

    def __init__(self, **kwargs):
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.spans))
        self.handle = ro.install(self.meters, self.tracers, **kwargs)
        self.tracer = self.tracers.get_tracer("tests")

    def points(self, metric):
        """{frozenset(attributes): value or histogram (count, sum)} of one metric."""
        out = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != metric:
                        continue
                    for p in m.data.data_points:
                        key = frozenset(p.attributes.items())
                        out[key] = (p.count, p.sum) if hasattr(p, "count") else p.value
        return out

    def point(self, metric, **attributes):
        return self.points(metric).get(frozenset(attributes.items()))

    def close(self):
        self.handle.uninstall()
        self.meters.shutdown()
        self.tracers.shutdown()


@pytest.fixture
def otel():
    """Installed into private SDK providers; uninstalled afterwards."""
    t = Telemetry()
    yield t
    t.close()


def flaky(failures, exc=ConnectionError):
    left = [failures]

    def call():
        if left[0]:
            left[0] -= 1
            raise exc("secret detail 7")
        return "ok"

    return call


def test_retries_become_counters_a_histogram_and_span_events_on_the_current_span(otel):
    """Two retries in a span: counters 2 and 1, delays (2, 1.5 s), two 'recoverly.retry' events."""
    fetch = recoverly.retry(3, 0.5, 2.0, name="fetch")(flaky(2))
    with otel.tracer.start_as_current_span("request"):
        assert fetch() == "ok"
    assert otel.point("recoverly.retries", name="fetch", error="ConnectionError") == 2
    assert otel.point("recoverly.retry_outcomes", name="fetch", outcome="succeeded", reason="") == 1
    assert otel.point("recoverly.retry_delay", name="fetch") == (2, 1.5)
    (span,) = otel.spans.get_finished_spans()
    assert span.name == "request"
    assert [e.name for e in span.events] == [
        "recoverly.retry",
        "recoverly.retry",
        "recoverly.retry.succeeded",
    ]
    first = dict(span.events[0].attributes)
    assert first == {
        "recoverly.name": "fetch",
        "recoverly.attempt": 1,
        "recoverly.delay": 0.5,
        "exception.type": "ConnectionError",
        "exception.message": "secret detail 7",
    }


def test_breaker_transition_outside_any_span_gets_its_own_span(otel, clock):
    """A breaker opening with no current span: one 'state_change' span, counters and the gauge."""
    breaker = CircuitBreaker(2, 30, name="payments", clock=clock)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: 1)
    assert (
        otel.point(
            "recoverly.circuit_breaker_transitions",
            name="payments",
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert (
        otel.point(
            "recoverly.rejections", strategy="circuit_breaker", name="payments", reason="open"
        )
        == 1
    )
    states = otel.points("recoverly.circuit_breaker_state")
    assert states[frozenset({"name": "payments", "state": "open"}.items())] == 1
    assert states[frozenset({"name": "payments", "state": "closed"}.items())] == 0
    (span,) = otel.spans.get_finished_spans()
    assert span.name == "recoverly.circuit_breaker.state_change"
    (event,) = span.events
    assert dict(event.attributes) == {
        "recoverly.name": "payments",
        "recoverly.previous": "closed",
        "recoverly.state": "open",
        "recoverly.failures": 2,
        "recoverly.retry_after": 30.0,
    }


def test_rejections_inside_a_span_are_span_events_and_per_call_events_are_not(otel, clock):
    """In a span: a rejection becomes an event; CallFailed is counted but not added to spans."""
    breaker = CircuitBreaker(1, 30, name="search", clock=clock)
    with otel.tracer.start_as_current_span("request"):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        with pytest.raises(CircuitBreakerError):
            breaker.call(lambda: 1)
    (span,) = otel.spans.get_finished_spans()
    assert [e.name for e in span.events] == [
        "recoverly.circuit_breaker.state_change",
        "recoverly.rejected",
    ]
    assert dict(span.events[1].attributes) == {
        "recoverly.name": "search",
        "recoverly.strategy": "circuit_breaker",
        "recoverly.state": "open",
        "recoverly.retry_after": 30.0,
    }
    assert (
        otel.point("recoverly.calls", strategy="circuit_breaker", name="search", outcome="failure")
        == 1
    )
    assert otel.point("recoverly.events", event="CallFailed", name="search") == 1


def test_fallback_is_a_counter_and_a_span_event(otel):
    """A fallback inside a span: counter 1 by error class, one 'recoverly.fallback' event."""

    @recoverly.fallback(0, name="price")
    def price():
        raise LookupError("sku 991")

    with otel.tracer.start_as_current_span("request"):
        assert price() == 0
    assert (
        otel.point("recoverly.fallbacks", name="price", strategy="fallback", error="LookupError")
        == 1
    )
    (span,) = otel.spans.get_finished_spans()
    assert [e.name for e in span.events] == ["recoverly.fallback"]
    assert span.events[0].attributes["exception.type"] == "LookupError"


def test_retry_event_outside_a_span_creates_no_span(otel):
    """Only notable events get a span of their own: a retry that recovered adds none."""
    recoverly.retry(2, 0.0, name="quiet")(flaky(1))()
    assert otel.spans.get_finished_spans() == ()
    assert otel.point("recoverly.retries", name="quiet", error="ConnectionError") == 1


def test_name_attribute_is_capped():
    """With max_names=1 the second name is recorded as '_other' and the overflow counted."""
    t = Telemetry(max_names=1)
    try:
        recoverly.retry(2, 0.0, name="a")(flaky(1))()
        recoverly.retry(2, 0.0, name="b")(flaky(1))()
        assert t.point("recoverly.retries", name="a", error="ConnectionError") == 1
        assert t.point("recoverly.retries", name="_other", error="ConnectionError") == 1
        assert t.point("recoverly.label_overflow", label="name") == 2
    finally:
        t.close()


def test_uninstall_stops_recording(otel):
    """After uninstall no more measurements arrive and the subscriber is gone."""
    recoverly.retry(2, 0.0, name="f")(flaky(1))()
    otel.handle.uninstall()
    otel.handle.uninstall()
    assert otel.handle._exporter not in events.subscribers()
    recoverly.retry(2, 0.0, name="f")(flaky(1))()
    assert otel.point("recoverly.retries", name="f", error="ConnectionError") == 1
    assert not otel.handle.installed
    assert repr(otel.handle) == "<OtelExporter uninstalled>"


def test_unknown_event_types_get_a_generic_span_event_name(otel):
    """An event class recoverly does not know is added as recoverly.<snake_case>."""
    from dataclasses import dataclass

    from recoverly._core.bus import BUS

    @dataclass(frozen=True, slots=True)
    class CheckpointSaved(events.Event):
        step: int
        duration: float

    with otel.tracer.start_as_current_span("epoch"):
        BUS.emit(CheckpointSaved("trainer", 10, 0.5))
    (span,) = otel.spans.get_finished_spans()
    assert [(e.name, dict(e.attributes)) for e in span.events] == [
        (
            "recoverly.checkpoint_saved",
            {"recoverly.name": "trainer", "recoverly.step": 10, "recoverly.duration": 0.5},
        )
    ]
    assert otel.point("recoverly.checkpoint_saves", name="trainer", outcome="saved") == 1
    assert otel.point("recoverly.checkpoint_save_duration", name="trainer") == (1, 0.5)


def test_pool_resized_is_counted(otel):
    """PoolResized becomes recoverly.pool_resizes with direction and reason."""
    from recoverly._core.bus import BUS

    BUS.emit(events.PoolResized("orders", 5, 12, "busy", 1.4))
    BUS.emit(events.PoolResized("orders", 12, 5, "idle", 0.1))
    BUS.emit(events.PoolResized("orders", 12, 5, "idle", 0.0))
    assert otel.point("recoverly.pool_resizes", name="orders", direction="grow", reason="busy") == 1
    shrinks = otel.point("recoverly.pool_resizes", name="orders", direction="shrink", reason="idle")
    assert shrinks == 2


def test_bad_caps_are_reported():
    """Caps below 1 are named in one ValueError."""
    with pytest.raises(ValueError, match="max_names") as info:
        ro.install(max_names=0, max_errors=0)
    assert "max_errors" in str(info.value)


def test_calls_false_subscribes_to_everything_but_per_call_events():
    """calls=False: CallSucceeded is not wanted by anyone, a breaker opening is still recorded."""
    from recoverly._core.bus import BUS
    from recoverly.testing import ManualClock

    t = Telemetry(calls=False)
    try:
        assert not BUS.wants(events.CallSucceeded)
        breaker = CircuitBreaker(1, 30, name="svc", clock=ManualClock())
        breaker.call(lambda: 1)
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        assert t.points("recoverly.calls") == {}
        assert (
            t.point(
                "recoverly.circuit_breaker_transitions",
                name="svc",
                from_state="closed",
                to_state="open",
            )
            == 1
        )
    finally:
        t.close()


def test_state_gauge_reports_nothing_after_uninstall(clock):
    """Once uninstalled, the breaker-state gauge yields no observations."""
    t = Telemetry()
    try:
        keep = CircuitBreaker(name="gauge-check", clock=clock)
        states = t.points("recoverly.circuit_breaker_state")
        assert states[frozenset({"name": "gauge-check", "state": "closed"}.items())] == 1
        t.handle.uninstall()
        assert t.points("recoverly.circuit_breaker_state") == {}
        assert keep.state is recoverly.CircuitState.CLOSED
    finally:
        t.close()


def test_installing_twice_on_one_meter_provider_shares_one_subscriber(clock):
    """Two installs count once; the last uninstall stops it; installing again revives the gauge."""
    t = Telemetry()
    try:
        second = ro.install(t.meters, t.tracers)
        recoverly.retry(2, 0.0, name="f")(flaky(1))()
        assert t.point("recoverly.retries", name="f", error="ConnectionError") == 1
        t.handle.uninstall()
        assert second.installed
        recoverly.retry(2, 0.0, name="f")(flaky(1))()
        assert t.point("recoverly.retries", name="f", error="ConnectionError") == 2
        second.uninstall()
        keep = CircuitBreaker(name="revived", clock=clock)
        assert t.points("recoverly.circuit_breaker_state") == {}
        third = ro.install(t.meters, t.tracers)
        states = t.points("recoverly.circuit_breaker_state")
        assert states[frozenset({"name": "revived", "state": "closed"}.items())] == 1
        with pytest.raises(ValueError, match="already installed"):
            ro.install(t.meters, t.tracers, calls=False)
        third.uninstall()
        assert keep.state is recoverly.CircuitState.CLOSED
    finally:
        t.close()
