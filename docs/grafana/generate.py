"""Writes docs/grafana/recoverly.json, the Grafana dashboard for recoverly.prometheus.

Run ``python docs/grafana/generate.py`` after changing a panel; a test regenerates
the dashboard and compares, and checks that every PromQL expression names a metric
the exporter produces.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("recoverly.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'name=~"$name"'
RI = "$__rate_interval"


def target(expr: str, legend: str, ref: str = "A") -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


class Layout:
    """Places panels left to right, wrapping at 24 grid columns."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1
        self.panels: list[dict] = []

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["datasource"] = DS
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def stat(title: str, expr: str, unit: str = "short", thresholds: tuple = ()) -> dict:
    steps = [{"color": "green", "value": None}] + [
        {"color": color, "value": value} for value, color in thresholds
    ]
    return {
        "type": "stat",
        "title": title,
        "targets": [target(expr, title)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def series(title: str, targets: list[dict], unit: str = "short", stack: bool = False) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 15,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def quantile(q: float, metric: str, by: str = "name", selector: str = SEL) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, {by}) "
        f"(rate({metric}_bucket{{{selector}}}[{RI}])))"
    )


def alerts_table() -> dict:
    """Prometheus' own ALERTS series: the recoverly alerts pending or firing now."""
    return {
        "type": "table",
        "title": "recoverly alerts (pending and firing)",
        "description": "From the rules in recoverly-alerts.yml (docs/observability.md#alerting).",
        "targets": [
            {
                "datasource": DS,
                "expr": "max by (alertname, alertstate, severity, name, instance) "
                '(ALERTS{alertname=~"Recoverly.+"})',
                "format": "table",
                "instant": True,
                "range": False,
                "refId": "A",
            }
        ],
        "transformations": [
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "Value": True}},
            }
        ],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "footer": {"show": False}},
    }


