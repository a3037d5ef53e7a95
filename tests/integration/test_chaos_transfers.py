"""run_transaction under real faults on PostgreSQL: killed backends, 40001 and 40P01.

The chaos run moves money between accounts from several threads at SERIALIZABLE
while a killer thread terminates this test's backends at random. Every transfer
carries a ``transfer_id`` that is the primary key of the ``transfers`` table, and
the unit of work first looks it up and does nothing if it is there. So:

* a retry after an ordinary failure re-runs a unit that was rolled back;
* a retry after a lost COMMIT is decided by ``commit_check`` (the transfer_id
  is, or is not, in ``transfers``); a check that cannot answer raises
  ``CommitOutcomeUnknown``, and the worker resubmits the same transfer_id,
  whose lookup makes the resubmission a no-op when the first one committed;
* a second application would violate the primary key inside the same
  transaction as the balance updates, so it cannot commit.

Each transfer is therefore applied exactly once, which the test checks against
the accounts afterwards.
"""

from __future__ import annotations

import random
import selectors
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import text  # noqa: E402 - after the importorskip
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from db_servers import (  # noqa: E402
    TransferLedger,
    kill_random_backends,
    read_books,
    run_with_killer,
)
from recoverly import events as ev  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.db._classify import FailureKind, classify  # noqa: E402
from recoverly.db.errors import CommitOutcomeUnknown  # noqa: E402
from recoverly.db.transaction import run_transaction  # noqa: E402
from recoverly.events import RetryScheduled  # noqa: E402

pytestmark = pytest.mark.integration

ACCOUNTS, START, WORKERS, TRANSFERS = 20, 1000, 6, 40


