"""atomic_update: optimistic-locking updates of one row, retried when a concurrent writer wins.

::

    # read-modify-write: pass a callable, it sees the fresh row on every attempt
    atomic_update(db, ModelRun, model_id, lambda row: {"usage_count": row.usage_count + 1})

    # absolute values: a mapping is fine when it does not depend on what you read
    atomic_update(db, ModelRun, model_id, {"status": "archived"})

See :func:`atomic_update` for the version check, the transaction rules and why
the seed's ``{"usage_count": model.usage_count + 1}`` loses updates.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.exc import StaleDataError

from recoverly._core.clock import Clock
from recoverly._core.validate import Problems
from recoverly.db.savepoint import Savepoint, rollback_failed
from recoverly.retry import Retry

__all__ = ["atomic_update"]

# ---------------------------------------------------------------- atomic_update
Updates = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class _Versioned:
    """How to version-check updates of one mapped class."""

    mapper: Mapper[Any]
    key: str  # attribute holding the version
    column: ColumnElement[Any]
    by_orm: bool  # the mapper's version_id_col: the ORM checks it on flush
    keys: frozenset[str]  # attributes that may be updated


def _versioned(model_class: Any) -> _Versioned:
    mapper = sa_inspect(model_class, raiseerr=False)
    if not isinstance(mapper, Mapper):
        msg = f"model_class must be a mapped ORM class, got {model_class!r}"
        raise TypeError(msg)
    name = mapper.class_.__name__
    pk = {c.key for c in mapper.primary_key}
    if mapper.version_id_col is not None:
        prop = mapper.get_property_by_column(mapper.version_id_col)
        key, column, by_orm = prop.key, mapper.version_id_col, True
    elif "version" in mapper.column_attrs:
        key, column, by_orm = "version", mapper.column_attrs["version"].columns[0], False
    else:
        msg = (
            f"atomic_update() needs a version column on {name}: configure "
            "__mapper_args__ = {'version_id_col': ...} or add an integer column named 'version'"
        )
        raise TypeError(msg)
    keys = frozenset(mapper.column_attrs.keys()) - {key} - pk
    return _Versioned(mapper, key, column, by_orm, keys)


def _values(plan: _Versioned, updates: Updates, row: object) -> dict[str, Any]:
    values = dict(updates(row) if callable(updates) else updates)
    unknown = sorted(set(values) - plan.keys)
    if unknown:
        msg = (
            f"atomic_update() cannot set {', '.join(map(repr, unknown))} on "
            f"{plan.mapper.class_.__name__}: not an updatable column "
            "(the version and primary key columns are managed)"
        )
        raise ValueError(msg)
    return values


def _apply(db: Session, plan: _Versioned, row: object, values: dict[str, Any]) -> None:
    if plan.by_orm:
        for key, value in values.items():
            setattr(row, key, value)
        db.flush()  # UPDATE ... WHERE version = :seen; no row matched -> StaleDataError
        return
    current = getattr(row, plan.key)
    model = plan.mapper.class_
    ident = plan.mapper.primary_key_from_instance(row)
    where = [c == v for c, v in zip(plan.mapper.primary_key, ident, strict=True)]
    where.append(plan.column.is_(None) if current is None else plan.column == current)
    stmt = (
        update(model)
        .where(*where)
        .values({**values, plan.key: 1 if current is None else current + 1})
        .execution_options(synchronize_session=False)
    )
    result = cast("CursorResult[Any]", db.execute(stmt))
    db.expire(row)
    if result.rowcount != 1:
        msg = f"{model.__name__} row {ident!r} changed since version {current!r} was read"
        raise StaleDataError(msg)


def _rollback_quietly(db: Session, exc: BaseException) -> None:
    try:
        db.rollback()
    except Exception as failure:
        rollback_failed(exc, failure)


def _attempt_own(db: Session, plan: _Versioned, record_id: Any, updates: Updates) -> bool:
    try:
        row = db.get(plan.mapper, record_id, populate_existing=True)
        if row is None:
            db.rollback()
            return False
        _apply(db, plan, row, _values(plan, updates, row))
        db.commit()
    except BaseException as exc:
        _rollback_quietly(db, exc)
        raise
    return True


def _attempt_nested(db: Session, plan: _Versioned, record_id: Any, updates: Updates) -> bool:
    with Savepoint(db):
        row = db.get(plan.mapper, record_id, populate_existing=True)
        if row is None:
            return False
        _apply(db, plan, row, _values(plan, updates, row))
    return True


def atomic_update(
    db: Session,
    model_class: type[Any],
    record_id: Any,
    updates: Updates,
    max_retries: int = 5,
    *,
    commit: bool = True,
    clock: Clock | None = None,
) -> bool:
    """Update one row with optimistic locking, retrying when a concurrent writer wins.

    Each attempt reads the row fresh (``populate_existing``), computes the new
    values, and writes them with a version check: through the mapper's
    ``version_id_col`` (the ORM raises ``StaleDataError`` when the row changed
    since it was read), or, for a plain integer column named ``version``, with
    ``UPDATE ... WHERE version = :seen`` and ``version + 1``. A conflict rolls
    the attempt back and runs it again after a short jittered backoff (the
    core :class:`~recoverly.Retry` policy).

    **Pass a callable for read-modify-write.** ``updates`` may be a mapping of
    absolute values or ``callable(row) -> mapping``, called with the *fresh*
    row on every attempt. A mapping computed outside (the seed's
    ``{"usage_count": model.usage_count + 1}``) was computed from a read the
    version check does not cover: if another writer committed in between,
    ``atomic_update`` writes the stale total on top of it and the other
    increment is lost. Use ``lambda row: {"usage_count": row.usage_count + 1}``.

    **Transactions.** With ``commit=True`` (the default, what the seed relies
    on: ``True`` means the change is durable) every attempt is its own short
    transaction on ``db``: read, write, ``COMMIT``; a conflict rolls it back.
    Holding no transaction open across retries keeps row locks short and
    lets every retry see the newest committed row. Because a rollback would
    discard unrelated work, the call refuses to start when ``db`` has pending
    (unflushed) changes or is inside a savepoint. With ``commit=False`` every
    attempt runs in a savepoint inside the caller's transaction and nothing is
    committed; that needs READ COMMITTED isolation (PostgreSQL's default) for a
    retry to see the competing write.

    Args:
        db: The ORM session.
        model_class: A mapped class with a version column.
        record_id: Its primary key (a tuple for a composite key).
        updates: Attribute names to new values, or a callable building them
            from the fresh row. Primary key and version are managed.
        max_retries: Retries after the first attempt (``>= 0``).
        commit: Commit each attempt (default) or use savepoints in the
            caller's transaction.
        clock: Clock for the backoff waits (default: the process clock).

    Returns:
        ``True`` when the row was updated, ``False`` when it does not exist.

    Raises:
        TypeError: ``model_class`` is not mapped or has no version column, or
            ``updates`` is neither a mapping nor callable.
        ValueError: ``max_retries`` is negative, ``db`` has pending changes or
            an open savepoint (``commit=True``), or ``updates`` names an
            unknown, primary key or version attribute.
        sqlalchemy.orm.exc.StaleDataError: Still conflicting after
            ``max_retries`` retries (the update was not applied).

    .. versionadded:: 0.1
    """
    plan = _versioned(model_class)
    p = Problems()
    retries = p.int_at_least("max_retries", max_retries, 0)
    if not (callable(updates) or isinstance(cast("object", updates), Mapping)):
        p._bad(f"updates must be a mapping or callable(row), got {updates!r}", kind=True)
    if not isinstance(cast("object", commit), bool):
        p._bad(f"commit must be a bool, got {commit!r}", kind=True)
    p.raise_if_any()
    if isinstance(updates, Mapping):
        _values(plan, updates, None)
    if commit and (db.new or db.dirty or db.deleted or db.in_nested_transaction()):
        msg = (
            "atomic_update(commit=True) commits (and on conflict rolls back) the "
            "session's transaction, but the session has pending changes or an open "
            "savepoint: commit or flush your own work first, or pass commit=False"
        )
        raise ValueError(msg)
    policy = Retry(
        max_attempts=retries + 1,
        delay=0.005,
        backoff=2.0,
        jitter=True,
        max_delay=0.2,
        exceptions=StaleDataError,
        name=f"atomic_update {plan.mapper.class_.__name__}",
        clock=clock,
    )
    attempt = _attempt_own if commit else _attempt_nested
    return policy.call(attempt, db, plan, record_id, updates)


atomic_update.__module__ = "recoverly.db"
