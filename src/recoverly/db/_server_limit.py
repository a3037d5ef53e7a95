"""How many connections the database server lets this login open.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["server_connection_limit"]

_PG_SETTINGS = text(
    "SELECT name, setting FROM pg_settings WHERE name IN "
    "('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
)
_PG_OWN_LIMITS = text(
    "SELECT (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user), "
    "(SELECT datconnlimit FROM pg_database WHERE datname = current_database())"
)
_MYSQL_LIMITS = text("SELECT @@max_connections, @@max_user_connections")


def server_connection_limit(connection: Connection) -> int | None:
    """Return the most connections this login may hold on the server, or ``None`` if unknown.

    On PostgreSQL: ``max_connections`` minus the slots kept for superusers
    (``superuser_reserved_connections``, and ``reserved_connections`` from
    PostgreSQL 16), lowered by the role's and the database's ``CONNECTION
    LIMIT`` when they set one. On MariaDB and MySQL: ``@@max_connections``,
    lowered by ``@@max_user_connections`` when it is set. ``None`` for other
    databases (SQLite has no server). The figure is for the whole server:
    connections of other clients and other processes count against it too.

    Runs two short queries on ``connection`` (in its current transaction).
    For an ``AsyncConnection``: ``await conn.run_sync(server_connection_limit)``.

    Args:
        connection: A SQLAlchemy ``Connection``.

    Returns:
        The limit, or ``None``.

    .. versionadded:: 0.2
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        settings = {str(k): int(v) for k, v in connection.execute(_PG_SETTINGS).all()}
        limit = (
            settings["max_connections"]
            - settings.get("superuser_reserved_connections", 0)
            - settings.get("reserved_connections", 0)
        )
        own = connection.execute(_PG_OWN_LIMITS).one()
        return min([limit, *(int(x) for x in own if x is not None and int(x) >= 0)])
    if dialect in ("mysql", "mariadb"):
        most, per_user = connection.execute(_MYSQL_LIMITS).one()
        limit = int(most)
        return min(limit, int(per_user)) if int(per_user) > 0 else limit
    return None


server_connection_limit.__module__ = "recoverly.db"
