"""Errors raised by recoverly.db.

::

    RecoverlyError
    ├── CommitOutcomeUnknown      the connection broke during COMMIT: it may have committed
    └── NestedTransactionError    a whole-transaction retry was asked for inside a transaction
                                  it did not open

.. versionadded:: 0.1
"""

from __future__ import annotations

from recoverly.errors import RecoverlyError

__all__ = ["CommitOutcomeUnknown", "NestedTransactionError"]


class CommitOutcomeUnknown(RecoverlyError):
    """The connection was lost while COMMIT was in flight.

    The server may have committed the transaction before the connection broke,
    so running a non-idempotent write again could apply it twice. recoverly
    raises this instead of retrying, unless the work was marked idempotent or an
    idempotency check says it did not commit.

    The original driver error is the ``__cause__``.

    .. versionadded:: 0.1
    """


class NestedTransactionError(RecoverlyError):
    """A whole-transaction retry was requested inside a transaction it did not open.

    Retrying only the inner part would re-run it on top of an outer transaction
    that the server has already aborted (or would silently drop the outer work),
    so recoverly refuses instead.

    .. versionadded:: 0.1
    """


CommitOutcomeUnknown.__module__ = "recoverly.db"
NestedTransactionError.__module__ = "recoverly.db"
