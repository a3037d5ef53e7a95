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

import datetime as dt
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
    "add_rows",
    "database",
    "lock_database",
    "open_results_db",
    "query",
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
    from sqlalchemy.orm import Session

    database(env)
    env.extra["Model"] = Model
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


# ---------------------------------------------------------------- databases (docs/database.md)
# The models are declared at module level: this module has postponed annotations,
# and SQLAlchemy resolves the string annotations (``Mapped[int]``) in the globals
# of the class's module, which a class declared inside a function cannot offer.
try:
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
except ImportError:  # pragma: no cover - without the db extra the database examples skip
    sa = None

if sa is not None:

    class DocBase(DeclarativeBase):
        """The declarative base of the documentation's models."""

    class Model(DocBase):
        """The guide's ``Model``."""

        __tablename__ = "models"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]

    class ModelRun(DocBase):
        """The seeds' ``ModelRun``, with a version column for ``atomic_update``."""

        __tablename__ = "model_runs"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        model_type: Mapped[str] = mapped_column(default="linear")
        config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
        status: Mapped[str] = mapped_column(default="created")
        created_at: Mapped[dt.datetime | None]
        usage_count: Mapped[int] = mapped_column(default=0)
        version: Mapped[int] = mapped_column()
        __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's API

    class TrainingProgress(DocBase):
        """The seeds' ``TrainingProgress``."""

        __tablename__ = "training_progress"
        id: Mapped[int] = mapped_column(primary_key=True)
        model_run_id: Mapped[int] = mapped_column(sa.ForeignKey("model_runs.id"))
        status: Mapped[str]
        progress_percentage: Mapped[float]

    class Prediction(DocBase):
        """The seeds' ``Prediction`` (``prediction`` is NOT NULL)."""

        __tablename__ = "predictions"
        id: Mapped[int] = mapped_column(primary_key=True)
        model_run_id: Mapped[int]
        input_data: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
        prediction: Mapped[float]
        confidence: Mapped[float]

    class Dataset(DocBase):
        """The seeds' ``Dataset`` (names are unique)."""

        __tablename__ = "datasets"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(unique=True)

    class Account(DocBase):
        """An account for the transfer examples."""

        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(primary_key=True)
        balance: Mapped[int]

    class Transfer(DocBase):
        """A transfer, keyed by its idempotency key."""

        __tablename__ = "transfers"
        id: Mapped[str] = mapped_column(primary_key=True)
        amount: Mapped[int]


