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

from docs_support import (
    STANDINS,
    DocEnv,
    FakeNetwork,
    FakeResponse,
    lock_database,
    query,
    stored_values,
)
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
#: Example id -> (module that must import, name or names it must have, reason to skip otherwise).
REQUIRES: dict[str, tuple[str, str | tuple[str, ...], str]] = {
    "key-features/db-retry": (
        "recoverly.db",
        ("db_retry", "ensure_connection"),
        "needs recoverly.db.db_retry and ensure_connection (database issue)",
    ),
    "quick-reference/database": (
        "recoverly.db",
        ("db_retry", "ensure_connection"),
        "needs recoverly.db.db_retry and ensure_connection (database issue)",
    ),
    "quick-reference/celery-task": (
        "celery",
        "Celery",
        "Celery is not installed (the celery extra)",
    ),
}
_DB_NAMES = {
    "database/classify": ("classify", "is_retryable"),
    "database/create-record": ("db_retry", "ensure_connection"),
    "database/query-endpoint": ("db_retry", "ensure_connection"),
    "database/lost-commit": ("db_retry",),
    "database/run-transaction": ("run_transaction",),
    "database/savepoints": ("with_savepoint",),
    "database/optimistic-locking-seed": ("atomic_update",),
    "database/optimistic-locking": ("atomic_update",),
    "database/bulk-insert": ("safe_bulk_insert",),
    "database/pool-monitor": ("ConnectionPoolMonitor",),
    "database/pool-autoscale": ("PoolAutoscaler",),
}
for _id, _names in _DB_NAMES.items():
    REQUIRES[_id] = (
        "recoverly.db",
        _names,
        f"needs recoverly.db.{' and '.join(_names)} (database issue)",
    )


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
    ("002_77ac4f1901e5fbc5.txt", "Database Operations"),
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
        names = (attribute,) if isinstance(attribute, str) else attribute
        missing = [name for name in names if not hasattr(module, name)]
        if missing:
            pytest.skip(f"{reason} (missing: {', '.join(missing)})")
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


@check("pipeline/inventory")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    stock_level, inventory = ns["stock_level"], ns["inventory"]
    breaker = inventory.parts[2]
    assert inventory.describe() == (
        "fallback alternatives=1",
        "retry max_attempts=3 strategy=EXPONENTIAL",
        "circuit_breaker 'stock' failure_threshold=5",
        "timeout seconds=2",
    )
    assert stock_level("A1") == {"data": "live"}
    env.network.fail(1)
    assert stock_level("A1") == {"data": "live"}  # retried once, inside the fallback
    assert env.clock.sleeps == [0.2]
    env.network.calls.clear()
    env.network.default = requests.ConnectionError("inventory down")
    cache = {"sku": "A1", "stock": None, "source": "cache"}
    assert [stock_level("A1") for _ in range(3)] == [cache] * 3
    assert len(env.network.calls) == 5  # as in guide/composition: 3 + 2, then rejections
    assert breaker.state is CircuitState.OPEN
    reasons = [type(e.exception).__name__ for e in env.of(ev.FallbackUsed)]
    assert reasons == ["ConnectionError", "CircuitBreakerError", "CircuitBreakerError"]
    _no_alarm_left(env)


@check("pipeline/chaos")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    orders = [{"id": i, "status": "paid"} for i in range(20)]
    assert ns["calm"] == orders
    assert ns["stormy"] == orders
    retry_part, fault, latency = ns["orders"].parts
    assert fault.statistics().injected > 0  # faults happened and were retried away
    assert fault.statistics().calls == 20 + fault.statistics().injected
    assert latency.statistics().injected > 0
    waits = [s for s in env.clock.sleeps if s != 2.0]
    assert len(waits) == fault.statistics().injected  # one retry wait per fault
    assert env.clock.sleeps.count(2.0) == latency.statistics().injected
    assert retry_part.statistics().retries == fault.statistics().injected


@check("pipeline/chaos-schedule")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["batches"] == [i * 10 for i in range(8)]
    assert ns["loads"] == list(range(8))  # a fault is raised instead of calling the function
    assert len(env.clock.sleeps) == 2  # one retry wait for each scheduled fault
    answers = ns["answers"]
    assert answers.count("timeout") == 2
    last = max(i for i, a in enumerate(answers) if a == "timeout")
    assert answers[last + 1 :] == ["pong"] * (len(answers) - last - 1)
    assert last < len(answers) - 1


