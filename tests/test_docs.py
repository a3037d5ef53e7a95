"""The examples in docs/*.md run, and do what the docs say they do.

A runnable example is a ```python block whose previous line is
``<!-- example: some/id -->``; a block that is only a fragment says so with
``<!-- not-run: reason -->``. Each example runs in a fresh namespace pre-filled
by its stand-ins (tests/docs_support.py), on the ManualClock that
tests/conftest.py installs, with ``requests`` routed to a fake network; then
the check registered for its id below asserts on the outcome.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import pickle
import re
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from docs_support import STANDINS, DocEnv, FakeNetwork, FakeResponse, stored_values
from recoverly import events as ev
from recoverly._core.clock import default_clock
from recoverly.errors import CircuitBreakerError, CircuitState
from recoverly.testing import ManualClock, instant

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SEEDS = ROOT.parent / "shared" / "seeds"
MARKER = re.compile(r"^<!-- (example|not-run): (.+?) -->$")
IMPORT = re.compile(r"^\s*(import \w|from [\w.]+ import )")


# ---------------------------------------------------------------- collection
@dataclass(frozen=True)
class Block:
    """One ```python block of the docs and the marker on the line before it."""

    path: Path
    line: int
    kind: str | None  # "example", "not-run" or None (unmarked)
    label: str
    code: str

    @property
    def origin(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(text: str) -> list[tuple[int, str, str]]:
    """Return ``(line, previous line, code)`` for every ```python block of ``text``."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            previous = lines[start - 2] if start >= 2 else ""
            found.append((start + 1, previous, "\n".join(body) + "\n"))
        i += 1
    return found


def collect() -> list[Block]:
    blocks = []
    for path in sorted(DOCS.rglob("*.md")):
        for line, previous, code in python_blocks(path.read_text(encoding="utf-8")):
            m = MARKER.match(previous.strip())
            kind, label = (m.group(1), m.group(2)) if m else (None, "")
            blocks.append(Block(path, line, kind, label, code))
    return blocks


BLOCKS = collect()
EXAMPLES = {b.label: b for b in BLOCKS if b.kind == "example"}


# ---------------------------------------------------------------- checks registry
Check = Callable[[dict[str, Any], DocEnv], None]
CHECKS: dict[str, Check] = {}
#: Example id -> (module that must import, name it must have, reason to skip otherwise).
REQUIRES: dict[str, tuple[str, str, str]] = {
    "key-features/db-retry": (
        "recoverly.db",
        "db_retry",
        "recoverly.db.db_retry arrives with the database issue",
    ),
    "quick-reference/database": (
        "recoverly.db",
        "db_retry",
        "recoverly.db.db_retry arrives with the database issue",
    ),
    "quick-reference/celery-task": (
        "celery",
        "Celery",
        "Celery is not installed (the celery integration arrives with a later issue)",
    ),
}


def check(example_id: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[example_id] = fn
        return fn

    return register


# ---------------------------------------------------------------- meta tests
def test_docs_have_examples():
    """The docs directory holds marked examples (the collector found them)."""
    assert len(EXAMPLES) >= 20


def test_every_python_block_is_marked():
    """Every ```python block is either a runnable example or says why it is not run."""
    unmarked = [b.origin for b in BLOCKS if b.kind is None]
    assert unmarked == []


def test_example_ids_are_unique():
    """No two examples share an id (a duplicate would hide one of them)."""
    labels = [b.label for b in BLOCKS if b.kind == "example"]
    assert sorted({x for x in labels if labels.count(x) > 1}) == []


def test_every_example_has_a_check():
    """Each marked example has a check asserting what it does."""
    assert sorted(set(EXAMPLES) - set(CHECKS)) == []


def test_every_check_has_an_example():
    """Each check has its example in the docs, so no example is silently dropped."""
    assert sorted(set(CHECKS) - set(EXAMPLES)) == []


def test_examples_import_recoverly_not_the_seed_application():
    """Examples import from recoverly, never from the seeds' app.utils modules."""
    offenders = [b.label for b in EXAMPLES.values() if "app.utils" in b.code]
    assert offenders == []


def _seed_blocks(text: str, section: str) -> list[str]:
    pattern = rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)"
    match = re.search(pattern, text, re.DOTALL | re.MULTILINE)
    assert match is not None, section
    return [code for _, _, code in python_blocks(match.group(1))]


