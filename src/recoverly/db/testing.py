"""Real database faults on demand, for proving your own code is retry-safe.

::

    from recoverly.db.testing import Fault, inject_fault

    with inject_fault(engine, Fault.SERIALIZATION, at=2) as fault:
        run_transaction(SessionLocal, transfer)       # the 2nd statement fails with 40001
    assert fault.injected == 1

The faults come from the server, through the driver, as in production:

* ``SERIALIZATION`` (SQLSTATE 40001), ``DEADLOCK`` (40P01 / MySQL 1213) and
  ``LOCK_TIMEOUT`` (55P03 / MySQL 1205): the chosen statement is replaced by one
  that makes the server raise exactly that error (PostgreSQL ``RAISE ... USING
  ERRCODE``, MySQL/MariaDB ``SIGNAL``), so the driver's own exception class,
  SQLSTATE and error number reach your code through SQLAlchemy.
* ``DISCONNECT``: before the chosen statement, the session's server process is
  terminated (``pg_terminate_backend`` / ``KILL CONNECTION``) from a separate
  connection; the statement meets a dead connection.
* ``COMMIT_LOST_BEFORE``: at the chosen COMMIT, the server process is
  terminated first: nothing is committed and the COMMIT fails.
* ``COMMIT_LOST_AFTER``: at the chosen COMMIT, the server commits, then the
  client's connection is closed before the reply is read: the data is there
  and the COMMIT still fails, the case only a resolver can untangle.

Which statement or COMMIT: ``at=N`` picks the N-th (1-based, counted from
when the injector is installed; statements that only manage transactions,
``SAVEPOINT``/``RELEASE``/``ROLLBACK``, are not counted), or
``probability=p`` with ``seed=s`` picks at random, reproducibly, and ``times``
caps those injections (default 1, ``None`` for no cap); ``match``
restricts counting to statements containing that text. Supported on
PostgreSQL and MySQL/MariaDB.

A pytest fixture, ``db_faults``, installs injectors that are removed after
the test: add ``pytest_plugins = ["recoverly.db.testing"]`` to your
``conftest.py``, then ``db_faults(engine, "deadlock", at=1)``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any, final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from recoverly._core.validate import Problems

__all__ = ["Fault", "FaultInjector", "inject_fault"]


class Fault(str, enum.Enum):
    """The faults :class:`FaultInjector` can cause.

    .. versionadded:: 0.2
    """

    SERIALIZATION = "serialization"
    DEADLOCK = "deadlock"
    LOCK_TIMEOUT = "lock_timeout"
    DISCONNECT = "disconnect"
    COMMIT_LOST_BEFORE = "commit_lost_before"
    COMMIT_LOST_AFTER = "commit_lost_after"


_AT_COMMIT = (Fault.COMMIT_LOST_BEFORE, Fault.COMMIT_LOST_AFTER)
_PG_STATE = {Fault.SERIALIZATION: "40001", Fault.DEADLOCK: "40P01", Fault.LOCK_TIMEOUT: "55P03"}
# MySQL/MariaDB (SQLSTATE, errno): InnoDB reports serialization conflicts as deadlocks.
_MYSQL_ERROR = {
    Fault.SERIALIZATION: ("40001", 1213),
    Fault.DEADLOCK: ("40001", 1213),
    Fault.LOCK_TIMEOUT: ("HY000", 1205),
}
_CONTROL = ("SAVEPOINT", "RELEASE", "ROLLBACK")


@final
class FaultInjector:
    """Causes one kind of real fault on an engine's connections; see the module docs.

    Args:
        engine: The engine whose statements or COMMITs are hit.
        fault: A :class:`Fault` or its value (``"deadlock"``).
        at: Hit the N-th eligible statement (or COMMIT), 1-based.
        probability: Instead of ``at``: hit each one with this probability.
        seed: Seed of the random choice with ``probability``.
        times: With ``probability``: at most this many injections (``None``: no limit).
        match: Count only statements whose SQL contains this text.

    Raises:
        ValueError: A bad setting (all of them are listed), or a database
            other than PostgreSQL or MySQL/MariaDB.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_admin",
        "_lock",
        "_rng",
        "at",
        "dialect",
        "engine",
        "fault",
        "injected",
        "installed",
        "match",
        "probability",
        "seen",
        "times",
    )

    def __init__(
        self,
        engine: Engine,
        fault: Fault | str,
        *,
        at: int | None = None,
        probability: float | None = None,
        seed: int = 0,
        times: int | None = 1,
        match: str | None = None,
    ) -> None:
        p = Problems()
        try:
            self.fault = Fault(fault)
        except ValueError:
            p._bad(f"fault must be one of {[f.value for f in Fault]}, got {fault!r}")
        if (at is None) == (probability is None):
            p._bad(
                f"give exactly one of at= and probability=, got at={at!r}, "
                f"probability={probability!r}"
            )
        if at is not None:
            p.int_at_least("at", at, 1)
        chance: object = probability
        if chance is not None and not (isinstance(chance, int | float) and 0 < chance <= 1):
            p._bad(f"probability must be in (0, 1], got {probability!r}")
        if times is not None:
            p.int_at_least("times", times, 1)
        bind: object = engine
        name = engine.dialect.name if isinstance(bind, Engine) else None
        if name not in ("postgresql", "mysql", "mariadb"):
            p._bad(f"engine must be a PostgreSQL or MySQL/MariaDB Engine, got {engine!r}")
        p.raise_if_any()
        self.engine = engine
        self.dialect = "postgresql" if name == "postgresql" else "mysql"
        self.at = at
        self.probability = probability
        self.times = times
        self.match = match
        self.seen = 0  # eligible statements or COMMITs so far
        self.injected = 0
        self.installed = False
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._admin: Engine | None = None

    def __repr__(self) -> str:
        how = f"at={self.at}" if self.at is not None else f"probability={self.probability}"
        return (
            f"<FaultInjector {self.fault.value} {how} injected={self.injected} "
            f"{'installed' if self.installed else 'removed'}>"
        )

    # ---------------------------------------------------------------- install / remove
    def install(self) -> FaultInjector:
        """Start hitting the engine; returns ``self``."""
        if not self.installed:
            if self.fault in _AT_COMMIT:
                event.listen(self.engine, "commit", self._on_commit)
            else:
                event.listen(self.engine, "before_cursor_execute", self._on_statement, retval=True)
            self.installed = True
        return self

    def remove(self) -> None:
        """Stop; dispose of the separate connection used for killing."""
        if self.installed:
            if self.fault in _AT_COMMIT:
                event.remove(self.engine, "commit", self._on_commit)
            else:
                event.remove(self.engine, "before_cursor_execute", self._on_statement)
            self.installed = False
        if self._admin is not None:
            self._admin.dispose()
            self._admin = None

    def __enter__(self) -> FaultInjector:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ---------------------------------------------------------------- the choice
    def _hit(self) -> bool:
        with self._lock:
            if self.times is not None and self.injected >= self.times:
                return False
            self.seen += 1
            if self.at is not None:
                chosen = self.seen == self.at
            else:
                chosen = self._rng.random() < (self.probability or 0)
            if chosen:
                self.injected += 1
            return chosen

    # ---------------------------------------------------------------- the faults
    def _on_statement(
        self, conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> tuple[str, Any]:
        head = statement.lstrip()[:10].upper()
        eligible = not head.startswith(_CONTROL) and (self.match is None or self.match in statement)
        if not eligible or not self._hit():
            return statement, parameters
        if self.fault is Fault.DISCONNECT:
            self._kill(conn.connection.dbapi_connection)
            return statement, parameters
        sql = self._raising_sql()
        return sql, ([] if many else ())

    def _on_commit(self, conn: Any) -> None:
        if not self._hit():
            return
        raw = conn.connection.dbapi_connection
        if self.fault is Fault.COMMIT_LOST_BEFORE:
            self._kill(raw)
        else:
            raw.commit()
            raw.close()

    def _raising_sql(self) -> str:
        text = f"recoverly injected {self.fault.value}"
        if self.dialect == "postgresql":
            code = _PG_STATE[self.fault]
            return f"DO $$ BEGIN RAISE EXCEPTION '{text}' USING ERRCODE = '{code}'; END $$"
        state, errno = _MYSQL_ERROR[self.fault]
        return f"SIGNAL SQLSTATE '{state}' SET MYSQL_ERRNO = {errno}, MESSAGE_TEXT = '{text}'"

    def _kill(self, raw: Any) -> None:
        """Terminate the server process behind ``raw`` and wait until it is gone."""
        if self._admin is None:
            self._admin = sa.create_engine(self.engine.url, poolclass=NullPool)
        if self.dialect == "postgresql":
            pid = int(raw.info.backend_pid)
            kill, alive = (
                "SELECT pg_terminate_backend(:i)",
                "SELECT count(*) FROM pg_stat_activity WHERE pid = :i",
            )
        else:
            pid = int(raw.thread_id())
            kill, alive = (
                f"KILL CONNECTION {pid}",
                "SELECT count(*) FROM information_schema.processlist WHERE id = :i",
            )
        with self._admin.connect() as admin:
            admin.execute(sa.text(kill), {"i": pid})
            for _ in range(1000):
                if not admin.execute(sa.text(alive), {"i": pid}).scalar():
                    break


def inject_fault(engine: Engine, fault: Fault | str, **options: Any) -> FaultInjector:
    """Install and return a :class:`FaultInjector` (use it as a context manager).

    Args:
        engine: The engine to hit.
        fault: The fault (a :class:`Fault` or its value).
        **options: ``at``, ``probability``, ``seed``, ``times``, ``match``.

    Returns:
        The installed injector; ``with`` removes it at the end of the block.

    .. versionadded:: 0.2
    """
    return FaultInjector(engine, fault, **options).install()


try:  # the pytest fixture, when pytest is there
    import pytest
except ImportError:  # pragma: no cover - pytest is not a runtime dependency
    pass
else:

    @pytest.fixture
    def db_faults() -> Iterator[Callable[..., FaultInjector]]:
        """``db_faults(engine, fault, **options)``: an injector removed after the test."""
        made: list[FaultInjector] = []

        def make(engine: Engine, fault: Fault | str, **options: Any) -> FaultInjector:
            injector = inject_fault(engine, fault, **options)
            made.append(injector)
            return injector

        yield make
        for injector in made:
            injector.remove()