@check("pipeline/configure")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    import recoverly

    assert ns["calls"] == [7, 7]  # the third attempt was rejected by the open breaker
    assert isinstance(ns["rejected"], CircuitBreakerError)
    assert ns["state"] is CircuitState.OPEN
    assert recoverly.retry_policy("payments").max_attempts == 5
    assert recoverly.breaker("payments").failure_count == 2


@check("pipeline/configure-parts")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    import recoverly

    assert ns["calm"] == [f"results for {q}" for q in "abcdef"]
    assert ns["stormy"] == ns["calm"]
    fault = recoverly.chaos_policy("search").statistics()
    retried = recoverly.retry_policy("search").statistics().retries
    hedged = recoverly.hedge_policy("search").statistics().hedges  # 0 unless a thread was slow
    assert fault.calls == 6 + retried + hedged  # only the game day rolled the dice
    assert fault.injected > 0
    assert ns["budget"].retries == retried + hedged  # every extra attempt came from the budget
    assert retried >= fault.injected - hedged
    assert recoverly.hedge_policy("search").budget is recoverly.retry_budget("search")
    assert recoverly.throttle_policy("search").statistics().requests == 12


@check("pipeline/throttle")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    sent, refused = len(ns["sent"]), ns["refused_locally"]
    assert sent < 30  # against 600 for three plain attempts per call
    assert refused >= 170
    assert sent + refused >= 200  # every call either reached the backend or was refused


@check("pipeline/hedge")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["answer"] == "user:42: found"
    s = ns["stats"]
    assert (s.calls, s.hedges, s.hedge_wins, s.cancelled, s.denied) == (1, 1, 1, 1, 0)
    assert env.clock.sleeps == [0.02]  # the hedge waited its delay on the clock


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

    # Not "payments": this breaker can outlive the check in a reference cycle (through the
    # events it emitted) and would then collide with the one pipeline/configure names so.
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10, name="metrics-demo")
    with pytest.raises(ConnectionError), breaker:
        raise ConnectionError
    env.clock.advance(10)
    assert breaker.state is CircuitState.HALF_OPEN
    with breaker:
        pass
    assert dict(ns["state_changes"]) == {
        ("metrics-demo", "OPEN"): 1,
        ("metrics-demo", "HALF_OPEN"): 1,
        ("metrics-demo", "CLOSED"): 1,
    }
    # The caught exception's traceback keeps this frame alive until the garbage collector
    # runs; without this, the breaker would live as long and a later example that names
    # a breaker "payments" would meet it.
    del breaker


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


# ---------------------------------------------------------------- database
def _session(env: DocEnv) -> Any:
    from sqlalchemy.orm import Session

    session = Session(env.extra["engine"])
    env.cleanups.insert(0, session.close)  # before the engine is disposed
    return session


@check("database/classify")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    import sys

    from recoverly.db import FailureKind

    failure = ns["failure"]
    assert failure.kind is FailureKind.BUSY
    assert failure.retryable
    assert failure.code == ("5" if sys.version_info >= (3, 11) else "SQLITE_BUSY")
    assert "database is locked" in str(ns["locked_error"])
    assert type(ns["duplicate_key_error"]).__name__ == "IntegrityError"


@check("database/create-record")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    path, create = env.extra["path"], ns["create_model_run"]
    session = _session(env)
    run = create(session, "resnet", "cnn", {"lr": 0.1})
    assert not session.in_transaction()  # committed on the return inside the block
    assert run.id == 1  # (expired by the commit: this reads it back)
    assert query(path, "SELECT name, model_type, status FROM model_runs") == [
        ("resnet", "cnn", "created")
    ]
    assert query(path, "SELECT model_run_id, status FROM training_progress") == [(1, "initialized")]
    session.close()  # reading run.id began a transaction; db_retry must own the next one
    # A transient fault: another connection holds the write lock during the first attempt.
    lock_database(env)
    assert create(session, "vit", "transformer", {}).id == 2
    assert env.clock.sleeps == [0.5]
    (scheduled,) = env.of(ev.RetryScheduled)
    assert "database is locked" in str(scheduled.exception)
    assert query(path, "SELECT count(*) FROM model_runs") == [(2,)]  # written once
    assert query(path, "SELECT count(*) FROM training_progress") == [(2,)]
    # A bad value is not retried, and nothing of the unit is kept.
    with pytest.raises(Exception, match="JSON serializable"):
        create(session, "bad", "cnn", {"weights": object()})
    assert env.clock.sleeps == [0.5]
    assert query(path, "SELECT count(*) FROM model_runs") == [(2,)]