def _body(code: str) -> list[str]:
    """Lines that are not imports and not blank, right-stripped."""
    return [ln.rstrip() for ln in code.splitlines() if ln.strip() and not IMPORT.match(ln)]


SEED_SECTIONS = [
    ("000_4e16f176fb95122c.txt", "Key Features"),
    ("002_77ac4f1901e5fbc5.txt", "File Operations"),
    ("002_77ac4f1901e5fbc5.txt", "Testing Examples"),
    ("002_77ac4f1901e5fbc5.txt", "Quick Reference"),
]


@pytest.mark.parametrize(("seed", "section"), SEED_SECTIONS)
def test_seed_examples_appear_with_only_imports_changed(seed, section):
    """Every seed example's non-import lines appear, in order and unchanged, in the examples."""
    path = SEEDS / seed
    if not path.exists():
        pytest.skip(f"the seed documents are not next to this checkout ({SEEDS})")
    documented = [ln for b in EXAMPLES.values() for ln in _body(b.code)]
    joined = "\n".join(documented)
    for code in _seed_blocks(path.read_text(encoding="utf-8", errors="replace"), section):
        body = "\n".join(_body(code))
        assert body in joined, f"seed example not found verbatim in docs:\n{body}"


# ---------------------------------------------------------------- the runner
@pytest.mark.parametrize("example_id", sorted(EXAMPLES))
def test_documented_example(example_id, tmp_path, monkeypatch, caplog):
    """The documented example runs with its stand-ins and does what the docs say."""
    block = EXAMPLES[example_id]
    required = REQUIRES.get(example_id)
    if required is not None:
        module_name, attribute, reason = required
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            pytest.skip(reason)
        if not hasattr(module, attribute):
            pytest.skip(reason)
    clock = default_clock()
    assert isinstance(clock, ManualClock), "tests/conftest.py installs a ManualClock"
    caplog.set_level(logging.INFO, logger="recoverly")
    seen: list[Any] = []
    ev.subscribe(seen.append)  # conftest restores the bus afterwards
    env = DocEnv(tmp_path, monkeypatch, clock, FakeNetwork(), seen, caplog)
    env.network.install(monkeypatch)
    # Run as a script would: default names are then bare (`api_call`), as in the
    # seeds' log lines; in a module they read `package.module.api_call`.
    namespace: dict[str, Any] = {"__name__": "__main__"}
    env.extra["alarm"] = (signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL))
    make = STANDINS.get(example_id)
    if make is not None:
        namespace.update(make(env))
    compiled = compile(block.code, f"<{block.origin} {example_id}>", "exec")
    env.rerun = lambda: exec(compiled, namespace)  # noqa: S102 - running our own docs
    try:
        env.rerun()
        CHECKS[example_id](namespace, env)
    finally:
        for cleanup in env.cleanups:
            cleanup()


def _no_alarm_left(env: DocEnv) -> None:
    """The SIGALRM handler and timer in place before the example (pytest-timeout's) are back."""
    handler, (remaining, interval) = env.extra["alarm"]
    assert signal.getsignal(signal.SIGALRM) is handler
    now, now_interval = signal.getitimer(signal.ITIMER_REAL)
    assert now_interval == interval
    if remaining == 0:
        assert now == 0  # no timer of ours left behind
    else:
        assert 0 < now <= remaining  # the outer timer still runs, not extended


# ---------------------------------------------------------------- Key Features
@check("key-features/retry")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    env.network.fail(2)
    assert ns["api_call"]() == {"data": "live"}
    assert [c[:2] for c in env.network.calls] == [("GET", ns["url"])] * 3
    first, second = env.clock.sleeps  # jitter=True: each wait in [50 %, 100 %]
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0
    logged = env.messages()
    assert any(
        m.startswith("Retry attempt 1 failed: ConnectionError - Connection timeout") for m in logged
    )
    assert any(m.startswith("Retry successful on attempt 3") for m in logged)
    down = [requests.ConnectionError("down") for _ in range(3)]
    env.network.script(*down)
    with pytest.raises(requests.ConnectionError) as info:
        ns["api_call"]()
    assert info.value is down[-1]  # the original exception, not a wrapper


