"""docs/grafana/recoverly.json: valid, up to date, querying only metrics the exporter makes."""

from __future__ import annotations

import json
import re
import runpy
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry

import recoverly
import recoverly.prometheus as rp
from recoverly import CircuitBreaker, CircuitBreakerError, events
from recoverly._core.bus import BUS

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"
METRIC = re.compile(r"\b(recoverly_[a-z0-9_]+)\b")


def dashboard():
    return json.loads((GRAFANA / "recoverly.json").read_text(encoding="utf-8"))


def expressions(board):
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", ())]
    exprs.extend(v["definition"] for v in board["templating"]["list"] if v["type"] == "query")
    return exprs


@dataclass(frozen=True, slots=True)
class CheckpointSaved(events.Event):
    step: int
    duration: float


@dataclass(frozen=True, slots=True)
class CheckpointSaveFailed(events.Event):
    step: int
    exception: BaseException


@dataclass(frozen=True, slots=True)
class BulkheadWaited(events.Event):
    waited: float


@dataclass(frozen=True, slots=True)
class RateLimitDelayed(events.Event):
    key: object
    tokens: int
    delay: float


def exercise_every_family(clock):
    """Run each strategy (or emit each event shape) once, so every family has samples."""
    left = [1]

    @recoverly.retry(2, 0.1, name="fetch")
    def fetch():
        if left[0]:
            left[0] -= 1
            raise ConnectionError
        return 1

    fetch()
    with pytest.raises(KeyError):
        recoverly.retry(2, 0.0, name="lookup")(lambda: {}["x"])()
    breaker = CircuitBreaker(1, 30, name="payments", clock=clock)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitBreakerError):
        breaker.call(lambda: 1)
    recoverly.fallback(0, name="price")(lambda: 1 / 0)()

    class Db:
        def commit(self):
            pass

        def rollback(self):
            pass

    with pytest.raises(ValueError), recoverly.TransactionManager(Db(), name="orders"):
        raise ValueError
    recoverly.batch_with_retry([1], lambda n: 1 / 0, max_retries=0, name="batch")
    BUS.emit(events.TimedOut("slow", 1.0))
    BUS.emit(BulkheadWaited("pool", 0.1))
    BUS.emit(RateLimitDelayed("api", "k", 1, 0.1))
    BUS.emit(CheckpointSaved("trainer", 1, 0.2))
    BUS.emit(CheckpointSaveFailed("trainer", 2, OSError()))
    sa = pytest.importorskip("sqlalchemy.exc")
    pytest.importorskip("recoverly.db")  # imported: database retries get their failure kind

    db_left = [1]

    @recoverly.retry(2, 0.0, name="save_row")
    def save_row():
        if db_left[0]:
            db_left[0] -= 1
            raise sa.OperationalError("x", {}, sqlite3.OperationalError("database is locked"))
        return 1

    save_row()


def produced_names(clock):
    registry = CollectorRegistry()
    handle = rp.install(registry, max_names=3)  # small cap: the overflow family appears too
    try:
        exercise_every_family(clock)
        return {s.name for m in registry.collect() for s in m.samples}, registry
    finally:
        handle.uninstall()


def test_dashboard_json_is_what_the_generator_writes():
    """recoverly.json is up to date with generate.py (run it after editing a panel)."""
    module = runpy.run_path(str(GRAFANA / "generate.py"))
    assert (GRAFANA / "recoverly.json").read_text(encoding="utf-8") == module["render"]()


def test_every_query_names_a_metric_the_exporter_produces(clock):
    """Each recoverly_* name in a PromQL expression is a sample name after real calls."""
    produced, _ = produced_names(clock)
    used = {name for expr in expressions(dashboard()) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no recoverly metric"
    assert sorted(used - produced) == []
    # and the dashboard covers every family the exporter has
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in produced}
    queried = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in used}
    assert sorted(families - queried) == []


def test_panels_are_well_formed():
    """Unique panel ids, a datasource and a non-empty balanced expression on every target."""
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] == "recoverly"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            expr = t["expr"]
            for open_, close in ("()", "{}", "[]"):
                assert expr.count(open_) == expr.count(close), expr
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
