"""recoverly.db: database recovery on SQLAlchemy 2 (extra ``recoverly[db]``).

Install with ``pip install 'recoverly[db]'`` (SQLAlchemy 2 and psycopg 3).

.. versionadded:: 0.1
"""

from __future__ import annotations

try:
    import sqlalchemy
except ImportError as exc:  # pragma: no cover - exercised by the minimal install
    msg = "recoverly.db needs SQLAlchemy 2: pip install 'recoverly[db]'"
    raise ImportError(msg) from exc

if not sqlalchemy.__version__.startswith("2."):  # pragma: no cover - depends on the install
    msg = (
        f"recoverly.db needs SQLAlchemy 2, found {sqlalchemy.__version__}: "
        "pip install 'recoverly[db]'"
    )
    raise ImportError(msg)

from recoverly.db._classify import DbFailure as DbFailure
from recoverly.db._classify import FailureKind as FailureKind
from recoverly.db._classify import Verdict as Verdict
from recoverly.db._classify import classify as classify
from recoverly.db._classify import is_retryable as is_retryable
from recoverly.db._server_limit import server_connection_limit as server_connection_limit
from recoverly.db.atomic import atomic_update as atomic_update
from recoverly.db.autoscale import PoolAutoscaler as PoolAutoscaler
from recoverly.db.bulk import safe_bulk_insert as safe_bulk_insert
from recoverly.db.commits import install_commit_markers as install_commit_markers
from recoverly.db.commits import prune_commit_markers as prune_commit_markers
from recoverly.db.errors import CommitOutcomeUnknown as CommitOutcomeUnknown
from recoverly.db.errors import NestedTransactionError as NestedTransactionError
from recoverly.db.pool import ConnectionPoolMonitor as ConnectionPoolMonitor
from recoverly.db.pool import PoolLeak as PoolLeak
from recoverly.db.retry import db_retry as db_retry
from recoverly.db.retry import ensure_connection as ensure_connection
from recoverly.db.savepoint import Savepoint as Savepoint
from recoverly.db.savepoint import enable_sqlite_savepoints as enable_sqlite_savepoints
from recoverly.db.savepoint import with_savepoint as with_savepoint
from recoverly.db.transaction import arun_transaction as arun_transaction
from recoverly.db.transaction import run_transaction as run_transaction

__all__ = [
    "CommitOutcomeUnknown",
    "ConnectionPoolMonitor",
    "DbFailure",
    "FailureKind",
    "NestedTransactionError",
    "PoolAutoscaler",
    "PoolLeak",
    "Savepoint",
    "Verdict",
    "arun_transaction",
    "atomic_update",
    "classify",
    "db_retry",
    "enable_sqlite_savepoints",
    "ensure_connection",
    "install_commit_markers",
    "is_retryable",
    "prune_commit_markers",
    "run_transaction",
    "safe_bulk_insert",
    "server_connection_limit",
    "with_savepoint",
]