@check("key-features/circuit-breaker")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    breaker, call = ns["external_api_circuit"], env.extra["call"]
    for _ in range(5):
        with pytest.raises(ConnectionError):
            ns["call_external_service"]()
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitBreakerError, match="Circuit breaker is OPEN") as info:
        ns["call_external_service"]()
    assert call.calls == 5  # the rejected call never reached the service
    assert info.value.retry_after == pytest.approx(60)
    assert "Circuit breaker OPENED for call_external_service after 5 failures" in env.messages()
    env.clock.advance(60)
    call.down = False
    assert breaker.state is CircuitState.HALF_OPEN
    assert ns["call_external_service"]() == {"status": "ok"}
    assert breaker.state is CircuitState.CLOSED
    logged = env.messages()
    assert any(m.startswith("Circuit breaker HALF_OPEN, attempting recovery") for m in logged)
    assert any(m.startswith("Circuit breaker CLOSED, service recovered") for m in logged)


@check("key-features/fallback")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    get_data, cached = env.extra["get_data"], env.extra["cached"]
    assert ns["fetch_live_data"]() == {"data": "cached"}
    assert (get_data.calls, cached.calls) == (1, 1)
    (used,) = env.of(ev.FallbackUsed)
    assert used.name == "fetch_live_data"
    assert isinstance(used.exception, ConnectionError)
    assert "fetch_live_data failed: ConnectionError - Connection timeout; using fallback" in (
        env.messages()
    )
    get_data.down = False
    assert ns["fetch_live_data"]() == {"data": "live"}
    assert cached.calls == 1


@check("key-features/timeout")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["long_operation"]() == 42
    assert env.extra["computation"].calls == 1
    _no_alarm_left(env)  # the 30 s timer was cancelled and the handler restored
    assert env.of(ev.TimedOut) == []


@check("key-features/transaction")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    db, path = ns["db"], env.extra["path"]
    assert stored_values(path) == ["saved"]  # committed: a second connection sees it
    assert not db.in_transaction
    db.execute("INSERT INTO results (value) VALUES ('pending')")  # uncommitted work
    ns["operations"] = "INSERT INTO missing_table (value) VALUES ('x')"
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        env.rerun()
    assert not db.in_transaction
    assert stored_values(path) == ["saved"]  # 'pending' was rolled back with the block
    (rolled,) = env.of(ev.TransactionRolledBack)
    assert isinstance(rolled.exception, sqlite3.OperationalError)


@check("key-features/db-retry")
def _(ns: dict[str, Any], env: DocEnv) -> None:  # pragma: no cover - needs recoverly.db
    session_class, model = ns["Session"], env.extra["Model"]
    with session_class(env.extra["engine"]) as session:
        session.add(model(name="resnet"))
        session.commit()
    with session_class(env.extra["engine"]) as session:
        assert [m.name for m in ns["query_database"](session)] == ["resnet"]


# ---------------------------------------------------------------- File Operations
DEFAULT_CONFIG = {"debug": False, "timeout": 30, "max_retries": 3}


@check("file-operations/load-config")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["config"] == DEFAULT_CONFIG  # /path/to/config.json does not exist
    (gave_up,) = env.of(ev.RetryGaveUp)
    assert (gave_up.name, gave_up.attempts, gave_up.reason) == ("load_config", 3, "attempts")
    assert isinstance(gave_up.exception, FileNotFoundError)
    assert env.clock.sleeps == [0.5, 1.0]
    (used,) = env.of(ev.FallbackUsed)
    assert used.exception is gave_up.exception  # the fallback saw the final error
    present = env.tmp_path / "config.json"
    present.write_text(json.dumps({"debug": True, "timeout": 5}))
    assert ns["load_config"](str(present)) == {"debug": True, "timeout": 5}
    assert env.clock.sleeps == [0.5, 1.0]  # no retry needed
    opened: list[str] = []

    def flaky_open(path: str, mode: str = "r") -> Any:  # one transient I/O error
        opened.append(path)
        if len(opened) == 1:
            msg = "Resource temporarily unavailable"
            raise OSError(msg)
        return open(path, mode, encoding="utf-8")  # noqa: PTH123

    ns["open"] = flaky_open  # shadows the builtin for the example's functions only
    assert ns["load_config"](str(present)) == {"debug": True, "timeout": 5}
    assert opened == [str(present)] * 2


