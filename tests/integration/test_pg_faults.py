"""Real PostgreSQL faults: backends killed before, during and after statements, and during COMMIT.

Only backends opened by the test itself are ever terminated (by pid).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy.orm import Session  # noqa: E402

from recoverly.db._classify import FailureKind, classify  # noqa: E402
from recoverly.db.errors import CommitOutcomeUnknown  # noqa: E402
from recoverly.db.retry import db_retry, ensure_connection  # noqa: E402

pytestmark = pytest.mark.integration

SLOW_TRIGGER = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('app.slow_commit', true) = 'on' THEN PERFORM pg_sleep(10); END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON items
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


_watchers: list[threading.Thread] = []


@pytest.fixture(autouse=True)
def _join_watchers(pg_admin: Any) -> Iterator[None]:
    """Let every killer thread finish (and return its admin connection) before pg_admin closes."""
    assert pg_admin is not None
    yield
    while _watchers:
        _watchers.pop().join(10)


@pytest.fixture
def engine(pg_engine: Any) -> Any:
    """The test's engine with a table ``items(id serial, v text)``."""
    with pg_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id serial PRIMARY KEY, v text NOT NULL)"))
    return pg_engine


def rows(engine: Any) -> list[str]:
    """Return the ``v`` column of every row, in insertion order."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT v FROM items ORDER BY id")).scalars())


def pid_of(db: Any) -> int:
    """Return the backend pid of ``db``'s connection."""
    return int(db.execute(sa.text("SELECT pg_backend_pid()")).scalar())