@check("database/query-endpoint")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    import asyncio

    (route,) = ns["router"].routes
    assert route[:2] == ("GET", "/models/{model_id}")
    get_model = route[2]
    assert inspect.iscoroutinefunction(get_model)
    session = _session(env)
    model = asyncio.run(get_model(7, db=session))
    assert (model.id, model.name) == (7, "resnet")
    with pytest.raises(ns["HTTPException"]) as info:
        asyncio.run(get_model(8, db=session))
    assert (info.value.status_code, info.value.detail) == (404, "Model not found")
    assert env.clock.sleeps == []  # a 404 is not a database error: no retry
    session.close()
    lock_database(env, "EXCLUSIVE")  # readers are locked out during the first attempt
    assert asyncio.run(get_model(7, db=session)).name == "resnet"
    assert env.clock.sleeps == [0.5]


@check("database/lost-commit")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    path = env.extra["path"]
    session = _session(env)
    assert ns["record_transfer"](session, "t-1", 10) is None
    assert query(path, "SELECT id, amount FROM transfers") == [("t-1", 10)]
    assert query(path, "SELECT balance FROM accounts WHERE id = 1") == [(90,)]
    assert ns["transfer_recorded"](session, "t-1", 10) is True
    assert ns["transfer_recorded"](session, "t-2", 10) is False
    session.rollback()
    with pytest.raises(Exception, match="UNIQUE constraint failed"):
        ns["record_transfer"](session, "t-1", 10)  # the key refuses a second copy
    assert env.clock.sleeps == []
    assert query(path, "SELECT balance FROM accounts WHERE id = 1") == [(90,)]
    # A lost commit: the COMMIT lands, then the connection dies before the answer.
    from sqlalchemy import event

    dropped: list[bool] = []

    def commit_then_drop(conn: Any) -> None:
        if not dropped:
            dropped.append(True)
            raw = conn.connection.dbapi_connection
            raw.commit()
            raw.close()  # SQLAlchemy's own commit() now fails: a disconnect

    engine = env.extra["engine"]
    event.listen(engine, "commit", commit_then_drop)
    env.cleanups.insert(0, lambda: event.remove(engine, "commit", commit_then_drop))
    session.rollback()
    assert ns["record_transfer"](session, "t-2", 15) is None  # the check said: committed
    assert dropped == [True]
    assert env.clock.sleeps == [0.5]  # rolled back, waited, asked transfer_recorded
    assert query(path, "SELECT id FROM transfers ORDER BY id") == [("t-1",), ("t-2",)]
    assert query(path, "SELECT balance FROM accounts WHERE id = 1") == [(75,)]  # once, not twice


@check("database/run-transaction")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    path = env.extra["path"]
    assert ns["balance"] == 90
    assert query(path, "SELECT balance FROM accounts ORDER BY id") == [(90,), (10,)]
    lock_database(env)  # the first attempt meets "database is locked"
    assert ns["run_transaction"](ns["SessionLocal"], ns["transfer"]) == 80
    assert len(env.clock.sleeps) == 1
    assert query(path, "SELECT balance FROM accounts ORDER BY id") == [(80,), (20,)]


@check("database/savepoints")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    path, create = env.extra["path"], ns["create_model_with_dataset"]
    session = _session(env)
    model, dataset = create(session, {"name": "resnet"}, {"name": "imagenet"})
    assert (model.name, dataset.name) == ("resnet", "imagenet")
    model, dataset = create(session, {"name": "vit"}, {"name": "taken"})  # unique name
    assert model.name == "vit"
    assert dataset is None
    assert query(path, "SELECT name FROM model_runs ORDER BY id") == [("resnet",), ("vit",)]
    assert query(path, "SELECT name FROM datasets ORDER BY id") == [("taken",), ("imagenet",)]
    (rolled,) = env.of(ev.TransactionRolledBack)
    assert rolled.name == "savepoint"
    warned = [r.getMessage() for r in env.caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("Dataset creation failed: (sqlite3.IntegrityError)") for m in warned)


