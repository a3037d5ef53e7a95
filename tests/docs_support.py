"""Stand-ins for the names the documentation examples take from their surroundings.

The examples in ``docs/*.md`` are the seeds' examples with only their imports
changed, so they use names the seeds never define: ``requests``, ``url``,
``external_api``, ``api``, ``use_cached_data``, ``expensive_computation``,
``db``, ``operations``... ``tests/test_docs.py`` runs each example in a fresh
namespace pre-filled by :data:`STANDINS` and then checks what happened.

Nothing here touches the network: :class:`FakeNetwork` replaces
``requests.get``, ``requests.post`` and ``requests.request`` with a script, and
any other way into ``requests`` raises.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from recoverly.testing import ManualClock

__all__ = [
    "STANDINS",
    "Dependency",
    "DocEnv",
    "FakeNetwork",
    "FakeResponse",
    "open_results_db",
    "stored_values",
]

#: The table every sqlite stand-in database has.
RESULTS_TABLE = "CREATE TABLE results (value TEXT NOT NULL)"


# ---------------------------------------------------------------- network
class FakeResponse:
    """What ``requests.get`` returns in the doc tests: a status and a JSON payload."""

    def __init__(
        self, payload: Any = None, status_code: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self.status_code = status_code
        self.headers = headers or {}
        self._payload = payload

    def json(self) -> Any:
        """Return the scripted payload."""
        return self._payload

    def raise_for_status(self) -> None:
        """Raise ``requests.HTTPError`` for a 4xx or 5xx status, like requests does."""
        if self.status_code >= 400:
            msg = f"{self.status_code} Error"
            raise requests.HTTPError(msg, response=self)

    def __repr__(self) -> str:
        return f"<FakeResponse {self.status_code} {self._payload!r}>"


class FakeNetwork:
    """A scripted replacement for ``requests.get``/``post``/``request``.

    Each request takes the next scripted outcome (an exception is raised, a
    :class:`FakeResponse` is returned, anything else becomes a 200 response
    with that JSON payload); once the script is empty every request answers
    ``default``. ``calls`` records ``(method, url, kwargs)``.
    """

    def __init__(self, default: Any = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.default = default if default is not None else {"data": "live"}
        self._script: deque[Any] = deque()

    def script(self, *outcomes: Any) -> FakeNetwork:
        """Queue outcomes for the next requests, in order."""
        self._script.extend(outcomes)
        return self

    def fail(self, times: int, message: str = "Connection timeout") -> FakeNetwork:
        """Make the next ``times`` requests raise ``requests.ConnectionError``."""
        return self.script(*(requests.ConnectionError(message) for _ in range(times)))

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        """Answer one request from the script."""
        self.calls.append((method.upper(), url, kwargs))
        outcome = self._script.popleft() if self._script else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, FakeResponse):
            return outcome
        return FakeResponse(outcome)

    def get(self, url: str, **kwargs: Any) -> FakeResponse:
        """``requests.get`` stand-in."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        """``requests.post`` stand-in."""
        return self.request("POST", url, **kwargs)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Route ``requests.get/post/request`` here and forbid every other request."""
        monkeypatch.setattr(requests, "get", self.get)
        monkeypatch.setattr(requests, "post", self.post)
        monkeypatch.setattr(requests, "request", self.request)

        def no_network(*args: Any, **kwargs: Any) -> Any:
            msg = "the doc tests never use the network"
            raise RuntimeError(msg)

        monkeypatch.setattr(requests.Session, "request", no_network)


# ---------------------------------------------------------------- services
class Dependency:
    """A callable standing in for a remote operation that can be down.

    While ``down`` (or for the first ``failures`` calls) it raises a fresh
    ``ConnectionError``; otherwise it returns ``answer``. ``calls`` counts calls.
    """

    def __init__(self, answer: Any, *, failures: int = 0, down: bool = False) -> None:
        self.answer = answer
        self.failures = failures
        self.down = down
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - any signature
        """Fail or answer, and count the call."""
        self.calls += 1
        if self.down or self.calls <= self.failures:
            msg = "Connection timeout"
            raise ConnectionError(msg)
        return self.answer


# ---------------------------------------------------------------- sqlite
def open_results_db(path: Path) -> sqlite3.Connection:
    """Create a sqlite database file with an empty ``results`` table; return a connection."""
    db = sqlite3.connect(path)
    db.execute(RESULTS_TABLE)
    db.commit()
    return db


def stored_values(path: Path) -> list[str]:
    """Read the committed ``results`` rows through a second, independent connection."""
    other = sqlite3.connect(path)
    try:
        return [row[0] for row in other.execute("SELECT value FROM results ORDER BY rowid")]
    finally:
        other.close()