@check("file-operations/save-results")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    out = env.tmp_path / "runs" / "42" / "results.json"
    ns["save_results"]({"accuracy": 0.9}, str(out))
    assert json.loads(out.read_text()) == {"accuracy": 0.9}
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.json"]  # no .tmp left
    renames: list[str] = []

    def busy_once(src: str, dst: str) -> None:
        renames.append(src)
        if len(renames) == 1:
            msg = "Device or resource busy"
            raise OSError(msg)
        Path(src).replace(dst)

    ns["os"] = SimpleNamespace(replace=busy_once)  # the example's `os` only
    ns["save_results"]({"accuracy": 0.95}, str(out))
    assert json.loads(out.read_text()) == {"accuracy": 0.95}
    assert renames == [f"{out}.tmp"] * 2
    assert env.clock.sleeps == [1.0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.json"]


@check("file-operations/load-model")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    model = {"kind": "linear", "weights": [0.5, -1.25, 3.0]}
    path = env.tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    assert ns["load_model_file"](str(path)) == model
    with pytest.raises(FileNotFoundError):
        ns["load_model_file"](str(env.tmp_path / "missing.pkl"))
    assert env.clock.sleeps == [5.0]  # two attempts, one wait
    _no_alarm_left(env)


# ---------------------------------------------------------------- Testing Examples
@check("testing-examples/unit-tests")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    ns["test_retry_succeeds_after_failures"]()
    assert env.clock.sleeps == [0.1, 0.2]  # recorded, not slept
    ns["test_circuit_breaker_opens"]()
    ns["test_api_call_with_retry"]()  # @patch supplies mock_get
    assert env.network.calls == []  # the mock answered, not the (fake) network


# ---------------------------------------------------------------- Quick Reference
@check("quick-reference/api-call")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["api_call"]() is None
    breaker = ns["circuit_breaker"]
    assert breaker.statistics().name == "api_call"  # the breaker wraps api_call
    assert breaker.state is CircuitState.CLOSED
    assert ns["api_call"].__name__ == "api_call"
    _no_alarm_left(env)


@check("quick-reference/database")
def _(ns: dict[str, Any], env: DocEnv) -> None:  # pragma: no cover - needs recoverly.db
    with ns["Session"](env.extra["engine"]) as session:
        assert ns["db_operation"](session) is None
        assert not session.in_transaction()


@check("quick-reference/file-fallback")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["load_file"]("settings.json") is None  # the body `...` succeeds
    assert env.extra["default"].calls == 0
    assert ns["load_file"].__name__ == "load_file"


@check("quick-reference/celery-task")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    task = ns["task"]
    result = task.apply()
    assert result.successful()
    assert result.get() is None
    assert task.max_retries == 3
    assert task.name.endswith(".task")
    assert task.run.__name__ == "task"  # retry's wrapper kept the function's identity
    assert inspect.isfunction(task.run.__wrapped__)


@check("quick-reference/batch")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["successful"] == [0, 10, 20, 40, 50, 60, 70]
    assert [(item, type(exc)) for item, exc in ns["failed"]] == [(3, ValueError)]
    assert env.extra["attempts"][3] == 3  # max_retries=2: three attempts in all
    assert env.extra["attempts"][5] == 2  # failed once, then worked
    (failed,) = env.of(ev.BatchItemFailed)
    assert (failed.index, failed.attempts) == (3, 3)


# ---------------------------------------------------------------- guide
@check("guide/on-retry")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    env.network.fail(2)
    assert ns["fetch_status"]() == {"data": "live"}
    assert ns["seen"] == [(1, "ConnectionError", 0.5), (2, "ConnectionError", 1.0)]


@check("guide/retry-on-result")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    env.network.script({"status": "pending"}, {"status": "pending"}, {"status": "done"})
    assert ns["job_status"](7) == "done"
    assert env.clock.sleeps == [2.0, 2.0]
    assert env.network.calls[0][1] == "https://jobs.example.com/7"


@check("guide/retry-after")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    throttled = FakeResponse(None, 429, {"Retry-After": "12"})
    env.network.script(throttled, {"id": 1})
    assert ns["send"]({"text": "hi"}) == {"id": 1}
    assert env.clock.sleeps == [12.0]  # the hint beat the 1 s backoff
    env.network.script(FakeResponse(None, 429, {"Retry-After": "45"}))
    with pytest.raises(ns["RateLimited"]):
        ns["send"]({"text": "again"})
    assert env.clock.sleeps == [12.0]  # 45 s would end past the 30 s deadline
    assert [e.reason for e in env.of(ev.RetryGaveUp)] == ["deadline"]


@check("guide/retrying-block")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["report"] == {"data": "live"}
    assert ns["attempt"].number == 2
    assert len(env.network.calls) == 2
    assert env.clock.sleeps == [0.5]


@check("guide/budget")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    env.network.default = requests.ConnectionError("backend down")
    for user_id in range(20):
        with pytest.raises(requests.ConnectionError):
            ns["get_user"](user_id)
    stats = ns["backend_budget"].statistics()
    assert stats.calls == 20
    assert len(env.network.calls) == 20 + stats.retries
    assert stats.retries <= 1.0 * 10 + 0.2 * 20  # floor + share, instead of 40
    assert stats.rejected > 0
    assert "budget" in {e.reason for e in env.of(ev.RetryGaveUp)}


@check("guide/composition")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    stock_level, breaker = ns["stock_level"], ns["inventory_breaker"]
    assert stock_level("A1") == {"data": "live"}
    env.network.fail(1)
    assert stock_level("A1") == {"data": "live"}  # retried once, inside the fallback
    assert env.clock.sleeps == [0.2]
    env.network.calls.clear()
    env.network.default = requests.ConnectionError("inventory down")
    cache = {"sku": "A1", "stock": None, "source": "cache"}
    assert [stock_level("A1") for _ in range(3)] == [cache] * 3
    # call 1: three attempts, three counted failures; call 2: two more open the
    # breaker and its third attempt is rejected; call 3 is rejected at once
    assert len(env.network.calls) == 5
    assert breaker.state is CircuitState.OPEN
    reasons = [type(e.exception).__name__ for e in env.of(ev.FallbackUsed)]
    assert reasons == ["ConnectionError", "CircuitBreakerError", "CircuitBreakerError"]
    _no_alarm_left(env)


# ---------------------------------------------------------------- events
@check("events/subscribe")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["result"] == "ingested"
    assert [(e.name, e.attempt, e.delay) for e in ns["scheduled"]] == [
        ("ingest", 1, 0.25),
        ("ingest", 2, 0.5),
    ]
    assert ns["scheduled"][0].exception.args == ("injected fault",)
    assert ns["scheduled"].append not in ev.subscribers()


@check("events/metrics")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    from recoverly import CircuitBreaker

    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10, name="payments")
    with pytest.raises(ConnectionError), breaker:
        raise ConnectionError
    env.clock.advance(10)
    assert breaker.state is CircuitState.HALF_OPEN
    with breaker:
        pass
    assert dict(ns["state_changes"]) == {
        ("payments", "OPEN"): 1,
        ("payments", "HALF_OPEN"): 1,
        ("payments", "CLOSED"): 1,
    }


@check("events/quiet")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ev.log_event not in ev.subscribers()
    from recoverly import retry
    from recoverly.testing import FlakyCall

    assert retry(max_attempts=2, delay=0)(FlakyCall(failures=1, result=1))() == 1
    assert env.messages() == []


# ---------------------------------------------------------------- testing
@check("testing/manual-clock")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    ns["test_breaker_probes_after_recovery_timeout"]()
    assert env.clock.sleeps == []


@check("testing/instant")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    ns["test_backoff_schedule"]()


@check("testing/fixture")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    with instant() as clock:
        ns["test_fetch_retries_with_backoff"](clock)
    assert clock.sleeps == [1.0, 2.0]