def _race_before(ns: dict[str, Any], env: DocEnv) -> None:
    """Make another connection commit an increment just before each atomic_update call."""
    real, path = ns["atomic_update"], env.extra["path"]

    def racing(**kwargs: Any) -> Any:
        other = sqlite3.connect(path)
        with other:
            other.execute(
                "UPDATE model_runs SET usage_count = usage_count + 1, version = version + 1"
            )
        other.close()
        return real(**kwargs)

    ns["atomic_update"] = racing


@check("database/optimistic-locking-seed")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    session = _session(env)
    assert ns["increment_model_usage"](session, 2) is False  # no such row
    _race_before(ns, env)
    assert ns["increment_model_usage"](session, 1) is True
    # two increments happened (the racing one and ours), the counter shows one: lost
    assert query(env.extra["path"], "SELECT usage_count FROM model_runs") == [(1,)]


@check("database/optimistic-locking")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    from sqlalchemy import event

    path = env.extra["path"]
    session = _session(env)
    assert ns["increment_model_usage"](session, 2) is False
    _race_before(ns, env)
    assert ns["increment_model_usage"](session, 1) is True
    assert query(path, "SELECT usage_count FROM model_runs") == [(2,)]  # nothing lost
    # A writer that commits between atomic_update's read and its write: conflict, retry.
    model_run = ns["ModelRun"]
    raced: list[int] = []

    def concurrent_write(mapper: Any, connection: Any, target: Any) -> None:
        if not raced:
            raced.append(target.id)
            other = sqlite3.connect(path)
            with other:
                other.execute(
                    "UPDATE model_runs SET usage_count = usage_count + 1, version = version + 1"
                )
            other.close()

    event.listen(model_run, "before_update", concurrent_write)
    env.cleanups.append(lambda: event.remove(model_run, "before_update", concurrent_write))
    assert ns["increment_model_usage"](session, 1) is True
    assert raced == [1]
    assert query(path, "SELECT usage_count FROM model_runs") == [(5,)]  # 2 + race + race + ours
    (scheduled,) = env.of(ev.RetryScheduled)
    assert type(scheduled.exception).__name__ == "StaleDataError"


@check("database/bulk-insert")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    bad = {7, 150, 233}
    predictions = [
        {
            "model_run_id": 1,
            "input_data": {"x": i},
            "prediction": None if i in bad else i / 10,
            "confidence": 0.9,
        }
        for i in range(250)
    ]
    session = _session(env)
    count, failed = ns["save_predictions_batch"](session, predictions)
    assert count == 247
    assert [record["input_data"]["x"] for record, _ in failed] == sorted(bad)
    assert {type(exc).__name__ for _, exc in failed} == {"IntegrityError"}
    rows = query(env.extra["path"], "SELECT count(*), sum(prediction IS NULL) FROM predictions")
    assert rows == [(247, 0)]
    errors = [r.getMessage() for r in env.caplog.records if r.levelno == logging.ERROR]
    assert errors[0] == "Failed to insert 3 predictions"
    assert len(errors) == 4


@check("database/pool-monitor")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    monitor, engine = ns["monitor"], ns["engine"]
    env.cleanups.append(engine.dispose)
    assert ns["status"]["capacity"] == 10
    assert ns["status"]["checked_out"] == 0
    conns = [engine.connect() for _ in range(8)]
    try:
        status = monitor.status()
        assert (status["checked_out"], status["utilization"]) == (8, 0.8)
        assert sum("is 80% used (8 of 10 connections" in m for m in env.messages()) == 1
        env.clock.advance(31)
        leaks = monitor.check()
        assert len(leaks) == 8
        assert "conns = [engine.connect() for _ in range(8)]" in leaks[0].stack
    finally:
        for conn in conns:
            conn.close()
    assert monitor.leaks() == []
    monitor.close()


@check("database/pool-autoscale")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    scaler, engine = ns["scaler"], ns["engine"]
    env.cleanups += [engine.dispose, scaler.close]
    assert (ns["status"]["capacity"], ns["status"]["spell"]) == (5, "steady")
    conns = [engine.connect() for _ in range(5)]  # all 5 out: busy
    env.clock.advance(1)  # grow_after
    assert scaler.tick() == 8  # ceil(5 / 0.65)
    assert sum("grown from 5 to 8 connections (busy; 100% used)" in m for m in env.messages()) == 1
    conns += [engine.connect() for _ in range(3)]  # room for 3 more, no waiting
    for conn in conns:
        conn.close()
    env.clock.advance(60)  # shrink_after
    assert scaler.tick() == 5
    assert [(e.old, e.new, e.reason) for e in env.of(ev.PoolResized)] == [
        (5, 8, "busy"),
        (8, 5, "idle"),
    ]


