"""The recording and alerting rules :func:`recoverly.prometheus.alert_rules` renders.

Expressions are templates: ``${ns}`` is the exporter's namespace (metric names
are ``${ns}_retries_total`` and so on), ``${key}`` a threshold from
:data:`THRESHOLDS`, and ``${key:pct}`` the same threshold as a percentage;
:func:`recent` writes "the events of a counter in the last WINDOW".
``{{ ... }}`` is left alone: it is Prometheus' own template language, expanded
when an alert fires.

Aggregations use ``without (...)``, never ``by (...)``, so the labels the
scrape adds (``job``, ``instance``, ``pod``, ...) stay on every alert.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALERTS", "RECORDS", "THRESHOLDS", "Alert", "Record", "Threshold", "recent"]


@dataclass(frozen=True, slots=True)
class Threshold:
    """One number an alert compares with; ``kind`` says how it is checked and shown."""

    key: str
    default: float
    kind: str  # "share" (0..1], "number" (>= 0) or "minutes" (an integer >= 1)
    meaning: str


@dataclass(frozen=True, slots=True)
class Record:
    """A recording rule: ``record`` is computed from ``expr`` at every evaluation."""

    record: str
    expr: str


@dataclass(frozen=True, slots=True)
class Alert:
    """An alerting rule; the docs section ``#<name lowercased>`` is its runbook."""

    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str = ""


def recent(selector: str, window: str) -> str:
    """Return PromQL for "how many events ``selector`` counted in the last ``window``".

    ``increase()`` misses the first events of a series that did not exist
    before: the exporter creates a labelled counter at its first increment,
    so Prometheus never sees the 0 it started from. A series that was not
    there ``window`` ago counts with its whole value instead.
    """
    return (
        f"(\n  ({selector} unless {selector} offset {window})\n"
        f"  or increase({selector}[{window}])\n)"
    )


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold(
        "retries_per_call",
        0.2,
        "share",
        "retries per protected call (over 5 min) above which RecoverlyHighRetryRate fires",
    ),
    Threshold(
        "retry_min_per_second",
        0.05,
        "number",
        "RecoverlyHighRetryRate stays silent below this many retries per second",
    ),
    Threshold(
        "retries_per_second",
        1.0,
        "number",
        "retries per second above which RecoverlyManyRetries fires (names with no call count)",
    ),
    Threshold(
        "give_ups",
        5,
        "number",
        "retry give-ups (attempts or deadline) in 15 min for RecoverlyRetriesGivingUp",
    ),
    Threshold(
        "breaker_open_minutes",
        5,
        "minutes",
        "minutes a breaker stays open or half-open before RecoverlyCircuitBreakerOpen",
    ),
    Threshold(
        "breaker_trips",
        3,
        "number",
        "CLOSED to OPEN trips in 30 min for RecoverlyCircuitBreakerFlapping",
    ),
    Threshold(
        "throttle_rejections_per_second",
        0.1,
        "number",
        "calls an adaptive throttle refuses per second for RecoverlyAdaptiveThrottleRejecting",
    ),
    Threshold(
        "bulkhead_rejected_share",
        0.05,
        "share",
        "share of calls a bulkhead turns away for RecoverlyBulkheadRejecting",
    ),
    Threshold(
        "rate_limiter_rejected_share",
        0.1,
        "share",
        "share of acquisitions a rate limiter refuses for RecoverlyRateLimiterRejecting",
    ),
    Threshold(
        "pool_utilization",
        0.9,
        "share",
        "share of a pool's capacity checked out for RecoverlyDbPoolNearExhaustion",
    ),
    Threshold(
        "pool_minutes",
        5,
        "minutes",
        "minutes the pool alerts' conditions must hold before they fire",
    ),
    Threshold(
        "pool_checkout_wait_seconds",
        0.1,
        "number",
        "mean seconds a checkout waits for a connection for RecoverlyDbPoolCheckoutSlow",
    ),
)

RECORDS: tuple[Record, ...] = (
    Record("${ns}:retries:rate5m", "sum without (error) (rate(${ns}_retries_total[5m]))"),
    Record(
        "${ns}:calls:rate5m",
        "sum without (strategy, outcome) (\n"
        '  rate(${ns}_calls_total{strategy="circuit_breaker"}[5m])\n'
        ")",
    ),
    Record(
        "${ns}:retries_per_call:ratio_rate5m",
        "${ns}:retries:rate5m / (${ns}:calls:rate5m > 0)",
    ),
    Record(
        "${ns}:bulkhead_rejected:ratio_rate5m",
        'sum without (outcome) (rate(${ns}_bulkhead_requests_total{outcome="rejected"}[5m]))\n'
        "/ (sum without (outcome) (rate(${ns}_bulkhead_requests_total[5m])) > 0)",
    ),
    Record(
        "${ns}:rate_limiter_rejected:ratio_rate5m",
        'sum without (outcome) (rate(${ns}_rate_limiter_requests_total{outcome="rejected"}[5m]))\n'
        "/ (sum without (outcome) (rate(${ns}_rate_limiter_requests_total[5m])) > 0)",
    ),
    Record(
        "${ns}:pool_checkout_wait_seconds:mean_rate5m",
        "rate(${ns}_pool_checkout_wait_seconds_sum[5m])\n"
        "/ (rate(${ns}_pool_checkout_wait_seconds_count[5m]) > 0)",
    ),
)