class Figures:
    """Thread-safe counters of the chaos run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def on_retry(self, event: RetryScheduled) -> None:
        if event.name == "transfer" and event.exception is not None:
            self.add("retries")
            self.add(classify(event.exception).kind.value)


def _engine(pg_url: str) -> Any:
    """An engine whose sessions detect deadlocks after 50 ms instead of 1 s."""
    url = sa.engine.make_url(pg_url)
    options = f"{url.query['options']} -cdeadlock_timeout=50ms"
    return sa.create_engine(
        url.update_query_dict({"options": options}), pool_size=WORKERS + 2, max_overflow=4
    )


def _transfer_unit(tid: str, src: int, dst: int, amount: int) -> Any:
    def transfer(session: Session) -> str:
        seen = session.execute(
            text("SELECT 1 FROM transfers WHERE transfer_id = :t"), {"t": tid}
        ).first()
        if seen is not None:
            return "already"
        # Read both balances first: SSI read/write conflicts between overlapping transfers.
        session.execute(
            text("SELECT sum(balance) FROM accounts WHERE id IN (:s, :d)"), {"s": src, "d": dst}
        )
        session.execute(
            text("INSERT INTO transfers VALUES (:t, :s, :d, :a)"),
            {"t": tid, "s": src, "d": dst, "a": amount},
        )
        for account, delta in ((src, -amount), (dst, amount)):  # no lock ordering: deadlocks
            session.execute(
                text("UPDATE accounts SET balance = balance + :x WHERE id = :i"),
                {"x": delta, "i": account},
            )
        return "applied"

    return transfer


def _killer(pg_admin: Any, app: str, stop: threading.Event, figures: Figures) -> None:
    """Terminate a random backend of THIS test (application_name = its schema) every 20-80 ms."""
    kill_random_backends(
        pg_admin, app, stop, lambda: figures.add("killed"), seed=7, pause=(0.02, 0.08)
    )


@pytest.mark.realtime
def test_chaos_transfers_apply_exactly_once(pg_url, pg_admin, record_property):
    """Under kills, 40001 and deadlocks, money is conserved and each transfer lands once."""
    engine = _engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)"))
        conn.execute(
            text(
                "CREATE TABLE transfers (transfer_id text PRIMARY KEY, src int NOT NULL, "
                "dst int NOT NULL, amount int NOT NULL)"
            )
        )
        conn.execute(
            text("INSERT INTO accounts SELECT g, :b FROM generate_series(0, :n - 1) g"),
            {"b": START, "n": ACCOUNTS},
        )
    figures = Figures()
    ev.subscribe(figures.on_retry, RetryScheduled)
    factory = sessionmaker(engine)
    clock = SystemClock()
    ledger = TransferLedger(ACCOUNTS)

    def worker(w: int) -> None:
        rng = random.Random(w)
        for i in range(TRANSFERS):
            tid, src, dst, amount = ledger.draw(rng, w, i)

            def committed(session: Session, tid: str = tid) -> bool:
                found = session.execute(
                    text("SELECT 1 FROM transfers WHERE transfer_id = :t"), {"t": tid}
                ).first()
                figures.add("lost_commit_resolved_committed" if found else "lost_commit_retried")
                return found is not None

            while True:
                try:
                    outcome = run_transaction(
                        factory,
                        _transfer_unit(tid, src, dst, amount),
                        isolation_level="SERIALIZABLE",
                        commit_check=committed,
                        max_attempts=200,
                        delay=0.002,
                        max_delay=0.05,
                        deadline=30,
                        name="transfer",
                        clock=clock,
                    )
                    break
                except CommitOutcomeUnknown:
                    figures.add("commit_outcome_unknown")  # resubmit the same transfer_id
            figures.add(f"outcome_{outcome}")

    app = sa.engine.make_url(pg_url).query["application_name"]
    run_with_killer(worker, WORKERS, lambda stop: _killer(pg_admin, app, stop, figures))
    balances, rows = read_books(engine)
    applied = {tid: (src, dst, amount) for tid, src, dst, amount in rows}
    expected = ledger.expected(applied, START)
    c = figures.counts
    report = {
        "transfers": len(ledger.moves),
        "committed": c["outcome_applied"] + c["outcome_already"],
        "killed": c["killed"],
        "retries": c["retries"],
        "connection_lost": c[FailureKind.CONNECTION_LOST.value],
        "serialization_failures": c[FailureKind.SERIALIZATION.value],
        "deadlocks": c[FailureKind.DEADLOCK.value],
        "lost_commits_resolved_committed": c["lost_commit_resolved_committed"],
        "lost_commits_retried": c["lost_commit_retried"],
        "commit_outcome_unknown": c["commit_outcome_unknown"],
        "resubmitted_found_applied": c["outcome_already"],
        "lost": len(ledger.moves.keys() - applied.keys()),
        "duplicated": len(rows) - len(applied) + len(applied.keys() - ledger.moves.keys()),
    }
    print("\nchaos transfers:", ", ".join(f"{k}={v}" for k, v in report.items()))  # noqa: T201
    for key, value in report.items():
        record_property(key, value)

    assert sum(balances.values()) == ACCOUNTS * START
    assert applied == ledger.moves  # every transfer once, with its own accounts and amount
    assert balances == expected  # and its effect applied exactly once
    assert (report["lost"], report["duplicated"]) == (0, 0)
    assert report["committed"] == WORKERS * TRANSFERS
    assert report["killed"] > 0
    assert report["connection_lost"] > 0
    assert report["serialization_failures"] + report["deadlocks"] > 0


# ------------------------------------------------------------------ deterministic faults
@pytest.fixture
def oncall(pg_engine: Any) -> Any:
    with pg_engine.begin() as conn:
        conn.execute(text("CREATE TABLE oncall (id int PRIMARY KEY, on_duty bool, n int)"))
        conn.execute(text("INSERT INTO oncall VALUES (1, true, 0), (2, true, 0)"))
    return pg_engine


def test_serialization_failure_at_commit_retries_the_whole_unit(oncall, events):
    """Write skew at SERIALIZABLE: 40001 surfaces at COMMIT and the whole unit runs again."""
    other = oncall.connect().execution_options(isolation_level="SERIALIZABLE")
    other.begin()
    other.execute(text("SELECT count(*) FROM oncall WHERE on_duty")).scalar()
    returned = []

    def go_off_duty(session: Session) -> str:
        on_duty = session.execute(text("SELECT count(*) FROM oncall WHERE on_duty")).scalar()
        if on_duty == 2:
            session.execute(text("UPDATE oncall SET on_duty = false WHERE id = 2"))
            if not returned:  # the other doctor goes off duty too, and commits first
                other.execute(text("UPDATE oncall SET on_duty = false WHERE id = 1"))
                other.commit()
        returned.append(on_duty)
        return "off" if on_duty == 2 else "stays"

    try:
        result = run_transaction(oncall, go_off_duty, isolation_level="SERIALIZABLE")
    finally:
        other.close()
    assert returned == [2, 1]  # attempt 1 ran to the end: its failure came at COMMIT
    assert result == "stays"
    (retry,) = [e for e in events if isinstance(e, RetryScheduled)]
    assert retry.exception.orig.sqlstate == "40001"
    with oncall.connect() as conn:
        assert conn.execute(text("SELECT id FROM oncall WHERE on_duty")).scalars().all() == [2]


def _wait_until_waiting_on_a_lock(pg_admin: Any, pid: int) -> None:
    with pg_admin.connect() as conn:
        for _ in range(500):
            waiting = conn.execute(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                {"p": pid},
            ).scalar()
            if waiting:
                return
            conn.execute(text("SELECT pg_sleep(0.01)"))
    pytest.fail(f"backend {pid} never waited on a lock")


@pytest.mark.realtime
def test_deadlock_victim_is_retried_as_a_whole(oncall, pg_admin, events):
    """A real deadlock (40P01) picks this unit as the victim; it is rolled back and re-run."""
    we_hold_row_1 = threading.Event()
    other_pid: list[int] = []

    def other() -> None:
        with oncall.begin() as conn:
            conn.execute(text("SET LOCAL deadlock_timeout = '10s'"))
            other_pid.append(conn.execute(text("SELECT pg_backend_pid()")).scalar())
            we_hold_row_1.wait(10)
            conn.execute(text("UPDATE oncall SET n = n + 10 WHERE id = 2"))
            conn.execute(text("UPDATE oncall SET n = n + 10 WHERE id = 1"))  # waits for us

    thread = threading.Thread(target=other)
    attempts = []

    def both_rows(session: Session) -> None:
        attempts.append(1)
        session.execute(text("SET LOCAL deadlock_timeout = '20ms'"))  # we detect it first
        session.execute(text("UPDATE oncall SET n = n + 1 WHERE id = 1"))
        if len(attempts) == 1:
            thread.start()
            we_hold_row_1.set()
            _wait_until_waiting_on_a_lock(pg_admin, _first(other_pid))
        session.execute(text("UPDATE oncall SET n = n + 1 WHERE id = 2"))

    run_transaction(oncall, both_rows)
    thread.join(10)
    assert len(attempts) == 2
    (retry,) = [e for e in events if isinstance(e, RetryScheduled)]
    assert retry.exception.orig.sqlstate == "40P01"
    with oncall.connect() as conn:
        assert conn.execute(text("SELECT n FROM oncall ORDER BY id")).scalars().all() == [11, 11]


def _first(values: list[int]) -> int:
    """Wait (briefly, on the list being filled by another thread) for its first value."""
    done = threading.Event()
    for _ in range(500):
        if values:
            return values[0]
        done.wait(0.01)
    pytest.fail("the other transaction never started")


# ------------------------------------------------------------------ a COMMIT whose reply is lost
_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # simple-query COMMIT, as psycopg sends it
_READY = b"Z\x00\x00\x00\x05"  # ReadyForQuery: the server finished the command


class CommitReplyDropper:
    """A TCP proxy to PostgreSQL that, when armed, lets one COMMIT through and drops its reply.

    The server really commits; the client sees its connection close with COMMIT
    in flight: the lost-commit case, produced on the wire.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.armed = threading.Event()
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in sel.select():
                    src = key.fileobj
                    data = src.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if src is client and _COMMIT in data and self.armed.is_set():
                        self.armed.clear()
                        server.sendall(data)
                        reply = b""
                        while _READY not in reply:  # wait until the server has committed
                            reply += server.recv(65536)
                        self.dropped += 1
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            server.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


