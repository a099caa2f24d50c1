"""
What differs between SQLite and PostgreSQL for the SQL store; the SQL
itself does not (L{ccserver.stores.sqlstatements}).

A L{Dialect} holds the DB-API module, the placeholder (C{?} for sqlite3,
C{%s} for psycopg), the statement that starts a write, the migration lock,
which driver exceptions mean "the database cannot be reached", how a
pooled connection is found dead before it is used, and how the token
writer's connection is set up and writes a batch.  L{connection_for}
reads a store URL into the dialect and the driver's connection arguments.

SQLite runs in WAL mode with C{synchronous=FULL} (L{prepare_sqlite}); its
token writer polls for the write lock itself (L{WRITE_LOCK_POLL}).
PostgreSQL's connections are checked with a C{poll()} before each use
(L{socket_stale}): closed by the server, or turned read-only.
"""

from __future__ import annotations

import math
import select
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.logger import Logger

from ccserver.errors import ConfigError
from ccserver.stores.guard import mask_password
from ccserver.stores.urls import sqlite_path

T = TypeVar("T")

_log = Logger(namespace="ccserver.stores.sql")

#: The key of PostgreSQL's advisory lock that serialises migrations ("ccsv").
MIGRATION_LOCK_KEY = 0x63637376

#: How long a writer waits between its first two tries for SQLite's
#: write lock (L{_sqlite_write_tokens}, L{_sqlite_begin_write}); each wait
#: after is twice the one before, up to L{WRITE_LOCK_LONGEST_POLL}.
WRITE_LOCK_POLL = 0.0001
#: The longest wait between two tries for the write lock.  A try costs
#: tens of microseconds of CPU, most of it holding the GIL (the exception
#: SQLite's "database is locked" becomes): writers trying every tenth of a
#: millisecond while the purge or another process held the lock burned a
#: good part of a core between them and slowed the requests of their own
#: process (the growth section's purge row, bench/README.md).
WRITE_LOCK_LONGEST_POLL = 0.001


@frozen
class Dialect:
    """
    What differs between the databases; the SQL itself does not.
    """

    name: str
    module: str
    placeholder: str
    integrity_errors: tuple[type[BaseException], ...]
    unavailable_errors: tuple[type[BaseException], ...]
    #: starts a write transaction (given a cursor and the seconds it may
    #: wait for the write lock), or None where the driver starts one
    begin_write: Callable[[Any, float], None] | None
    #: fires with a row whose first column is true if schema_version exists
    schema_version_exists: str
    #: run first in a migration transaction: take the migration lock
    migration_lock: Callable[[Any, float], None]
    #: whether a pooled connection is known to be dead before it is used
    is_stale: Callable[[Any], bool]
    pool_size: int
    #: sets up the token writer's connection (L{SQLStore._add_tokens}),
    #: and the purger's (L{SQLStore.purge_expired})
    prepare_token_connection: Callable[[Any], None]
    #: runs a write statement on such a connection (a batch of tokens, a
    #: batch of a purge): in autocommit, its own transaction; the rows it
    #: changed
    write_tokens: Callable[[Any, str, tuple[Any, ...], float], int]
    #: sets up the lookups' reader connection (L{SQLStore._lookup}): each
    #: query in autocommit, its own transaction (one round trip)
    prepare_read_connection: Callable[[Any], None]
    #: whether a batch of token rows goes as one JSON parameter (one
    #: statement for every batch size) rather than as a C{VALUES} list
    #: (a statement for each size, a parameter for each value): psycopg
    #: parses a statement of more than 50 parameters anew, in Python, every
    #: time it runs one (it caches only smaller ones), which cost the token
    #: writer's thread more than the rest of a batch's write
    rows_as_json: bool = False

    def translate(self, statement: str) -> str:
        """
        The statement with this driver's placeholder: the one place where
        paramstyle is handled.
        """
        if self.placeholder == "?":
            return statement
        return statement.replace("?", self.placeholder)


def _sqlite_migration_lock(cursor: Any, timeout: float) -> None:
    # Another process may be migrating the same file: wait for it as long
    # as a migration may take, not only as long as an operation.
    cursor.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    cursor.execute("BEGIN IMMEDIATE")


def _postgresql_migration_lock(cursor: Any, timeout: float) -> None:
    cursor.execute(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))