# ---------------------------------------------------------------- Celery (docs/celery.md)
REQUIRES.update(
    dict.fromkeys(
        ("celery/setup", "celery/process-data", "celery/base-class", "celery/process-batch"),
        ("recoverly.celery", "resilient_task", "needs the celery extra"),
    )
)
REQUIRES["celery/train-model"] = (
    "recoverly.training",
    "CheckpointManager",
    "needs recoverly.training's CheckpointManager (the training extra)",
)


@check("celery/setup")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    from recoverly.celery import RedisTaskStore

    conf = ns["celery_app"].conf
    assert conf.worker_prefetch_multiplier == 1
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert isinstance(ns["store"], RedisTaskStore)
    assert ns["store"].prefix == "ml:tasks"


@check("celery/process-data")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    task, load_data = ns["process_data_task"], env.extra["load_data"]
    assert task.apply(args=(7,)).get() == {"status": "success", "data_id": 7}
    # Three failures: two absorbed in-process (5 s each), one went back to Celery.
    assert load_data.calls == 4
    assert env.clock.sleeps == [5.0, 5.0]
    (outer,) = [e for e in env.of(ev.RetryScheduled) if e.name == task.name]
    assert 30.0 <= outer.delay <= 60.0  # 60 s with jitter=True
    assert env.extra["saved"] == [(7, 6)]
    # The same message delivered again returns the stored result without running.
    assert task.apply(args=(7,)).get() == {"status": "success", "data_id": 7}
    assert load_data.calls == 4
    assert env.extra["saved"] == [(7, 6)]
    assert task.acks_late is True


@check("celery/base-class")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    from recoverly.celery import ResilientTask

    task, fetch = ns["refresh_features"], env.extra["fetch"]
    assert task.apply(args=(3,)).get() == {"features": [0.5, 1.5]}
    assert fetch.calls == 2  # one ConnectionError, retried through Celery
    (scheduled,) = [e for e in env.of(ev.RetryScheduled) if e.name == task.name]
    assert scheduled.delay == 10.0
    assert task.apply(args=(3,)).get() == {"features": [0.5, 1.5]}
    assert fetch.calls == 2
    assert isinstance(task._get_current_object(), ResilientTask)
    assert task.max_redeliveries == 2


@check("celery/train-model")
def _(ns: dict[str, Any], env: DocEnv) -> None:  # pragma: no cover - needs recoverly.training
    task = ns["train_model_task"]
    result = task.apply(args=(7, {"num_epochs": 6})).get()
    assert result == {"status": "success", "model_run_id": 7, "best_score": 1.0}
    # Epoch 3 failed once; the retry resumed at epoch 3, epochs 0-2 were not redone.
    assert env.extra["epochs"] == [0, 1, 2, 3, 3, 4, 5]
    assert env.extra["progress"] == [(7, e) for e in range(6)]
    assert env.extra["finals"] == [(7, {"weights": 6.0}, 1.0)]  # weights restored from epoch 3
    (directory,) = env.extra["root"].iterdir()
    assert directory.name.startswith("train-model-7-")
    assert task.apply(args=(7, {"num_epochs": 99})).get() == result  # same key: stored result
    assert len(env.extra["epochs"]) == 7


@check("celery/process-batch")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    task = ns["process_batch_task"]
    expected = {"total": 6, "successful": 5, "failed": 1, "failed_ids": [4]}
    assert task.apply(args=([0, 1, 2, 3, 4, 5],)).get() == expected
    assert env.extra["saved"] == [(i, i * 10) for i in (0, 1, 2, 3, 5)]
    assert task.apply(args=([0, 1, 2, 3, 4, 5],)).get() == expected  # redelivered: not rerun
    assert len(env.extra["saved"]) == 5


# ---------------------------------------------------------------- concurrency
@check("concurrency/tour")
def _(ns: dict[str, Any], env: DocEnv) -> None:
    assert ns["answers"] == [0, 1, 2, 3, 4]
    assert env.clock.sleeps == [pytest.approx(0.5)] * 3
    assert ns["api"].statistics().delayed == 3
    assert ns["rejected"] == "full"
    assert ns["reports"].statistics().active == 0
