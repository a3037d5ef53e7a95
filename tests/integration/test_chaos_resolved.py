"""Chaos transfers with lost COMMITs resolved by the database itself, not by the application.

Unlike ``test_chaos_transfers``, the unit of work here has no idempotency check
and the ``transfers`` table has no unique key: a transfer applied twice would
simply appear twice. Exactly-once rests on run_transaction alone:

* PostgreSQL: the transaction id read before COMMIT and ``pg_xact_status``;
* MariaDB: ``commit_marker=True`` (a token row, looked up once the old server
  session has left the process list).

Faults, all real: a killer thread terminates random sessions of the test
(``pg_terminate_backend`` / ``KILL CONNECTION``) at random moments; and at
COMMIT, some sessions are killed just before the COMMIT is sent (it cannot
land) and some have their socket closed right after the server committed
(it landed, the answer is lost). Deadlocks and serialization failures come
from the workload itself.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import event, text  # noqa: E402 - after the importorskip
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from db_servers import (  # noqa: E402
    TransferLedger,
    kill_random_backends,
    read_books,
    run_with_killer,
)
from recoverly import events as ev  # noqa: E402
from recoverly._core.clock import SystemClock  # noqa: E402
from recoverly.db.errors import CommitOutcomeUnknown  # noqa: E402
from recoverly.db.transaction import run_transaction  # noqa: E402
from recoverly.events import CommitResolved, RetryScheduled  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.realtime]

ACCOUNTS, START, WORKERS, TRANSFERS = 12, 1000, 4, 30


class Chaos:
    """The faults of one run and their counts."""

    def __init__(self, engine: Any, kill: Callable[[int], None], session_id: str) -> None:
        self.engine = engine
        self.kill = kill
        self.session_id = session_id  # SQL returning the current server session id
        self.rng = random.Random(11)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def on_event(self, event: Any) -> None:
        if isinstance(event, CommitResolved):
            self.add(f"resolved_{event.verdict}")
        elif isinstance(event, RetryScheduled) and event.name == "transfer":
            self.add("retries")

    def at_commit(self, conn: Any) -> None:
        """Listener for the engine's commit event: sometimes break this COMMIT."""
        with self.lock:
            roll = self.rng.random()
        if roll < 0.08:  # killed before COMMIT: it cannot land
            self.kill(int(conn.exec_driver_sql(self.session_id).scalar()))
            self.add("killed_before_commit")
        elif roll < 0.16:  # COMMIT lands, the answer is lost
            raw = conn.connection.dbapi_connection
            raw.commit()
            raw.close()
            self.add("dropped_after_commit")


def _schema(engine: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)"))
        conn.execute(
            text(
                "CREATE TABLE transfers (transfer_id varchar(20) NOT NULL, src int NOT NULL, "
                "dst int NOT NULL, amount int NOT NULL)"
            )
        )
        conn.execute(
            text("INSERT INTO accounts (id, balance) VALUES (:i, :b)"),
            [{"i": i, "b": START} for i in range(ACCOUNTS)],
        )


def _transfer(tid: str, src: int, dst: int, amount: int) -> Callable[[Session], str]:
    def transfer(session: Session) -> str:
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


def _run(
    engine: Any,
    chaos: Chaos,
    killer: Callable[[threading.Event], None],
    **options: Any,
) -> dict[str, int]:
    """Run the workload under chaos; return the figures after checking the books."""
    _schema(engine)
    ev.subscribe(chaos.on_event, (CommitResolved, RetryScheduled))
    event.listen(engine, "commit", chaos.at_commit)
    factory = sessionmaker(engine)
    clock = SystemClock()
    ledger = TransferLedger(ACCOUNTS)

    def worker(w: int) -> None:
        rng = random.Random(w)
        for i in range(TRANSFERS):
            tid, src, dst, amount = ledger.draw(rng, w, i)
            try:
                run_transaction(
                    factory,
                    _transfer(tid, src, dst, amount),
                    max_attempts=200,
                    delay=0.002,
                    max_delay=0.05,
                    deadline=60,
                    name="transfer",
                    clock=clock,
                    **options,
                )
                chaos.add("committed")
            except CommitOutcomeUnknown:
                chaos.add("commit_outcome_unknown")  # not resubmitted: it would hide the count

    try:
        run_with_killer(worker, WORKERS, killer)
    finally:
        event.remove(engine, "commit", chaos.at_commit)
    balances, rows = read_books(engine)
    applied = Counter(tid for tid, *_ in rows)
    expected = ledger.expected(applied, START)
    c = chaos.counts
    figures = {
        "transfers": len(ledger.moves),
        "committed": c["committed"],
        "random_kills": c["random_kills"],
        "killed_before_commit": c["killed_before_commit"],
        "dropped_after_commit": c["dropped_after_commit"],
        "resolved_committed": c["resolved_committed"],
        "resolved_aborted": c["resolved_aborted"],
        "resolved_unknown": c["resolved_unknown"],
        "retries": c["retries"],
        "commit_outcome_unknown": c["commit_outcome_unknown"],
        "lost": len(ledger.moves.keys() - applied.keys()),
        "duplicated": sum(n - 1 for n in applied.values()),
    }
    assert sum(balances.values()) == ACCOUNTS * START
    assert balances == expected
    return figures