def database(env: DocEnv, *, savepoints: bool = False) -> Any:
    """Create a file-backed SQLite database with every model's table; return its engine.

    ``timeout=0``: a write that meets another connection's lock fails at once
    with "database is locked" instead of waiting, so the checks can inject that
    transient error with :func:`lock_database`. ``savepoints`` applies
    ``enable_sqlite_savepoints`` (needed by ``with_savepoint`` and
    ``safe_bulk_insert``).
    """
    path = env.tmp_path / "app.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    if savepoints:
        from recoverly.db.savepoint import enable_sqlite_savepoints

        enable_sqlite_savepoints(engine)
    DocBase.metadata.create_all(engine)
    env.extra.update(engine=engine, path=path)
    env.cleanups.append(engine.dispose)
    return engine


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a second, independent connection: what is committed."""
    other = sqlite3.connect(path)
    try:
        return other.execute(sql).fetchall()
    finally:
        other.close()


def lock_database(env: DocEnv, mode: str = "IMMEDIATE") -> sqlite3.Connection:
    """Hold a SQLite lock from another connection until the first retry is scheduled.

    ``IMMEDIATE`` blocks writers, ``EXCLUSIVE`` readers too. The lock is
    released by a subscriber to ``RetryScheduled``, so the first attempt meets
    a real "database is locked" and the retry finds the database free.
    """
    from recoverly import events as ev

    locker = sqlite3.connect(env.extra["path"], isolation_level=None)
    locker.execute(f"BEGIN {mode}")

    def release(event: object) -> None:
        if isinstance(event, ev.RetryScheduled) and locker.in_transaction:
            locker.rollback()

    ev.subscribe(release)  # tests/conftest.py restores the bus afterwards
    env.cleanups.append(locker.close)
    return locker


def add_rows(env: DocEnv, *rows: Any) -> None:
    """Commit ``rows`` (model instances) through a session of their own."""
    from sqlalchemy.orm import Session

    with Session(env.extra["engine"]) as session:
        session.add_all(rows)
        session.commit()


@standin("database/classify")
def _database_errors(env: DocEnv) -> dict[str, Any]:
    engine = database(env)
    with engine.begin() as conn:
        conn.execute(sa.insert(Account).values(id=1, balance=0))
    errors: dict[str, Any] = {}
    locker = lock_database(env)
    with engine.connect() as conn:
        try:
            conn.execute(sa.insert(Account).values(id=2, balance=0))
        except sa.exc.OperationalError as exc:
            errors["locked_error"] = exc
    locker.rollback()
    with engine.connect() as conn:
        try:
            conn.execute(sa.insert(Account).values(id=1, balance=0))
        except sa.exc.IntegrityError as exc:
            errors["duplicate_key_error"] = exc
    return errors


@standin("database/create-record")
def _create_record(env: DocEnv) -> dict[str, Any]:
    import warnings

    database(env)
    # the seed's datetime.utcnow() warns on Python 3.12+; pytest restores the filters
    warnings.filterwarnings("ignore", r"datetime\.datetime\.utcnow", DeprecationWarning)
    return {"ModelRun": ModelRun, "TrainingProgress": TrainingProgress}


class _FastAPI:
    """The parts of ``fastapi`` the query-endpoint example uses (FastAPI is not installed)."""

    class HTTPException(Exception):
        """``fastapi.HTTPException``."""

        def __init__(self, status_code: int, detail: Any = None) -> None:
            super().__init__(status_code, detail)
            self.status_code = status_code
            self.detail = detail

    class Depends:
        """``fastapi.Depends``: a marker holding the dependency."""

        def __init__(self, dependency: Callable[..., Any]) -> None:
            self.dependency = dependency

    class APIRouter:
        """``fastapi.APIRouter``: records the routes it was given."""

        def __init__(self) -> None:
            self.routes: list[tuple[str, str, Callable[..., Any]]] = []

        def get(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            """Register a GET route."""

            def register(fn: Callable[..., Any]) -> Callable[..., Any]:
                self.routes.append(("GET", path, fn))
                return fn

            return register


@standin("database/query-endpoint")
def _query_endpoint(env: DocEnv) -> dict[str, Any]:
    import sys
    from types import ModuleType

    from sqlalchemy.orm import Session

    fastapi = ModuleType("fastapi")
    for name in ("APIRouter", "Depends", "HTTPException"):
        setattr(fastapi, name, getattr(_FastAPI, name))
    env.monkeypatch.setitem(sys.modules, "fastapi", fastapi)
    engine = database(env)
    add_rows(env, ModelRun(id=7, name="resnet"))

    def get_db() -> Any:
        with Session(engine) as session:
            yield session

    return {"get_db": get_db, "ModelRun": ModelRun}


@standin("database/run-transaction", "database/lost-commit")
def _accounts(env: DocEnv) -> dict[str, Any]:
    engine = database(env)
    add_rows(env, Account(id=1, balance=100), Account(id=2, balance=0))
    return {"engine": engine, "Account": Account, "Transfer": Transfer}


@standin("database/savepoints")
def _savepoints(env: DocEnv) -> dict[str, Any]:
    database(env, savepoints=True)
    add_rows(env, Dataset(name="taken"))
    return {"ModelRun": ModelRun, "Dataset": Dataset}


@standin("database/optimistic-locking-seed", "database/optimistic-locking")
def _usage_counter(env: DocEnv) -> dict[str, Any]:
    database(env)
    add_rows(env, ModelRun(id=1, name="resnet", usage_count=0))
    return {"ModelRun": ModelRun}


@standin("database/bulk-insert")
def _predictions(env: DocEnv) -> dict[str, Any]:
    database(env, savepoints=True)
    return {"Prediction": Prediction}


@standin("database/pool-monitor", "database/pool-autoscale")
def _pool_url(env: DocEnv) -> dict[str, Any]:
    url = f"sqlite:///{env.tmp_path / 'pool.sqlite3'}"
    env.extra["url"] = url
    return {"url": url}


# ---------------------------------------------------------------- celery (docs/celery.md)
def _eager_celery_app() -> Any:
    """A Celery app that runs tasks in this process at once (no broker)."""
    from celery import Celery

    app = Celery("docs", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    return app


def celery_task_store(env: DocEnv) -> Any:
    """A RedisTaskStore on database 1 of the test Redis, with a prefix of its own.

    Skips the example when Redis does not answer. Its keys are deleted afterwards.
    """
    import os
    import uuid

    import redis

    from recoverly.celery import RedisTaskStore

    url = os.environ.get("RECOVERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    head, _, tail = url.split("?", maxsplit=1)[0].rpartition("/")
    url = f"{head}/1" if tail.isdigit() and head.count("/") >= 2 else f"{url.rstrip('/')}/1"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.skip(
            f"Redis at {url} is not reachable ({exc}); start it with ../shared/services.sh "
            "or point RECOVERLY_TEST_REDIS_URL at a server"
        )
    prefix = f"test:docs:{uuid.uuid4().hex[:12]}"

    def cleanup() -> None:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
        client.close()

    env.cleanups.append(cleanup)
    return RedisTaskStore(client, prefix=prefix)


@standin("celery/process-data")
def _process_data(env: DocEnv) -> dict[str, Any]:
    load_data = Dependency({"rows": [1, 2, 3]}, failures=3)
    saved: list[tuple[int, int]] = []

    def process(data: dict[str, list[int]]) -> int:
        return sum(data["rows"])

    def save_result(data_id: int, result: int) -> None:
        saved.append((data_id, result))

    env.extra.update(load_data=load_data, saved=saved)
    return {
        "celery_app": _eager_celery_app(),
        "store": celery_task_store(env),
        "load_data": load_data,
        "process": process,
        "save_result": save_result,
    }


@standin("celery/base-class")
def _refresh_features(env: DocEnv) -> dict[str, Any]:
    fetch = Dependency({"features": [0.5, 1.5]}, failures=1)
    env.extra["fetch"] = fetch
    return {
        "celery_app": _eager_celery_app(),
        "store": celery_task_store(env),
        "fetch_features": fetch,
    }


class _ModelTrainer:
    """A trainer whose weights count the epochs it trained; epoch 3 fails once."""

    def __init__(self, config: dict[str, Any], log: list[int]) -> None:
        self.config = config
        self.weights = 0.0
        self.log = log

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.log.append(epoch)
        if epoch == 3 and self.log.count(3) == 1:
            msg = "parameter server unreachable"
            raise ConnectionError(msg)
        self.weights += 1.0
        return {"score": 0.5 + epoch / 10, "loss": 1.0 / (epoch + 1)}

    def get_state(self) -> dict[str, float]:
        return {"weights": self.weights}

    def load_state(self, state: dict[str, float]) -> None:
        self.weights = state["weights"]


@standin("celery/train-model")
def _train_model(env: DocEnv) -> dict[str, Any]:
    epochs: list[int] = []
    progress: list[tuple[int, int]] = []
    finals: list[tuple[int, Any, float]] = []

    def model_trainer(config: dict[str, Any]) -> _ModelTrainer:
        return _ModelTrainer(config, epochs)

    def update_progress(model_run_id: int, epoch: int, metrics: dict[str, float]) -> None:
        progress.append((model_run_id, epoch))

    def save_final_model(model_run_id: int, model_state: Any, score: float) -> None:
        finals.append((model_run_id, model_state, score))

    root = env.tmp_path / "checkpoints"
    env.extra.update(epochs=epochs, progress=progress, finals=finals, root=root)
    return {
        "celery_app": _eager_celery_app(),
        "store": celery_task_store(env),
        "CHECKPOINT_ROOT": root,
        "ModelTrainer": model_trainer,
        "update_progress": update_progress,
        "save_final_model": save_final_model,
    }


@standin("celery/process-batch")
def _process_batch(env: DocEnv) -> dict[str, Any]:
    saved: list[tuple[int, int]] = []

    def complex_processing(item: int) -> int:
        if item == 4:
            msg = f"item {item} is malformed"
            raise ValueError(msg)
        return item * 10

    def save_result(item_id: int, result: int) -> None:
        saved.append((item_id, result))

    env.extra["saved"] = saved
    return {
        "celery_app": _eager_celery_app(),
        "store": celery_task_store(env),
        "load_item": lambda item_id: item_id,
        "complex_processing": complex_processing,
        "save_result": save_result,
    }