def _sqlite_begin_write(cursor: Any, timeout: float) -> None:
    """
    C{BEGIN IMMEDIATE}, polling for the write lock as the token writer does
    (L{_sqlite_write_tokens}), with the connection's busy timeout off while
    it does: the rest of the transaction holds the lock, and reads in WAL
    mode never wait for it.

    SQLite's busy handler sleeps ever longer between tries, up to a tenth
    of a second: a write on the pool's connection (a client's
    registration, a brute-force limit's reservation) waiting behind the
    purge's batches, each holding the lock a few milliseconds in turns,
    found it taken again at almost every wake-up and waited up to a
    second, and every operation of the pool's one connection with it.
    """
    cursor.execute("PRAGMA busy_timeout = 0")
    try:
        _while_locked(
            partial(cursor.execute, "BEGIN IMMEDIATE"), timeout, WRITE_LOCK_POLL,
            WRITE_LOCK_LONGEST_POLL,
        )
    finally:
        # for the reads, and for a checkpoint after the commit
        cursor.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")


def _sqlite_token_connection(connection: Any) -> None:
    # the writer polls for the lock itself (L{_sqlite_write_tokens})
    connection.execute("PRAGMA busy_timeout = 0")


def _sqlite_write_tokens(connection: Any, statement: str, params: tuple[Any, ...], timeout: float) -> int:
    """
    Run the batch's statement in autocommit, trying again after
    L{WRITE_LOCK_POLL} seconds, then twice as long each time up to
    L{WRITE_LOCK_LONGEST_POLL}, for up to C{timeout} while another process
    (or this one's other connection) holds the write lock.

    SQLite's own busy handler backs off to sleeps of up to a tenth of a
    second: with two workers writing token batches of a few milliseconds
    each, a batch that found the lock taken once slept far longer than the
    other's commit, and opaque tokens' latency suffered (bench/README.md,
    "Measurements behind design choices").  Polling here (in the writer's
    thread, never the reactor's) takes the lock within a millisecond of
    its release.
    """
    cursor = _while_locked(
        partial(connection.execute, statement, params), timeout, WRITE_LOCK_POLL,
        WRITE_LOCK_LONGEST_POLL,
    )
    return int(cursor.rowcount)


def _while_locked(
    attempt: Callable[[], T], timeout: float, pause: float, longest: float | None = None
) -> T:
    """
    C{attempt()}, tried again for up to C{timeout} while SQLite answers
    "database is locked" at once (without waiting in its busy handler):
    after C{pause} seconds, then (given C{longest}) after twice the pause
    before each time, up to C{longest}.
    """
    deadline = time.monotonic() + timeout
    longest = pause if longest is None else longest
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, longest)


def _sqlite_read_connection(connection: Any) -> None:
    # already in autocommit (isolation_level None), each query seeing
    # every transaction committed before it began
    pass


def _postgresql_token_connection(connection: Any) -> None:
    # BEGIN, the statement and COMMIT would be three round trips
    connection.autocommit = True


def _postgresql_write_tokens(
    connection: Any, statement: str, params: tuple[Any, ...], timeout: float
) -> int:
    # in autocommit: one round trip, where BEGIN, INSERT and COMMIT were three
    return int(connection.execute(statement, params).rowcount)


def _never_stale(connection: Any) -> bool:
    return False


def socket_stale(connection: Any) -> bool:
    """
    Whether an idle psycopg connection is not to be used: closed, its
    socket readable (an idle connection is sent nothing, unless the server
    is closing it, as at a restart, or reports a changed setting), or the
    server said it is read-only (L{_read_only}).  Checking costs a poll(),
    no round trip.
    """
    import psycopg

    if connection.closed:
        return True
    try:
        poller = select.poll()
        poller.register(connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0)) or _read_only(connection)
    except (OSError, ValueError, psycopg.Error):
        return True


def _read_only(connection: Any) -> bool:
    """
    Whether the server said that this session cannot write: a hot standby
    (C{in_hot_standby}), or fenced with C{default_transaction_read_only}.
    PostgreSQL 14 and later report both to the client as they change, so
    this asks nothing.
    """
    status = connection.info.parameter_status
    return bool(status("in_hot_standby") == "on" or status("default_transaction_read_only") == "on")