# ---------------------------------------------------------------- environment
@dataclass
class DocEnv:
    """What an example's stand-ins and check can use.

    Attributes:
        tmp_path: A fresh directory for files.
        monkeypatch: pytest's monkeypatch, undone after the test.
        clock: The ManualClock installed as the default clock (sleeps are recorded).
        network: The fake network behind ``requests``.
        events: Every recoverly event emitted while the example and its check ran.
        caplog: pytest's log capture (the ``recoverly`` logger is captured at INFO).
        extra: Objects the stand-ins made that the check needs (not in the namespace).
        cleanups: Called after the check (closing connections).
        rerun: Runs the example's code again in the same namespace.
    """

    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    clock: ManualClock
    network: FakeNetwork
    events: list[Any]
    caplog: pytest.LogCaptureFixture
    extra: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], object]] = field(default_factory=list)
    rerun: Callable[[], None] = lambda: None

    def messages(self) -> list[str]:
        """Return the messages logged to ``recoverly`` so far."""
        return [r.getMessage() for r in self.caplog.records if r.name == "recoverly"]

    def of(self, kind: type) -> list[Any]:
        """Return the events of class ``kind`` seen so far."""
        return [e for e in self.events if isinstance(e, kind)]


Standin = Callable[[DocEnv], dict[str, Any]]
STANDINS: dict[str, Standin] = {}


def standin(*example_ids: str) -> Callable[[Standin], Standin]:
    """Register a function that returns the pre-filled namespace of these examples."""

    def register(fn: Standin) -> Standin:
        for example_id in example_ids:
            STANDINS[example_id] = fn
        return fn

    return register


@standin("key-features/retry")
def _api_url(env: DocEnv) -> dict[str, Any]:
    return {"url": "https://api.example.com/data"}


@standin("key-features/circuit-breaker")
def _external_api(env: DocEnv) -> dict[str, Any]:
    call = Dependency({"status": "ok"}, down=True)
    env.extra["call"] = call
    return {"external_api": SimpleNamespace(call=call)}


@standin("key-features/fallback")
def _live_and_cached(env: DocEnv) -> dict[str, Any]:
    get_data = Dependency({"data": "live"}, down=True)
    cached = Dependency({"data": "cached"})
    env.extra.update(get_data=get_data, cached=cached)

    def use_cached_data() -> dict[str, str]:
        return cached()

    return {"api": SimpleNamespace(get_data=get_data), "use_cached_data": use_cached_data}


@standin("key-features/timeout")
def _computation(env: DocEnv) -> dict[str, Any]:
    computation = Dependency(42)
    env.extra["computation"] = computation

    def expensive_computation() -> int:
        return computation()

    return {"expensive_computation": expensive_computation}


@standin("key-features/transaction")
def _sqlite(env: DocEnv) -> dict[str, Any]:
    path = env.tmp_path / "app.sqlite3"
    env.extra["path"] = path
    db = open_results_db(path)
    env.cleanups.append(db.close)
    return {"db": db, "operations": "INSERT INTO results (value) VALUES ('saved')"}


@standin("guide/retrying-block")
def _one_network_failure(env: DocEnv) -> dict[str, Any]:
    env.network.fail(1)
    return {}


@standin("key-features/db-retry", "quick-reference/database")
def _sqlalchemy_model(env: DocEnv) -> dict[str, Any]:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    class Base(DeclarativeBase):
        pass

    class Model(Base):
        __tablename__ = "models"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]

    engine = create_engine(f"sqlite:///{env.tmp_path / 'models.sqlite3'}")
    Base.metadata.create_all(engine)
    env.extra.update(engine=engine, Model=Model)
    return {"Session": Session, "Model": Model}


@standin("quick-reference/api-call")
def _api_breaker(env: DocEnv) -> dict[str, Any]:
    from recoverly import CircuitBreaker

    return {"circuit_breaker": CircuitBreaker(failure_threshold=5, recovery_timeout=60)}


@standin("quick-reference/file-fallback")
def _use_default(env: DocEnv) -> dict[str, Any]:
    default = Dependency({"source": "default"})
    env.extra["default"] = default

    def use_default() -> dict[str, str]:
        return default()

    return {"use_default": use_default}


@standin("quick-reference/celery-task")
def _celery(env: DocEnv) -> dict[str, Any]:
    from celery import Celery

    app = Celery("docs", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    return {"celery_app": app}


@standin("quick-reference/batch")
def _batch(env: DocEnv) -> dict[str, Any]:
    attempts: dict[int, int] = {}

    def process_func(item: int) -> int:
        attempts[item] = attempts.get(item, 0) + 1
        if item == 3:
            msg = f"item {item} is malformed"
            raise ValueError(msg)
        if item == 5 and attempts[item] == 1:
            msg = "Connection timeout"
            raise ConnectionError(msg)
        return item * 10

    env.extra["attempts"] = attempts
    return {"items": list(range(8)), "process_func": process_func}
