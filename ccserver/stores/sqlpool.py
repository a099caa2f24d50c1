"""
The SQL stores' connection pool: adbapi's, one connection per thread of
its thread pool, made to notice a dead connection before a transaction
uses it, and to drop one quietly when a rollback fails on it.

adbapi's own C{cp_reconnect} finds a dead connection only once a statement
has failed on it, and logs a traceback for each ("Rollback failed"); after
a database restart every pooled connection would fail one operation and
log one.

The one reach into adbapi's private state is L{held_connection}.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.enterprise import adbapi


class PoolDialect(Protocol):
    """
    What the pool needs to know of a database (a
    L{ccserver.stores.sqldialects.Dialect} has it).
    """

    @property
    def module(self) -> str:
        """
        The DB-API module's name.
        """

    @property
    def unavailable_errors(self) -> tuple[type[BaseException], ...]:
        """
        The driver's errors of a connection that is gone.
        """

    def is_stale(self, connection: Any) -> bool:
        """
        Whether a pooled connection is known to be dead before it is used.
        """


def held_connection(pool: adbapi.ConnectionPool) -> Any:
    """
    The DB-API connection C{pool} holds for the calling thread, or None.

    The adapter to adbapi's private state (Twisted 24 to 26), the SQL
    stores' one reach (docs/architecture.md, "Private APIs"): L{adbapi.ConnectionPool} keeps each thread's
    connection in its undocumented C{connections} dictionary, by
    C{threadID()}, and offers no way to ask for it without making one
    (C{connect()} makes one when there is none).  tests/test_store_sql.py
    (C{AdbapiAdapterTests}) fails if adbapi changes it.
    """
    return pool.connections.get(pool.threadID())


class PooledConnection(adbapi.Connection):
    """
    adbapi's connection wrapper (one per transaction), made to drop a dead
    connection quietly when a rollback fails on it.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._owner = pool
        super().__init__(pool)

    def rollback(self) -> None:
        # runs in the pool's thread, whose connection this wraps
        connection = held_connection(self._owner)
        if connection is None:
            return
        try:
            connection.rollback()
        except self._owner.dialect.unavailable_errors:
            # Nothing left to roll back on a dead connection; drop it, and
            # the next operation on this thread connects anew.
            self._owner.disconnect(connection)


class ConnectionPool(adbapi.ConnectionPool):
    """
    adbapi's pool over C{dialect}'s driver, whose connections are checked
    before each transaction.
    """

    connectionFactory = PooledConnection

    def __init__(self, dialect: PoolDialect, *args: Any, **kwargs: Any) -> None:
        self.dialect = dialect
        super().__init__(dialect.module, *args, **kwargs)

    def connect(self) -> Any:
        """
        The calling thread's connection (what every transaction's
        L{PooledConnection} is given), made anew if the dialect finds it
        dead.
        """
        connection = super().connect()
        if self.dialect.is_stale(connection):
            self.disconnect(connection)
            connection = super().connect()
        return connection

    def disconnect(self, conn: Any) -> None:
        # the base class complains ("wrong connection for thread") when it
        # has already forgotten this connection
        if conn is not None and conn is held_connection(self):
            super().disconnect(conn)
