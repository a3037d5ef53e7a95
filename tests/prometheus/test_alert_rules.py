"""The shipped Prometheus rules: generated, about metrics a real exporter makes, proven by promtool.

``promtool`` comes from Prometheus (Debian: ``apt-get install prometheus``; ``.ci/run``
installs it); the tests that run it skip with that hint when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("yaml")

import yaml
from exporter_drive import exported

import recoverly.prometheus as rp
from recoverly.prometheus.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
UNIT_TESTS = Path(__file__).with_name("alerts") / "recoverly-alerts.test.yml"
OBSERVABILITY = ROOT / "docs" / "observability.md"
REDIS_URL = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROMTOOL_HINT = (
    "promtool is not installed: `apt-get install prometheus` on Debian/Ubuntu (do not start "
    "the service), or put promtool from a Prometheus release on PATH"
)
SELECTOR = re.compile(r"\b(recoverly_[a-z0-9_]+)(?:\{([^}]*)\})?")
RECORDED = re.compile(r"\brecoverly:[a-z0-9_:]+")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SCRAPE_LABELS = {"job", "instance"}


def rule_groups(text=None):
    """The parsed rules file: {group name: [rule, ...]}."""
    data = yaml.safe_load(text if text is not None else rp.alert_rules_path().read_text())
    return {g["name"]: g["rules"] for g in data["groups"]}


def alerts():
    return rule_groups()["recoverly.alerts"]


def expressions():
    return [rule["expr"] for rules in rule_groups().values() for rule in rules]


def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(PROMTOOL_HINT)
    return path


def run_promtool(*args, cwd=None):
    done = subprocess.run(  # noqa: S603 - a fixed tool with our own files
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
    return done.returncode, done.stdout + done.stderr


def redis_db1():
    head, _, tail = REDIS_URL.split("?")[0].rpartition("/")
    return f"{head}/1" if tail.isdigit() else f"{REDIS_URL.rstrip('/')}/1"


# ---------------------------------------------------------------- the file
def test_shipped_file_is_what_alert_rules_writes():
    """rules/recoverly-alerts.yml is alert_rules() with the defaults (regenerate after edits)."""
    assert rp.alert_rules_path().read_text(encoding="utf-8") == rp.alert_rules()
    assert rp.alert_rules_path().parent.parent == Path(rp.__file__).parent  # in the package


def test_every_alert_has_a_severity_annotations_and_a_documented_runbook():
    """Severity, summary and description naming the instance, and a runbook section that exists."""
    docs = OBSERVABILITY.read_text(encoding="utf-8")
    headings = {h.strip().lower() for h in re.findall(r"^#### (\S+)$", docs, re.MULTILINE)}
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)) == 17
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = alert["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        label = "label" if name == "RecoverlyExporterLabelOverflow" else "name"
        if name != "RecoverlyExporterErrors":  # the exporter's own counter has no labels
            assert f"{{{{ $labels.{label} }}}}" in notes["summary"], name
        assert notes["runbook_url"] == f"{rp.alerts.DEFAULT_RUNBOOK_URL}#{name.lower()}"
        assert name.lower() in headings, f"docs/observability.md has no '#### {name}' section"


def test_thresholds_in_the_docs_table_are_the_defaults():
    """The thresholds table of docs/observability.md lists every threshold with its default."""
    docs = OBSERVABILITY.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", docs, re.MULTILINE))
    assert rows == {key: f"{value:g}" for key, value in rp.ALERT_THRESHOLDS.items()}


# ---------------------------------------------------------------- against a real exporter
@pytest.fixture
def scraped(tmp_path):
    """The exporter's samples after every strategy ran (error label capped: it overflows)."""
    return exported(tmp_path, redis_db1(), max_errors=1)


def test_every_selector_matches_what_a_real_exporter_produces(scraped):
    """Each metric the rules read is exported, with each label and label value they match on."""
    checked = set()
    for expr in expressions():
        for metric, matchers in SELECTOR.findall(expr):
            assert metric in scraped, f"{metric} is not exported: {expr}"
            checked.add(metric)
            for label, op, value in MATCHER.findall(matchers):
                have = {labels.get(label) for labels in scraped[metric]}
                assert have - {None}, f"{metric} has no label {label!r}"
                if op in {"=", "=~"}:
                    for wanted in value.split("|") if op == "=~" else [value]:
                        assert wanted in have, f'{metric}{{{label}="{wanted}"}}: seen {have}'
    assert len(checked) >= 15


def test_recording_rules_are_defined_before_use():
    """Every recoverly:* name an expression reads is a recording rule of the file."""
    recorded = {rule["record"] for rule in rule_groups()["recoverly.records"]}
    used = {name for expr in expressions() for name in RECORDED.findall(expr)}
    assert used <= recorded
    assert recorded <= used  # and none is unused


def test_unit_test_series_have_the_exporter_label_names(scraped):
    """The promtool tests feed series shaped like the real ones (plus job and instance)."""
    spec = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))
    fed = [s["series"] for group in spec["tests"] for s in group["input_series"]]
    assert fed
    for series in fed:
        metric, _, rest = series.partition("{")
        labels = {m[0] for m in MATCHER.findall(rest)} - SCRAPE_LABELS
        assert metric in scraped, series
        real = {frozenset(ls) - {"le", "quantile"} for ls in scraped[metric]}
        assert frozenset(labels) in real, f"{series}: the exporter's label names are {real}"