def kill_when(
    pg_admin: Any, pg_kill: Callable[[int], bool], pid: int, like: str
) -> threading.Thread:
    """Start a thread that kills ``pid`` once pg_stat_activity shows it running ``like``."""

    def watch() -> None:
        with pg_admin.connect() as conn:
            for _ in range(1000):
                seen = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = :p "
                        "AND state = 'active' AND query LIKE :q"
                    ),
                    {"p": pid, "q": like},
                ).scalar()
                if seen:
                    break
                time.sleep(0.005)
        pg_kill(pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    _watchers.append(thread)
    return thread


# ---------------------------------------------------------------- before a statement
def test_ensure_connection_alone_recovers_a_pooled_connection_killed_before_the_call(
    engine: Any, pg_kill: Callable[[int], bool]
) -> None:
    """A pooled connection killed while idle is replaced by ensure_connection, no retry needed."""
    with engine.connect() as conn:
        dead = pid_of(conn)
    pg_kill(dead)  # the connection is back in the pool, its backend gone

    @ensure_connection
    def add(db: Session, v: str) -> int:
        pid = pid_of(db)
        db.execute(sa.text("INSERT INTO items (v) VALUES (:v)"), {"v": v})
        db.commit()
        return pid

    with Session(engine) as s:
        pid = add(s, "a")
    assert pid != dead
    assert rows(engine) == ["a"]


def test_without_ensure_connection_the_killed_pooled_connection_fails(
    engine: Any, pg_kill: Callable[[int], bool]
) -> None:
    """The control case: the same call without ensure_connection fails on the dead connection."""
    with engine.connect() as conn:
        dead = pid_of(conn)
    pg_kill(dead)
    with Session(engine) as s, pytest.raises(sa.exc.OperationalError) as info:
        s.execute(sa.text("SELECT 1"))
    assert classify(info.value).kind is FailureKind.CONNECTION_LOST


def test_db_retry_alone_recovers_a_connection_killed_before_the_call(
    engine: Any, pg_kill: Callable[[int], bool], recoverly_clock: Any
) -> None:
    """db_retry rolls back after the dead connection fails, and the retry writes the row once."""

    @db_retry(max_attempts=3, delay=0.5)
    def add(db: Session, v: str) -> None:
        db.execute(sa.text("INSERT INTO items (v) VALUES (:v)"), {"v": v})
        db.commit()

    with Session(engine) as s:
        dead = pid_of(s)
        s.rollback()  # the session's transaction ended; its connection went back to the pool
        pg_kill(dead)
        add(s, "a")
    assert rows(engine) == ["a"]
    assert recoverly_clock.sleeps == [0.5]


# ---------------------------------------------------------------- during a statement
def test_kill_during_a_statement_is_retried_and_the_write_lands_whole_once(
    engine: Any, pg_admin: Any, pg_kill: Callable[[int], bool]
) -> None:
    """A backend killed inside pg_sleep between two inserts: nothing half-written, then once."""
    attempts: list[int] = []

    @ensure_connection
    @db_retry(max_attempts=3, delay=0.1)
    def two_rows(db: Session) -> None:
        pid = pid_of(db)
        attempts.append(pid)
        db.execute(sa.text("INSERT INTO items (v) VALUES ('first')"))
        if len(attempts) == 1:
            kill_when(pg_admin, pg_kill, pid, "SELECT pg_sleep%")
            db.execute(sa.text("SELECT pg_sleep(10)"))
        db.execute(sa.text("INSERT INTO items (v) VALUES ('second')"))
        db.commit()

    with Session(engine) as s:
        two_rows(s)
    assert len(attempts) == 2
    assert attempts[0] != attempts[1]
    assert rows(engine) == ["first", "second"]


# ---------------------------------------------------------------- after statements
def test_kill_after_statements_before_commit_rolls_back_and_lands_exactly_once(
    engine: Any, pg_kill: Callable[[int], bool]
) -> None:
    """Killed after two inserts, before COMMIT: the transaction is gone, the retry lands once."""
    attempts: list[int] = []

    @db_retry(max_attempts=3, delay=0.1)
    def two_rows(db: Session) -> None:
        pid = pid_of(db)
        attempts.append(pid)
        db.execute(sa.text("INSERT INTO items (v) VALUES ('first'), ('second')"))
        if len(attempts) == 1:
            pg_kill(pid)
        db.execute(sa.text("SELECT count(*) FROM items"))
        db.commit()

    with Session(engine) as s:
        two_rows(s)
    assert len(attempts) == 2
    assert rows(engine) == ["first", "second"]


# ---------------------------------------------------------------- during COMMIT
@pytest.fixture
def slow_commit_engine(engine: Any) -> Any:
    """The engine, with a deferred trigger that sleeps at COMMIT when app.slow_commit is on."""
    with engine.begin() as conn:
        conn.exec_driver_sql(SLOW_TRIGGER)
    return engine


def committing_writer(
    pg_admin: Any, pg_kill: Callable[[int], bool], attempts: list[int]
) -> Callable[[Session, str], None]:
    """Return ``write(db, v)``: insert ``v`` and commit; the first COMMIT is killed mid-way."""

    def write(db: Session, v: str) -> None:
        pid = pid_of(db)
        attempts.append(pid)
        db.execute(sa.text("INSERT INTO items (v) VALUES (:v)"), {"v": v})
        if len(attempts) == 1:
            db.execute(sa.text("SET LOCAL app.slow_commit = 'on'"))
            kill_when(pg_admin, pg_kill, pid, "COMMIT%")
        db.commit()

    return write


def test_kill_during_commit_raises_commit_outcome_unknown_and_never_duplicates(
    slow_commit_engine: Any, pg_admin: Any, pg_kill: Callable[[int], bool]
) -> None:
    """COMMIT killed while it runs: CommitOutcomeUnknown from the driver error, no re-run."""
    attempts: list[int] = []
    write = db_retry(max_attempts=3, delay=0.1)(committing_writer(pg_admin, pg_kill, attempts))
    with Session(slow_commit_engine) as s, pytest.raises(CommitOutcomeUnknown) as info:
        write(s, "a")
    assert isinstance(info.value.__cause__, sa.exc.OperationalError)
    assert len(attempts) == 1
    assert rows(slow_commit_engine) in ([], ["a"])


def test_kill_during_commit_with_an_idempotency_check_reruns_only_when_not_committed(
    slow_commit_engine: Any, pg_admin: Any, pg_kill: Callable[[int], bool]
) -> None:
    """The check looks for the row after the rollback; it is absent, so the write runs again."""
    attempts: list[int] = []
    checks: list[bool] = []

    def landed(db: Session, v: str) -> bool:
        found = bool(
            db.execute(sa.text("SELECT count(*) FROM items WHERE v = :v"), {"v": v}).scalar()
        )
        checks.append(found)
        return found

    write = db_retry(max_attempts=3, delay=0.1, idempotency_check=landed)(
        committing_writer(pg_admin, pg_kill, attempts)
    )
    with Session(slow_commit_engine) as s:
        write(s, "a")
    assert checks == [False]
    assert len(attempts) == 2
    assert rows(slow_commit_engine) == ["a"]


def test_kill_during_commit_of_an_idempotent_call_reruns_it(
    slow_commit_engine: Any, pg_admin: Any, pg_kill: Callable[[int], bool]
) -> None:
    """idempotent=True: the call simply runs again after the lost commit."""
    attempts: list[int] = []
    write = db_retry(max_attempts=3, delay=0.1, idempotent=True)(
        committing_writer(pg_admin, pg_kill, attempts)
    )
    with Session(slow_commit_engine) as s:
        write(s, "a")
    assert len(attempts) == 2
    assert rows(slow_commit_engine) == ["a"]


# ---------------------------------------------------------------- COMMIT acknowledgement lost
class CommitDroppingProxy:
    """A TCP proxy to PostgreSQL that lets the first COMMIT through but drops its answer."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = threading.Event()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            muted = threading.Event()  # set: this pair's answers go nowhere
            for args in ((client, server, muted, True), (server, client, muted, False)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        muted: threading.Event,
        upstream: bool,
    ) -> None:
        try:
            while data := src.recv(65536):
                commit = upstream and b"COMMIT\x00" in data and not self.dropped.is_set()
                if commit:
                    self.dropped.set()
                    muted.set()
                if upstream or not muted.is_set():
                    dst.sendall(data)
                if commit:
                    time.sleep(0.3)  # the server commits; its answer is dropped
                    return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def close(self) -> None:
        """Stop accepting connections."""
        self.closing = True
        self.listener.close()


@pytest.fixture
def proxied_engine(engine: Any, pg_url: str) -> Iterator[Any]:
    """An engine on the test's schema whose first COMMIT loses its acknowledgement."""
    parts = urlsplit(pg_url)
    proxy = CommitDroppingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
    url = urlunsplit(parts._replace(netloc=netloc)) + "&sslmode=disable"
    proxied = sa.create_engine(url)
    yield proxied
    proxied.dispose()
    proxy.close()


def test_commit_acknowledgement_lost_raises_commit_outcome_unknown_while_the_row_committed(
    proxied_engine: Any, engine: Any
) -> None:
    """The server committed but the client never heard: no re-run, and exactly one row."""
    calls: list[str] = []

    @db_retry(max_attempts=3, delay=0.1)
    def write(db: Session, v: str) -> None:
        calls.append(v)
        db.execute(sa.text("INSERT INTO items (v) VALUES (:v)"), {"v": v})
        db.commit()

    with Session(proxied_engine) as s, pytest.raises(CommitOutcomeUnknown):
        write(s, "a")
    assert calls == ["a"]
    assert rows(engine) == ["a"]


def test_commit_acknowledgement_lost_with_an_idempotency_check_returns_what_it_found(
    proxied_engine: Any, engine: Any
) -> None:
    """The check finds the committed row; the call returns it and does not insert again."""
    calls: list[str] = []

    def existing_id(db: Session, v: str) -> int | None:
        return db.execute(sa.text("SELECT id FROM items WHERE v = :v"), {"v": v}).scalar()

    @db_retry(max_attempts=3, delay=0.1, idempotency_check=existing_id)
    def write(db: Session, v: str) -> int:
        calls.append(v)
        new_id = db.execute(
            sa.text("INSERT INTO items (v) VALUES (:v) RETURNING id"), {"v": v}
        ).scalar_one()
        db.commit()
        return int(new_id)

    with Session(proxied_engine) as s:
        found = write(s, "a")
    assert calls == ["a"]
    assert rows(engine) == ["a"]
    with engine.connect() as conn:
        assert found == conn.execute(sa.text("SELECT id FROM items")).scalar()