def sqlite_dialect() -> Dialect:
    return Dialect(
        name="sqlite",
        module="sqlite3",
        placeholder="?",
        integrity_errors=(sqlite3.IntegrityError,),
        unavailable_errors=(
            sqlite3.OperationalError,
            sqlite3.InterfaceError,
            adbapi.ConnectionLost,
        ),
        begin_write=_sqlite_begin_write,
        schema_version_exists=(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ),
        migration_lock=_sqlite_migration_lock,
        is_stale=_never_stale,
        # One connection: see the module's docstring.
        pool_size=1,
        prepare_token_connection=_sqlite_token_connection,
        write_tokens=_sqlite_write_tokens,
        prepare_read_connection=_sqlite_read_connection,
    )


def postgresql_dialect() -> Dialect:
    try:
        import psycopg
    except ImportError as e:
        raise ConfigError(
            "[store] url: postgresql:// needs psycopg 3: pip install 'ccserver[postgresql]'"
        ) from e
    return Dialect(
        name="postgresql",
        module="psycopg",
        placeholder="%s",
        integrity_errors=(psycopg.IntegrityError,),
        unavailable_errors=(
            psycopg.OperationalError,
            psycopg.InterfaceError,
            # a write on a standby, or on a server turned read-only
            psycopg.errors.ReadOnlySqlTransaction,
            adbapi.ConnectionLost,
        ),
        begin_write=None,
        schema_version_exists="SELECT to_regclass('schema_version') IS NOT NULL",
        migration_lock=_postgresql_migration_lock,
        is_stale=socket_stale,
        pool_size=4,
        prepare_token_connection=_postgresql_token_connection,
        write_tokens=_postgresql_write_tokens,
        prepare_read_connection=_postgresql_token_connection,
        rows_as_json=True,
    )


def prepare_sqlite(connection: sqlite3.Connection, *, busy_seconds: float) -> None:
    """
    Set up each new SQLite connection (adbapi's C{cp_openfun}).

    WAL lets readers in other processes go on while one writes, and with
    C{synchronous=FULL} a commit is synced to disk before it returns.

    WAL mode is kept in the file, so only the first connection ever to a
    file switches it; but switching needs the file to itself, and SQLite
    answers "database is locked" at once (its busy timeout does not apply)
    when another connection opens the new file at the same moment: several
    instances starting together.  Hence the retries.
    """
    mode = _while_locked(
        lambda: connection.execute("PRAGMA journal_mode = WAL").fetchone()[0], busy_seconds, 0.01
    )
    if str(mode).lower() != "wal":
        _log.warn(
            "SQLite refused WAL mode (journal_mode is {mode}): is the file on a network "
            "file system?",
            mode=mode,
        )
    connection.execute("PRAGMA synchronous = FULL")


@frozen
class Connecting:
    """
    How to connect to the database of a store URL.
    """

    dialect: Dialect
    #: the driver's C{connect} arguments
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: run on each new connection (adbapi's C{cp_openfun}), if any
    open_connection: Callable[[Any], None] | None = None


def connection_for(url: str, timeout: float) -> Connecting:
    """
    The dialect and connection arguments of a C{sqlite:///relative.db},
    C{sqlite:////absolute.db} or C{postgresql://user:password@host:port/db}
    URL.

    @param timeout: seconds an operation may take; the drivers' own
        timeouts are set from it.
    @raise ConfigError: it is not an SQL store's URL (or psycopg is
        missing for PostgreSQL).
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = sqlite_path(url)
        return Connecting(
            sqlite_dialect(),
            (str(path),),
            {
                # the busy timeout: how long to wait for another process'
                # write lock
                "timeout": timeout,
                # the only connection is made in the pool's thread and
                # closed from the reactor's at shutdown
                "check_same_thread": False,
                # transactions are begun explicitly (BEGIN IMMEDIATE)
                "isolation_level": None,
            },
            open_connection=partial(prepare_sqlite, busy_seconds=timeout),
        )
    if scheme == "postgresql":
        return Connecting(
            postgresql_dialect(),
            (url,),
            {
                # libpq counts whole seconds and no fewer than 2
                "connect_timeout": max(2, math.ceil(timeout)),
                "application_name": "ccserver",
                # frees the pool's thread of a statement that waits on a
                # lock longer than the caller does
                "options": f"-c statement_timeout={max(1, int(timeout * 1000))}",
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
                # a primary gone without closing its connections (its
                # host died): what was sent and not acknowledged fails
                # the connection within the timeout
                "tcp_user_timeout": max(1, int(timeout * 1000)),
            },
        )
    raise ConfigError(f"[store] url: {mask_password(url)!r} is not an SQL store's URL")