def _check(figures: dict[str, int], label: str) -> None:
    print(f"\nchaos ({label}):", ", ".join(f"{k}={v}" for k, v in figures.items()))  # noqa: T201
    assert (figures["lost"], figures["duplicated"], figures["commit_outcome_unknown"]) == (0, 0, 0)
    assert figures["committed"] == WORKERS * TRANSFERS
    # both verdicts really happened, and every broken COMMIT was resolved
    assert figures["resolved_committed"] > 0
    assert figures["resolved_aborted"] > 0
    assert figures["resolved_unknown"] == 0


def test_postgresql_lost_commits_resolved_by_xact_status(pg_url, pg_admin, pg_kill):
    """PostgreSQL, automatic pg_xact_status: 0 lost, 0 duplicated, 0 outcome unknown."""
    engine = sa.create_engine(pg_url, pool_size=WORKERS + 2)
    app = sa.engine.make_url(pg_url).query["application_name"]
    chaos = Chaos(engine, pg_kill, "SELECT pg_backend_pid()")

    def killer(stop: threading.Event) -> None:
        kill_random_backends(
            pg_admin, app, stop, lambda: chaos.add("random_kills"), seed=3, pause=(0.03, 0.1)
        )

    figures = _run(engine, chaos, killer, isolation_level="SERIALIZABLE")
    _check(figures, "PostgreSQL, pg_xact_status")


def test_mariadb_lost_commits_resolved_by_commit_markers(mysql_url):
    """MariaDB, commit_marker=True: 0 lost, 0 duplicated, 0 outcome unknown."""
    engine = sa.create_engine(mysql_url, pool_size=WORKERS + 2)
    admin = sa.create_engine(mysql_url, isolation_level="AUTOCOMMIT")
    database = sa.engine.make_url(mysql_url).database

    def kill(server_id: int) -> None:
        with admin.connect() as conn:
            try:
                conn.exec_driver_sql(f"KILL CONNECTION {int(server_id)}")
            except sa.exc.OperationalError:  # the random killer was first
                return
            for _ in range(500):  # wait until it is gone
                if not conn.execute(
                    text("SELECT count(*) FROM information_schema.processlist WHERE id = :i"),
                    {"i": server_id},
                ).scalar():
                    break

    chaos = Chaos(engine, kill, "SELECT CONNECTION_ID()")

    def killer(stop: threading.Event) -> None:
        rng = random.Random(3)
        with admin.connect() as conn:
            while not stop.wait(rng.uniform(0.03, 0.1)):
                ids = (
                    conn.execute(
                        text(
                            "SELECT id FROM information_schema.processlist "
                            "WHERE db = :db AND id <> CONNECTION_ID()"
                        ),
                        {"db": database},
                    )
                    .scalars()
                    .all()
                )
                if ids:
                    try:
                        conn.exec_driver_sql(f"KILL CONNECTION {int(rng.choice(ids))}")
                        chaos.add("random_kills")
                    except sa.exc.OperationalError:  # it ended by itself meanwhile
                        pass

    try:
        figures = _run(engine, chaos, killer, commit_marker=True)
    finally:
        admin.dispose()
    _check(figures, "MariaDB, commit markers")