def build() -> dict:
    lay = Layout()

    lay.row("Overview")
    lay.add(alerts_table(), 24, 5)
    lay.add(
        stat(
            "Open breakers",
            'sum(recoverly_circuit_breaker_state{state=~"open|forced_open"}) or vector(0)',
            thresholds=((1, "red"),),
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Half-open breakers",
            'sum(recoverly_circuit_breaker_state{state="half_open"}) or vector(0)',
            thresholds=((1, "orange"),),
        ),
        4,
        4,
    )
    lay.add(stat("Retries /s", f"sum(rate(recoverly_retries_total[{RI}]))", "ops"), 4, 4)
    lay.add(
        stat(
            "Gave up /s",
            f'sum(rate(recoverly_retry_outcomes_total{{outcome="gave_up"}}[{RI}]))',
            "ops",
            ((0.01, "red"),),
        ),
        4,
        4,
    )
    lay.add(stat("Rejected calls /s", f"sum(rate(recoverly_rejections_total[{RI}]))", "ops"), 4, 4)
    lay.add(stat("Fallbacks /s", f"sum(rate(recoverly_fallbacks_total[{RI}]))", "ops"), 4, 4)

    lay.row("Circuit breakers")
    timeline = {
        "type": "state-timeline",
        "title": "Breaker state",
        "targets": [
            target(
                f'max by (name) (recoverly_circuit_breaker_state{{{SEL}, state=~"open|forced_open"}}) * 2'
                f' + max by (name) (recoverly_circuit_breaker_state{{{SEL}, state="half_open"}})',
                "{{name}}",
            )
        ],
        "fieldConfig": {
            "defaults": {
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "CLOSED", "color": "green", "index": 0},
                            "1": {"text": "HALF_OPEN", "color": "orange", "index": 1},
                            "2": {"text": "OPEN", "color": "red", "index": 2},
                        },
                    }
                ],
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            },
            "overrides": [],
        },
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
    }
    lay.add(timeline, 12, 8)
    lay.add(
        series(
            "Transitions",
            [
                target(
                    f"sum by (name, to_state) (increase(recoverly_circuit_breaker_transitions_total{{{SEL}}}[{RI}]))",
                    "{{name}} → {{to_state}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.add(
        series(
            "Protected calls by outcome",
            [
                target(
                    f"sum by (name, outcome) (rate(recoverly_calls_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{outcome}}",
                )
            ],
            "ops",
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        series(
            "Call duration (p50, p99)",
            [
                target(quantile(0.5, "recoverly_call_duration_seconds"), "{{name}} p50", "A"),
                target(quantile(0.99, "recoverly_call_duration_seconds"), "{{name}} p99", "B"),
            ],
            "s",
        ),
        12,
        8,
    )

    lay.row("Retries")
    lay.add(
        series(
            "Retries by callable",
            [target(f"sum by (name) (rate(recoverly_retries_total{{{SEL}}}[{RI}]))", "{{name}}")],
            "ops",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Retries by error class",
            [target(f"sum by (error) (rate(recoverly_retries_total{{{SEL}}}[{RI}]))", "{{error}}")],
            "ops",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Retry outcomes",
            [
                target(
                    f"sum by (name, outcome, reason) (rate(recoverly_retry_outcomes_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{outcome}} {{reason}}",
                )
            ],
            "ops",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Retry delay (p95)",
            [target(quantile(0.95, "recoverly_retry_delay_seconds"), "{{name}}")],
            "s",
        ),
        12,
        8,
    )
    lay.add(
        series(
            "Database retries by error and kind",
            [
                target(
                    f"sum by (name, error, kind) (rate(recoverly_db_retries_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{error}} ({{kind}})",
                )
            ],
            "ops",
        ),
        12,
        8,
    )

    lay.row("Rejections, fallbacks, timeouts")
    lay.add(
        series(
            "Rejected calls",
            [
                target(
                    f"sum by (strategy, name, reason) (rate(recoverly_rejections_total{{{SEL}}}[{RI}]))",
                    "{{strategy}} {{name}} ({{reason}})",
                )
            ],
            "ops",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Fallbacks used",
            [
                target(
                    f"sum by (name, error) (rate(recoverly_fallbacks_total{{{SEL}}}[{RI}]))",
                    "{{name}} after {{error}}",
                )
            ],
            "ops",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Timeouts",
            [target(f"sum by (name) (rate(recoverly_timeouts_total{{{SEL}}}[{RI}]))", "{{name}}")],
            "ops",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Bulkhead queue wait (p95)",
            [target(quantile(0.95, "recoverly_bulkhead_wait_seconds"), "{{name}}")],
            "s",
        ),
        12,
        8,
    )
    lay.add(
        series(
            "Rate-limit delay (p95)",
            [target(quantile(0.95, "recoverly_rate_limit_delay_seconds"), "{{name}}")],
            "s",
        ),
        12,
        8,
    )

    lay.row("Capacity: bulkheads, rate limiters, connection pools")
    lay.add(
        series(
            "Bulkhead slots",
            [
                target(
                    f"max by (name) (recoverly_bulkhead_active{{{SEL}}})", "{{name}} active", "A"
                ),
                target(
                    f"max by (name) (recoverly_bulkhead_queued{{{SEL}}})", "{{name}} queued", "B"
                ),
                target(
                    f"max by (name) (recoverly_bulkhead_max_concurrent{{{SEL}}})",
                    "{{name}} slots",
                    "C",
                ),
            ],
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Bulkhead and rate limiter requests",
            [
                target(
                    f"sum by (name, outcome) (rate(recoverly_bulkhead_requests_total{{{SEL}}}[{RI}]))",
                    "bulkhead {{name}} {{outcome}}",
                    "A",
                ),
                target(
                    f"sum by (name, outcome) (rate(recoverly_rate_limiter_requests_total{{{SEL}}}[{RI}]))",
                    "limiter {{name}} {{outcome}}",
                    "B",
                ),
            ],
            "ops",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Connection pool utilisation",
            [
                target(f"max by (name) (recoverly_pool_utilization{{{SEL}}})", "{{name}}", "A"),
            ],
            "percentunit",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Connections checked out / capacity",
            [
                target(f"sum by (name) (recoverly_pool_checked_out{{{SEL}}})", "{{name}} out", "A"),
                target(
                    f"sum by (name) (recoverly_pool_capacity{{{SEL}}})", "{{name}} capacity", "B"
                ),
            ],
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Checkout wait (mean)",
            [
                target(
                    f"sum by (name) (rate(recoverly_pool_checkout_wait_seconds_sum{{{SEL}}}[{RI}]))"
                    f" / sum by (name) (rate(recoverly_pool_checkout_wait_seconds_count{{{SEL}}}[{RI}]))",
                    "{{name}}",
                )
            ],
            "s",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "Leaked and invalidated connections",
            [
                target(
                    f"sum by (name) (recoverly_pool_leaked_connections{{{SEL}}})",
                    "{{name}} leaked",
                    "A",
                ),
                target(
                    f"sum by (name, in_use) (increase(recoverly_pool_invalidations_total{{{SEL}}}[{RI}]))",
                    "{{name}} invalidated (in use: {{in_use}})",
                    "B",
                ),
            ],
        ),
        8,
        8,
    )

    lay.row("Transactions, batches, checkpoints")
    lay.add(
        series(
            "Transactions rolled back",
            [
                target(
                    f"sum by (name, error) (rate(recoverly_transactions_rolled_back_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{error}}",
                )
            ],
            "ops",
        ),
        6,
        8,
    )
    lay.add(
        series(
            "Lost COMMITs by verdict",
            [
                target(
                    f"sum by (name, verdict) (increase(recoverly_commit_resolutions_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{verdict}}",
                )
            ],
        ),
        6,
        8,
    )
    lay.add(
        series(
            "Batch item failures",
            [
                target(
                    f"sum by (name, error) (increase(recoverly_batch_item_failures_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{error}}",
                )
            ],
        ),
        6,
        8,
    )
    lay.add(
        series(
            "Checkpoint saves",
            [
                target(
                    f"sum by (name, outcome) (increase(recoverly_checkpoint_saves_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{outcome}}",
                )
            ],
        ),
        6,
        8,
    )
    lay.add(
        series(
            "Checkpoint save duration (p95)",
            [target(quantile(0.95, "recoverly_checkpoint_save_duration_seconds"), "{{name}}")],
            "s",
        ),
        6,
        8,
    )

    lay.row("Exporter")
    lay.add(
        series(
            "All events by class",
            [target(f"sum by (event) (rate(recoverly_events_total[{RI}]))", "{{event}}")],
            "ops",
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        series(
            "Label values folded into _other; exporter errors",
            [
                target("sum by (label) (recoverly_label_overflow_total)", "overflow {{label}}", "A"),
                target("sum(recoverly_exporter_errors_total)", "exporter errors", "B"),
            ],
        ),
        12,
        8,
    )

    return {
        "title": "recoverly",
        "uid": "recoverly",
        "description": "AUTOGENERATED by docs/grafana/generate.py: retries, circuit breakers, "
        "rejections, fallbacks, timeouts, capacity, transactions, batches and checkpoints from "
        "recoverly.prometheus, and the recoverly alerts firing.",
        "tags": ["recoverly", "resilience"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "graphTooltip": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "name",
                    "label": "Strategy name",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "query": "label_values(recoverly_events_total, name)",
                        "refId": "names",
                    },
                    "definition": "label_values(recoverly_events_total, name)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