_GAVE_UP = '${ns}_retry_outcomes_total{outcome="gave_up", reason!="budget"}'
_BUDGET = '${ns}_retry_outcomes_total{outcome="gave_up", reason="budget"}'
_TRIPS = '${ns}_circuit_breaker_transitions_total{from_state="closed", to_state="open"}'
_UNKNOWN = '${ns}_commit_resolutions_total{verdict="unknown"}'
_SAVE_FAILED = '${ns}_checkpoint_saves_total{outcome="failed"}'
_DEAD = '${ns}_events_total{event="DeadLettered"}'

ALERTS: tuple[Alert, ...] = (
    Alert(
        "RecoverlyHighRetryRate",
        "${ns}:retries_per_call:ratio_rate5m > ${retries_per_call}\n"
        "and ${ns}:retries:rate5m > ${retry_min_per_second}",
        "warning",
        "{{ $labels.name }}: {{ $value | humanizePercentage }} retries per call",
        "Over the last 5 minutes {{ $labels.name }} scheduled {{ $value | humanizePercentage }}"
        " retries per call through the breaker of the same name (threshold"
        " ${retries_per_call:pct}), for 10 minutes. Its dependency is failing often enough"
        " that retries add real load.",
        "10m",
    ),
    Alert(
        "RecoverlyManyRetries",
        "${ns}:retries:rate5m > ${retries_per_second}\nunless ${ns}:calls:rate5m",
        "warning",
        '{{ $labels.name }}: {{ $value | printf "%.2f" }} retries per second',
        '{{ $labels.name }} has scheduled {{ $value | printf "%.2f" }} retries per second'
        " for 10 minutes (threshold ${retries_per_second}). No breaker of the same name counts"
        " its calls, so the share of calls retried is not known.",
        "10m",
    ),
    Alert(
        "RecoverlyRetriesGivingUp",
        "sum without (outcome, reason) " + recent(_GAVE_UP, "15m") + "\n>= ${give_ups}",
        "warning",
        '{{ $labels.name }}: retries gave up {{ $value | printf "%.0f" }} times in 15 minutes',
        '{{ $labels.name }} ran out of attempts or time {{ $value | printf "%.0f" }} times'
        " in the last 15 minutes (threshold ${give_ups}): those calls failed for their callers"
        " despite retrying.",
    ),
    Alert(
        "RecoverlyRetryBudgetExhausted",
        "sum without (outcome, reason) " + recent(_BUDGET, "15m") + "\n> 0",
        "warning",
        "{{ $labels.name }}: the retry budget refused retries",
        '{{ $labels.name }} gave up {{ $value | printf "%.0f" }} times in the last 15 minutes'
        " because its RetryBudget was spent: failures are widespread and retries are being"
        " shed on purpose.",
    ),
    Alert(
        "RecoverlyCircuitBreakerOpen",
        'max without (state) (${ns}_circuit_breaker_state{state=~"open|half_open"}) == 1',
        "critical",
        "Circuit breaker {{ $labels.name }} has not closed for ${breaker_open_minutes} minutes",
        "Circuit breaker {{ $labels.name }} has been OPEN or HALF_OPEN at every scrape for"
        " ${breaker_open_minutes} minutes: calls to its dependency are being refused, and the"
        " probes that would close it fail (or no call has come to probe).",
        "${breaker_open_minutes}m",
    ),
    Alert(
        "RecoverlyCircuitBreakerFlapping",
        "sum without (from_state, to_state) " + recent(_TRIPS, "30m") + "\n>= ${breaker_trips}",
        "warning",
        'Circuit breaker {{ $labels.name }} tripped {{ $value | printf "%.0f" }} times'
        " in 30 minutes",
        "Circuit breaker {{ $labels.name }} went from CLOSED to OPEN"
        ' {{ $value | printf "%.0f" }} times in the last 30 minutes (threshold'
        " ${breaker_trips}): its dependency fails intermittently, or the breaker's"
        " thresholds are too tight for its normal error rate.",
    ),
    Alert(
        "RecoverlyAdaptiveThrottleRejecting",
        "sum without (strategy, reason) (\n"
        '  rate(${ns}_rejections_total{strategy="adaptive_throttle"}[5m])\n'
        ") > ${throttle_rejections_per_second}",
        "warning",
        "{{ $labels.name }}: the adaptive throttle refuses"
        ' {{ $value | printf "%.2f" }} calls per second',
        'The adaptive throttle {{ $labels.name }} has refused {{ $value | printf "%.2f" }}'
        " calls per second locally for 5 minutes (threshold ${throttle_rejections_per_second}):"
        " its backend keeps refusing requests.",
        "5m",
    ),
    Alert(
        "RecoverlyBulkheadRejecting",
        "${ns}:bulkhead_rejected:ratio_rate5m > ${bulkhead_rejected_share}",
        "warning",
        "Bulkhead {{ $labels.name }} turns away {{ $value | humanizePercentage }} of calls",
        "Bulkhead {{ $labels.name }} rejected {{ $value | humanizePercentage }} of the calls"
        " that asked for a slot over the last 5 minutes (threshold"
        " ${bulkhead_rejected_share:pct}), for 5 minutes: it is full.",
        "5m",
    ),
    Alert(
        "RecoverlyRateLimiterRejecting",
        "${ns}:rate_limiter_rejected:ratio_rate5m > ${rate_limiter_rejected_share}",
        "warning",
        "Rate limiter {{ $labels.name }} refuses {{ $value | humanizePercentage }} of acquisitions",
        "Rate limiter {{ $labels.name }} refused {{ $value | humanizePercentage }} of"
        " acquisitions over the last 5 minutes (threshold ${rate_limiter_rejected_share:pct}),"
        " for 10 minutes: demand is above the configured rate.",
        "10m",
    ),
    Alert(
        "RecoverlyDbPoolNearExhaustion",
        "${ns}_pool_utilization >= ${pool_utilization}",
        "warning",
        "Connection pool {{ $labels.name }} is {{ $value | humanizePercentage }} used",
        "{{ $value | humanizePercentage }} of connection pool {{ $labels.name }}'s capacity"
        " has been checked out for ${pool_minutes} minutes (threshold"
        " ${pool_utilization:pct}); when it is all out, checkouts wait for pool_timeout and"
        " then fail.",
        "${pool_minutes}m",
    ),
    Alert(
        "RecoverlyDbPoolCheckoutSlow",
        "${ns}:pool_checkout_wait_seconds:mean_rate5m > ${pool_checkout_wait_seconds}",
        "warning",
        "Checkouts from pool {{ $labels.name }} wait {{ $value | humanizeDuration }}",
        "A checkout from connection pool {{ $labels.name }} has waited"
        " {{ $value | humanizeDuration }} on average for ${pool_minutes} minutes (threshold"
        " ${pool_checkout_wait_seconds} s): the pool is exhausted, or opening connections"
        " is slow.",
        "${pool_minutes}m",
    ),
    Alert(
        "RecoverlyDbConnectionLeak",
        "${ns}_pool_leaked_connections > 0",
        "warning",
        "Pool {{ $labels.name }}: {{ $value }} connections held past leak_timeout",
        "{{ $value }} connections of pool {{ $labels.name }} have been checked out for"
        " longer than the monitor's leak_timeout. The application log has a WARNING for"
        " each, with the stack that checked it out.",
    ),
    Alert(
        "RecoverlyLostCommitUnknown",
        "sum without (verdict, method) " + recent(_UNKNOWN, "1h") + "\n> 0",
        "critical",
        "{{ $labels.name }}: a lost COMMIT could not be resolved",
        '{{ $value | printf "%.0f" }} transactions of {{ $labels.name }} lost their'
        " connection during COMMIT in the last hour and the database could not say whether"
        " they committed (CommitOutcomeUnknown was raised). Check those writes by hand.",
    ),
    Alert(
        "RecoverlyCheckpointSaveFailing",
        "sum without (outcome) " + recent(_SAVE_FAILED, "30m") + "\n> 0",
        "warning",
        '{{ $labels.name }}: {{ $value | printf "%.0f" }} checkpoint saves failed',
        '{{ $value | printf "%.0f" }} checkpoint saves of {{ $labels.name }} failed in the'
        " last 30 minutes. Training goes on, but a crash now would resume from an older"
        " checkpoint.",
    ),
    Alert(
        "RecoverlyTaskDeadLettered",
        "sum without (event) " + recent(_DEAD, "1h") + "\n> 0",
        "warning",
        "Task {{ $labels.name }} was moved to the dead letter",
        'Celery task {{ $labels.name }} moved {{ $value | printf "%.0f" }} messages to the'
        " dead letter in the last hour: each had lost more than max_redeliveries workers"
        " before finishing, so it will not run again. See RedisTaskStore.dead_letters().",
    ),
    Alert(
        "RecoverlyExporterLabelOverflow",
        recent("${ns}_label_overflow_total", "1h") + "\n> 0",
        "info",
        "recoverly metrics: label {{ $labels.label }} reached its cap",
        'New values of the {{ $labels.label }} label were folded into "_other"'
        ' {{ $value | printf "%.0f" }} times in the last hour: the metrics no longer tell'
        " those names apart.",
    ),
    Alert(
        "RecoverlyExporterErrors",
        recent("${ns}_exporter_errors_total", "1h") + "\n> 0",
        "warning",
        "recoverly metrics: the exporter failed to record events",
        'The Prometheus exporter failed to record {{ $value | printf "%.0f" }} events in'
        " the last hour; the first error is in the application log (logger"
        " recoverly.prometheus).",
    ),
)
