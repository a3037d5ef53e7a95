"""docs/grafana/recoverly.json: valid, up to date, querying only metrics the exporter makes."""

from __future__ import annotations

import json
import os
import re
import runpy
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from exporter_drive import exported

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"
METRIC = re.compile(r"\b(recoverly_[a-z0-9_]+)\b")


def dashboard():
    return json.loads((GRAFANA / "recoverly.json").read_text(encoding="utf-8"))


def expressions(board):
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", ())]
    exprs.extend(v["definition"] for v in board["templating"]["list"] if v["type"] == "query")
    return exprs


REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def produced_names(tmp_path):
    """Sample names after every strategy ran (error label capped: the overflow family appears)."""
    head, _, tail = REDIS_URL.split("?")[0].rpartition("/")
    redis_db1 = f"{head}/1" if tail.isdigit() else f"{REDIS_URL.rstrip('/')}/1"
    return set(exported(tmp_path, redis_db1, max_errors=1))


def test_dashboard_json_is_what_the_generator_writes():
    """recoverly.json is up to date with generate.py (run it after editing a panel)."""
    module = runpy.run_path(str(GRAFANA / "generate.py"))
    assert (GRAFANA / "recoverly.json").read_text(encoding="utf-8") == module["render"]()


def test_every_query_names_a_metric_the_exporter_produces(tmp_path):
    """Each recoverly_* name in a PromQL expression is a sample name after real calls."""
    produced = produced_names(tmp_path)
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