# ---------------------------------------------------------------- promtool
def test_promtool_check_rules_accepts_the_file():
    """`promtool check rules` parses every expression and template of the shipped file."""
    code, out = run_promtool("check", "rules", str(rp.alert_rules_path()))
    assert code == 0, out
    assert "SUCCESS: 23 rules found" in out


def test_promtool_unit_tests_pass():
    """Each alert fires on the series meant to fire it, with its annotations, and on no other."""
    code, out = run_promtool("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert code == 0, out
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_firing_and_silent():
    """The promtool file has, for every alert, a case where it fires and one where it does not."""
    spec = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))
    cases = [c for group in spec["tests"] for c in group["alert_rule_test"]]
    for name in (a["alert"] for a in alerts()):
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} is never expected to fire"
        assert any(not c["exp_alerts"] for c in mine), f"{name} is never expected to stay silent"


def test_changed_threshold_changes_what_fires(tmp_path):
    """retries_per_call=0.5: the 33 % retry rate that fires by default no longer does."""
    series = [
        (
            'recoverly_retries_total{name="payments", error="ConnectionError"}',
            "0+30x40",
        ),
        (
            'recoverly_calls_total{strategy="circuit_breaker", name="payments", outcome="success"}',
            "0+90x40",
        ),
    ]
    firing = {
        "exp_labels": {"severity": "warning", "name": "payments"},
        "exp_annotations": {
            "summary": "payments: 33.33% retries per call",
            "description": (
                "Over the last 5 minutes payments scheduled 33.33% retries per call through the "
                "breaker of the same name (threshold {}), for 10 minutes. Its dependency is "
                "failing often enough that retries add real load."
            ),
            "runbook_url": f"{rp.alerts.DEFAULT_RUNBOOK_URL}#recoverlyhighretryrate",
        },
    }
    for rules, expected in (
        (rp.alert_rules(), "20%"),
        (rp.alert_rules(retries_per_call=0.5), None),
        (rp.alert_rules(retries_per_call=0.3), "30%"),
    ):
        (tmp_path / "rules.yml").write_text(rules, encoding="utf-8")
        exp = []
        if expected is not None:
            notes = dict(firing["exp_annotations"])
            notes["description"] = notes["description"].format(expected)
            exp = [{"exp_labels": firing["exp_labels"], "exp_annotations": notes}]
        spec = {
            "rule_files": ["rules.yml"],
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": [{"series": s, "values": v} for s, v in series],
                    "alert_rule_test": [
                        {
                            "eval_time": "15m",
                            "alertname": "RecoverlyHighRetryRate",
                            "exp_alerts": exp,
                        }
                    ],
                }
            ],
        }
        # JSON is YAML: promtool reads it as is.
        (tmp_path / "t.yml").write_text(json.dumps(spec), encoding="utf-8")
        code, out = run_promtool("test", "rules", "t.yml", cwd=tmp_path)
        assert code == 0, out


def test_other_namespace_renames_every_metric_and_record(tmp_path):
    """namespace='shop': no recoverly_* metric is left, and promtool accepts the file."""
    text = rp.alert_rules(namespace="shop")
    assert not re.search(r"\brecoverly[_:]", text.split("groups:", 1)[1])
    assert "shop_retries_total" in text
    assert "shop:retries_per_call:ratio_rate5m" in text
    (tmp_path / "shop.yml").write_text(text, encoding="utf-8")
    code, out = run_promtool("check", "rules", str(tmp_path / "shop.yml"))
    assert code == 0, out


# ---------------------------------------------------------------- the API and the command line
def test_thresholds_are_validated_together():
    """An unknown name, a share above 1 and fractional minutes are reported in one ValueError."""
    with pytest.raises(ValueError) as info:
        rp.alert_rules(retries_per_cal=0.3, pool_utilization=1.5, namespace="9lives")
    text = str(info.value)
    assert "unknown thresholds ['retries_per_cal']" in text
    assert "pool_utilization must be a number in (0, 1], got 1.5" in text
    assert "namespace must match" in text
    with pytest.raises(TypeError, match=r"breaker_open_minutes must be an integer >= 1, got 2\.5"):
        rp.alert_rules(breaker_open_minutes=2.5)


def test_cli_prints_the_rules_with_changed_thresholds(capsys, tmp_path):
    """`rules --set` prints alert_rules() with those thresholds; -o writes the file."""
    assert main(["rules", "--set", "pool_utilization=0.8", "--set", "pool_minutes=10"]) == 0
    assert capsys.readouterr().out == rp.alert_rules(pool_utilization=0.8, pool_minutes=10)
    out = tmp_path / "alerts.yml"
    assert main(["rules", "--namespace", "shop", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == rp.alert_rules(namespace="shop")


def test_cli_lists_thresholds_and_rejects_bad_settings(capsys):
    """`thresholds` lists every key with its default; a bad --set exits with status 2."""
    assert main(["thresholds"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(rp.ALERT_THRESHOLDS)
    assert listed[0].split()[1] == "0.2"
    for bad, message in (
        ("retries_per_call", "--set needs KEY=NUMBER, got 'retries_per_call'"),
        ("retries_per_call=lots", "--set needs KEY=NUMBER, got 'retries_per_call=lots'"),
        ("nope=1", "unknown thresholds ['nope']"),
    ):
        with pytest.raises(SystemExit) as info:
            main(["rules", "--set", bad])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
