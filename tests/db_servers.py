"""Fixtures for tests that talk to real database servers (a pytest plugin module).

Servers are found through environment variables with loopback defaults:

- ``RECOVERLY_TEST_PG_URL``    (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
- ``RECOVERLY_TEST_MYSQL_URL`` (default ``mysql+pymysql://root@127.0.0.1:3306/test``)

A test whose server cannot be reached is skipped with a reason that says how to start it.
Each PostgreSQL/MySQL test gets its own schema/database so tests never see each other's tables.
SQLAlchemy is imported inside the fixtures, so this module loads without the ``db`` extra.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get(
    "RECOVERLY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("RECOVERLY_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
START_HINT = "start it with ../shared/services.sh or point {var} at a server"

_reachable: dict[str, str | None] = {}


def _check(url: str, var: str) -> None:
    """Skip the test (with the reason) when the server at ``url`` does not answer."""
    sa = pytest.importorskip("sqlalchemy", reason="recoverly.db tests need the db extra")
    if url not in _reachable:
        try:
            engine = sa.create_engine(url, connect_args=_timeout_args(url))
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            engine.dispose()
            _reachable[url] = None
        except Exception as exc:
            _reachable[url] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    problem = _reachable[url]
    if problem is not None:
        pytest.skip(
            f"database at {url} is not reachable ({problem}); " + START_HINT.format(var=var)
        )


def _timeout_args(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_timeout": 3}
    if url.startswith("mysql"):
        return {"connect_timeout": 3}
    return {}


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL schema for this test (dropped afterwards).

    The schema is the connection's ``search_path``, so plain table names land in it.
    """
    _check(PG_URL, "RECOVERLY_TEST_PG_URL")
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    # application_name tags this test's connections so teardown can end stragglers.
    yield f"{PG_URL}{sep}application_name={schema}&options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND application_name = :app"
            ),
            {"app": schema},
        )
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Any]:
    """A SQLAlchemy engine on this test's PostgreSQL schema."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_admin() -> Iterator[Any]:
    """An AUTOCOMMIT engine for fault injection (terminating backends, inspecting locks)."""
    _check(PG_URL, "RECOVERLY_TEST_PG_URL")
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_kill(pg_admin: Any) -> Callable[[int], bool]:
    """Return ``kill(pid)``: ``pg_terminate_backend(pid)``, waiting until the backend is gone."""
    import sqlalchemy as sa

    def kill(pid: int) -> bool:
        with pg_admin.connect() as conn:
            done = bool(
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            )
            for _ in range(500):
                alive = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar()
                if not alive:
                    break
                conn.execute(sa.text("SELECT pg_sleep(0.01)"))
        return done

    return kill


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """URL of a fresh MariaDB/MySQL database for this test (dropped afterwards)."""
    _check(MYSQL_URL, "RECOVERLY_TEST_MYSQL_URL")
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    base, _, _ = MYSQL_URL.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE `{name}`"))
    admin.dispose()


@pytest.fixture
def mysql_engine(mysql_url: str) -> Iterator[Any]:
    """A SQLAlchemy engine on this test's MariaDB/MySQL database."""
    import sqlalchemy as sa

    engine = sa.create_engine(mysql_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a file-backed SQLite database in the test's temporary folder."""
    pytest.importorskip("sqlalchemy", reason="recoverly.db tests need the db extra")
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Any]:
    """A SQLAlchemy engine on a file-backed SQLite database."""
    import sqlalchemy as sa

    engine = sa.create_engine(sqlite_url)
    yield engine
    engine.dispose()


def kill_random_backends(
    pg_admin: Any,
    app: str,
    stop: Any,
    on_kill: Callable[[], None],
    *,
    seed: int,
    pause: tuple[float, float],
) -> None:
    """Until ``stop`` is set, terminate a random backend of one test (``application_name``).

    Sleeps a random ``pause`` between kills; calls ``on_kill()`` after each kill that landed.
    """
    import random

    import sqlalchemy as sa

    rng = random.Random(seed)
    others = sa.text(
        "SELECT pid FROM pg_stat_activity WHERE application_name = :app AND pid <> pg_backend_pid()"
    )
    with pg_admin.connect() as conn:
        while not stop.wait(rng.uniform(*pause)):
            pids = conn.execute(others, {"app": app}).scalars().all()
            if (
                pids
                and conn.execute(
                    sa.text("SELECT pg_terminate_backend(:p)"), {"p": rng.choice(pids)}
                ).scalar()
            ):
                on_kill()


class TransferLedger:
    """The transfers a chaos workload draws, by transfer id (thread-safe).

    Both chaos runs move money between ``accounts`` accounts and afterwards check
    the books against this ledger.
    """

    def __init__(self, accounts: int) -> None:
        import threading

        self.accounts = accounts
        self.moves: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def draw(self, rng: Any, worker: int, i: int) -> tuple[str, int, int, int]:
        """Draw transfer ``i`` of ``worker``: (id, source, destination, amount); record it."""
        tid = f"w{worker}-{i}"
        src, dst = rng.sample(range(self.accounts), 2)
        amount = rng.randint(1, 50)
        with self._lock:
            self.moves[tid] = (src, dst, amount)
        return tid, src, dst, amount

    def expected(self, applied: Any, start: int) -> dict[int, int]:
        """The balances after applying each of the ``applied`` transfer ids once."""
        balances = dict.fromkeys(range(self.accounts), start)
        for tid in applied:
            src, dst, amount = self.moves[tid]
            balances[src] -= amount
            balances[dst] += amount
        return balances


def run_with_killer(
    worker: Callable[[int], None], workers: int, killer: Callable[[Any], None]
) -> None:
    """Run ``worker(0..workers-1)`` in threads while ``killer(stop)`` runs until they end."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stop = threading.Event()
    thread = threading.Thread(target=killer, args=(stop,))
    thread.start()
    try:
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(worker, w) for w in range(workers)]:
                future.result()
    finally:
        stop.set()
        thread.join()


def read_books(engine: Any) -> tuple[dict[int, int], list[Any]]:
    """Balances by account and the transfer rows, read on fresh connections."""
    import sqlalchemy as sa

    engine.dispose()
    with engine.connect() as conn:
        balances = dict(conn.execute(sa.text("SELECT id, balance FROM accounts")).all())
        rows = conn.execute(sa.text("SELECT transfer_id, src, dst, amount FROM transfers")).all()
    engine.dispose()
    return balances, list(rows)