@pytest.fixture
def dropper_engine(pg_url: str, pg_engine: Any) -> Iterator[tuple[Any, CommitReplyDropper]]:
    with pg_engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY)"))
    url = sa.engine.make_url(pg_url)
    proxy = CommitReplyDropper(url.host or "127.0.0.1", url.port or 5432)
    engine = sa.create_engine(
        url.set(host="127.0.0.1", port=proxy.port).update_query_dict(
            {"sslmode": "disable", "gssencmode": "disable"}
        )
    )
    yield engine, proxy
    engine.dispose()
    proxy.close()


def test_commit_whose_reply_is_lost_is_never_applied_twice(dropper_engine, pg_engine):
    """The COMMIT landed, its reply was lost: unknown, or the check / pg_xact_status tells."""
    engine, proxy = dropper_engine
    calls = []

    def add(n: int) -> Any:
        def unit(session: Session) -> int:
            calls.append(n)
            session.execute(text("INSERT INTO items VALUES (:n)"), {"n": n})
            return n

        return unit

    def committed(session: Session) -> bool:
        return session.execute(text("SELECT count(*) FROM items WHERE id = 2")).scalar() == 1

    proxy.armed.set()
    with pytest.raises(CommitOutcomeUnknown) as info:
        run_transaction(engine, add(1), resolve_commits=False)
    assert info.value.__cause__.connection_invalidated
    proxy.armed.set()
    assert run_transaction(engine, add(2), commit_check=committed) == 2
    proxy.armed.set()
    assert run_transaction(engine, add(3)) == 3  # resolved by pg_xact_status
    assert (calls, proxy.dropped) == ([1, 2, 3], 3)  # no unit ran twice
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM items ORDER BY id")).scalars().all() == [1, 2, 3]
