"""
The SQL stores: SQLite (embedded, the default) and PostgreSQL (shared by
several instances), with one body of SQL over L{twisted.enterprise.adbapi}.

The two differ only in what L{_Dialect} holds: the DB-API module, the
placeholder (C{?} for sqlite3, C{%s} for psycopg; statements here are written
with C{?} and translated in L{_Dialect.translate}), the statement that starts a
write, the migration lock, and which driver exceptions mean "the database
cannot be reached".

Durability and concurrency:

  - SQLite runs in WAL mode with C{synchronous=FULL}: a commit is on disk
    before the Deferred fires, so neither a SIGKILL nor a power cut loses a
    registered client.  One connection, in one pool thread, for every
    operation but opaque tokens' writes: adbapi's several threads would
    otherwise meet "database is locked".  Other processes on the same file
    wait up to the timeout (C{busy_timeout}); every write starts with
    C{BEGIN IMMEDIATE} so that it takes the write lock first and never
    fails half-way on a lock upgrade.  Opaque tokens are written by a
    connection and thread of their own (the token writer), one statement
    per batch in autocommit, polling for the write lock.
  - Every write is one transaction: one statement, or several in
    C{purge_expired}, in C{add_client} and C{replace_client} (the client
    and the index of its federated identities) and in C{delete_client} (the
    client's revocation mark, its opaque tokens, its bindings, the client),
    so none is ever half-done.  Opaque
    tokens are the exception that proves it: those that arrive while one
    commit is under way share the next transaction (L{GroupCommit}), one
    statement run by the token writer (on PostgreSQL too, in autocommit:
    one round trip); each C{add_token} still fires only once its own row is
    committed.

Tables: C{clients} (and C{federated_identities}, the index of their
bindings to workload identities, written with them), C{signing_keys},
C{leases} (L{ILeaseStore}), and for L{ITokenStore} C{access_tokens}
(by digest, never the token), C{revoked_jtis} and C{revoked_clients}; for
L{IAuthAttemptStore} C{auth_attempts} and C{auth_known_sources}; for
L{IInitialAccessTokenStore} C{initial_access_tokens} (by digest); for
L{IRateLimitStore} C{token_buckets} (by digest);
metadata, audiences and claims are JSON text, so that the same SQL serves
both databases.  The columns, and the rows read and written, are those of
L{ccserver.stores.codec}.

Failure: each operation fires within C{timeout} seconds, with its result or
with L{StoreUnavailable}.  A write that times out may still complete later in
its thread: its outcome is unknown, as with any remote store.  A connection
that the server closed (a restart) is noticed before it is used and made
anew, so the same store recovers by itself once the server is back.

Failover (PostgreSQL): a multi-host URL
(C{postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write}) makes
libpq try each host in turn and keep the first that accepts writes, at
every new connection.  When the primary dies, each pooled connection (and
the token writer's) is found dead before its next use and made anew,
reaching the promoted standby once there is one; until then the attempt
fails at once (refused, or "session is read-only") and the request gets a
503.  A connection to a server that turned read-only under it (a standby
reached through a single-host URL or a virtual IP, a server fenced with
C{default_transaction_read_only}) is made anew too, as the server reports
it (C{in_hot_standby}, C{default_transaction_read_only}), and a write it
refused is a 503.  A transaction cut off by the primary's death is rolled
back by PostgreSQL, never half-applied; one cut off after its C{COMMIT} was
sent has an unknown outcome, and its request got a 503.  Whether an
answered write survives a failover is the servers' settings: with
asynchronous replication a promoted standby may lack the last commits;
with C{synchronous_commit = on} and the standby named in
C{synchronous_standby_names}, a commit is answered only once the standby
has it on disk (docs/failover.md).  C{tcp_user_timeout} bounds how long an
operation can wait on a primary that vanished without closing its
connections (a host that went away): libpq gives up within the store's
timeout, and the pool's thread is free again.

Schema: versioned migration files in C{ccserver/stores/schema/}
(C{NNNN_name.sql}), applied in order by L{SQLStore.open}, each in its own
transaction with its row in C{schema_version}.  Opening a database that is
up to date takes no lock; otherwise each step holds a lock (PostgreSQL: an
advisory lock in the transaction; SQLite: C{BEGIN IMMEDIATE}) and re-reads
the version under it, so two processes opening at once never both apply a
migration.
"""

from __future__ import annotations

import importlib
import math
import re
import select
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ccserver.errors import BindingTaken, ClientExists, ConfigError, StoreUnavailable
from ccserver.interfaces import IStore
from ccserver.model import (
    AttemptKeys,
    AttemptRelease,
    Client,
    InitialAccessToken,
    Reservation,
    StoredKey,
    TokenGrant,
    TokenRecord,
    binding_key,
)
from ccserver.stores import buckets
from ccserver.stores.buckets import Bucket
from ccserver.stores.codec import CLIENTS, INITIAL_ACCESS_TOKENS, KEYS, TOKENS, Codec
from ccserver.stores.groupcommit import GroupCommit
from ccserver.stores.guard import OperationGuard, mask_password, url_secrets
from ccserver.stores.sqlpool import ConnectionPool
from ccserver.stores.urls import sqlite_path
from ccserver.stores.writer import ConnectionThread

T = TypeVar("T")

#: How long one migration step may take (waiting for another process'
#: migration included): far longer than an operation, since rewriting a
#: large table is slow, but not forever.
MIGRATION_TIMEOUT = 600.0

#: How long a batch of opaque tokens may wait to fill under load
#: (L{GroupCommit}'s C{hold}): each commit is a round trip and a sync (which
#: the processes on one SQLite file take in turn), so fewer, fuller commits
#: give more tokens a second (bench/README.md).
TOKEN_HOLD = 0.004

#: Opaque tokens written in one statement at most: 100 rows of 9 values
#: stay under SQLite's oldest limit of 999 variables a statement.
TOKEN_BATCH = 100

#: The key of PostgreSQL's advisory lock that serialises migrations ("ccsv").
MIGRATION_LOCK_KEY = 0x63637376

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@frozen
class Migration:
    """
    One schema migration file.
    """

    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(script: str) -> tuple[str, ...]:
    """
    The statements of a migration file: comments dropped, split at every
    semicolon that ends a line.
    """
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    statements = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return tuple(s.strip() for s in statements if s.strip())


def load_migrations(folder: Traversable | None = None) -> tuple[Migration, ...]:
    """
    The migrations in C{folder} (by default the package's C{schema/}), in
    order; their versions must run 1, 2, 3, ... without a gap.
    """
    if folder is None:
        folder = resources.files("ccserver.stores") / "schema"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(
                Migration(
                    int(match.group(1)),
                    entry.name,
                    split_statements(entry.read_text(encoding="utf-8")),
                )
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"schema migrations must be numbered 1, 2, 3, ...: {versions}")
    return tuple(found)


@frozen
class _Dialect:
    """
    What differs between the databases; the SQL itself does not.
    """

    name: str
    module: str
    placeholder: str
    integrity_errors: tuple[type[BaseException], ...]
    unavailable_errors: tuple[type[BaseException], ...]
    #: starts a write transaction, or None where the driver starts one
    begin_write: str | None
    #: fires with a row whose first column is true if schema_version exists
    schema_version_exists: str
    #: run first in a migration transaction: take the migration lock
    migration_lock: Callable[[Any, float], None]
    #: whether a pooled connection is known to be dead before it is used
    is_stale: Callable[[Any], bool]
    pool_size: int
    #: sets up the token writer's connection (L{SQLStore._add_tokens})
    prepare_token_connection: Callable[[Any], None]
    #: runs a batch of tokens' statement on that connection: one statement
    #: in autocommit, its own transaction
    write_tokens: Callable[[Any, str, tuple[Any, ...], float], None]

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


def _sqlite_token_connection(connection: Any) -> None:
    # the writer polls for the lock itself (L{_sqlite_write_tokens})
    connection.execute("PRAGMA busy_timeout = 0")


def _sqlite_write_tokens(connection: Any, statement: str, params: tuple[Any, ...], timeout: float) -> None:
    """
    Run the batch's statement in autocommit, trying again every
    L{WRITE_LOCK_POLL} seconds for up to C{timeout} while another process
    (or this one's other connection) holds the write lock.

    SQLite's own busy handler backs off to sleeps of up to a tenth of a
    second: with two workers writing token batches of a few milliseconds
    each, a batch that found the lock taken once slept far longer than the
    other's commit, and opaque tokens' latency suffered (bench/README.md,
    "Measurements behind design choices").  Polling here (in the writer's
    thread, never the reactor's) takes the lock within a tenth of a
    millisecond of its release.
    """
    _while_locked(partial(connection.execute, statement, params), timeout, WRITE_LOCK_POLL)


def _while_locked(attempt: Callable[[], T], timeout: float, pause: float) -> T:
    """
    C{attempt()}, tried again every C{pause} seconds for up to C{timeout}
    while SQLite answers "database is locked" at once (without waiting in
    its busy handler).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)


def _postgresql_token_connection(connection: Any) -> None:
    connection.autocommit = True


def _postgresql_write_tokens(
    connection: Any, statement: str, params: tuple[Any, ...], timeout: float
) -> None:
    # in autocommit: one round trip, where BEGIN, INSERT and COMMIT were three
    connection.execute(statement, params)


def _never_stale(connection: Any) -> bool:
    return False


def _socket_stale(connection: Any) -> bool:
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


def _sqlite_dialect() -> _Dialect:
    return _Dialect(
        name="sqlite",
        module="sqlite3",
        placeholder="?",
        integrity_errors=(sqlite3.IntegrityError,),
        unavailable_errors=(
            sqlite3.OperationalError,
            sqlite3.InterfaceError,
            adbapi.ConnectionLost,
        ),
        begin_write="BEGIN IMMEDIATE",
        schema_version_exists=(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ),
        migration_lock=_sqlite_migration_lock,
        is_stale=_never_stale,
        # One connection: see the module's docstring.
        pool_size=1,
        prepare_token_connection=_sqlite_token_connection,
        write_tokens=_sqlite_write_tokens,
    )


def _postgresql_dialect() -> _Dialect:
    try:
        import psycopg
    except ImportError as e:
        raise ConfigError(
            "[store] url: postgresql:// needs psycopg 3: pip install 'ccserver[postgresql]'"
        ) from e
    return _Dialect(
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
        is_stale=_socket_stale,
        pool_size=4,
        prepare_token_connection=_postgresql_token_connection,
        write_tokens=_postgresql_write_tokens,
    )


def _columns(codec: Codec[Any]) -> str:
    return ", ".join(codec.names)


def _insert(table: str, codec: Codec[Any]) -> str:
    """
    C{INSERT} of a row (L{Codec.to_row}).
    """
    placeholders = ", ".join("?" for _ in codec.names)
    return f"INSERT INTO {table} ({_columns(codec)}) VALUES ({placeholders})"


def _upsert(table: str, codec: Codec[Any]) -> str:
    """
    C{INSERT} of a row, replacing the one stored with its key (the first
    column), as L{MemoryStore} does.
    """
    key, *rest = codec.names
    return (
        _insert(table, codec)
        + f" ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(f"{name} = excluded.{name}" for name in rest)
    )


def _upsert_many(table: str, codec: Codec[Any], count: int) -> str:
    """
    L{_upsert} of C{count} rows in one statement (their values one after
    the other).  The rows of one batch have distinct keys (random tokens'
    digests): PostgreSQL refuses to update one row twice in a statement.
    """
    key, *rest = codec.names
    row = "(" + ", ".join("?" for _ in codec.names) + ")"
    return (
        f"INSERT INTO {table} ({_columns(codec)}) VALUES "
        + ", ".join(row for _ in range(count))
        + f" ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(f"{name} = excluded.{name}" for name in rest)
    )


def _update(table: str, codec: Codec[Any]) -> str:
    """
    C{UPDATE} of every column but the key, whose value comes last: the
    parameters are L{_key_last} of the row.
    """
    key, *rest = codec.names
    return f"UPDATE {table} SET {', '.join(f'{name} = ?' for name in rest)} WHERE {key} = ?"


def _key_last(row: Sequence[Any]) -> tuple[Any, ...]:
    return (*row[1:], row[0])


@implementer(IStore)
class SQLStore:
    """
    A store in SQLite or PostgreSQL.  Make one with L{SQLStore.from_url}.

    @ivar url: the URL, with any password masked.
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        reactor: IReactorCore | IReactorTime | IReactorThreads,
        dialect: _Dialect,
        connect_args: tuple[Any, ...],
        connect_kwargs: Mapping[str, Any],
        *,
        timeout: float,
        migrations: Iterable[Migration] | None = None,
        open_connection: Callable[[Any], None] | None = None,
    ) -> None:
        self.url = mask_password(url)
        self._reactor = reactor
        self._dialect = dialect
        self._connect_args = connect_args
        self._connect_kwargs = dict(connect_kwargs)
        self._open_connection = open_connection
        self.timeout = timeout
        self._migrations = tuple(load_migrations() if migrations is None else migrations)
        self._guard = OperationGuard(
            reactor=cast(IReactorTime, reactor),
            timeout=timeout,
            url=self.url,
            unavailable=dialect.unavailable_errors,
            secrets=url_secrets(url),
        )
        self._pool: ConnectionPool | None = None
        #: the token writer: its own connection and thread (L{_add_tokens})
        self._token_writer: ConnectionThread[Any] | None = None
        #: the token batches' statements, by batch size
        self._token_upserts: dict[int, str] = {}
        #: opaque tokens, one transaction and one sync for a few ms of them;
        #: one batch at a time, on the token writer's one connection: the
        #: batches are larger and the thread hand-offs fewer (several at
        #: once cost more CPU per token: bench/README.md, "Measurements
        #: behind design choices")
        self._tokens: GroupCommit[tuple[Any, ...]] = GroupCommit(
            self._add_tokens,
            concurrency=1,
            max_batch=TOKEN_BATCH,
            clock=cast(IReactorTime, reactor),
            hold=TOKEN_HOLD,
        )
        t = dialect.translate
        self._sql = {
            "add_client": t(_insert("clients", CLIENTS)),
            "get_client": t(f"SELECT {_columns(CLIENTS)} FROM clients WHERE client_id = ?"),
            "replace_client": t(_update("clients", CLIENTS)),
            # Keyset paging: an index walk from the cursor, whatever the table's size.
            "list_clients": t(
                f"SELECT {_columns(CLIENTS)} FROM clients WHERE client_id > ?"
                " ORDER BY client_id LIMIT ?"
            ),
            "delete_client": t("DELETE FROM clients WHERE client_id = ?"),
            # a client's bindings to workload identities: their index
            "bind": t(
                "INSERT INTO federated_identities (binding_key, conditions_key, client_id)"
                " VALUES (?, ?, ?)"
            ),
            "unbind": t("DELETE FROM federated_identities WHERE client_id = ?"),
            "clients_bound_to": t(
                "SELECT client_id FROM federated_identities WHERE binding_key = ?"
            ),
            # A mark already there is kept with the later of each time.
            "revoke_client": t(
                "INSERT INTO revoked_clients (client_id, issued_before, expires_at)"
                " VALUES (?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET"
                " issued_before = CASE WHEN excluded.issued_before > revoked_clients.issued_before"
                " THEN excluded.issued_before ELSE revoked_clients.issued_before END,"
                " expires_at = CASE WHEN excluded.expires_at > revoked_clients.expires_at"
                " THEN excluded.expires_at ELSE revoked_clients.expires_at END"
            ),
            "delete_client_tokens": t("DELETE FROM access_tokens WHERE client_id = ?"),
            "client_revoked_before": t(
                "SELECT issued_before FROM revoked_clients WHERE client_id = ?"
            ),
            "purge_revoked_clients": t("DELETE FROM revoked_clients WHERE expires_at < ?"),
            "list_keys": t(f"SELECT {_columns(KEYS)} FROM signing_keys ORDER BY created_at, kid"),
            # One slot more in a counter's window; a window that has ended
            # starts again at 1 (both SET expressions read the row as it
            # was).  The row stays locked to the end of the transaction, so
            # that a reservation over budget can be rolled back unseen.
            "reserve_attempt": t(
                "INSERT INTO auth_attempts (attempt_key, attempts, window_ends_ms) VALUES (?, 1, ?)"
                " ON CONFLICT (attempt_key) DO UPDATE SET"
                " attempts = CASE WHEN auth_attempts.window_ends_ms <= ? THEN 1"
                " ELSE auth_attempts.attempts + 1 END,"
                " window_ends_ms = CASE WHEN auth_attempts.window_ends_ms <= ?"
                " THEN excluded.window_ends_ms ELSE auth_attempts.window_ends_ms END"
                " RETURNING attempts, window_ends_ms"
            ),
            "is_known": t(
                "SELECT 1 FROM auth_known_sources WHERE known_key = ? AND known_until_ms > ?"
            ),
            # given back only in the window it was taken in
            "release_attempt": t(
                "UPDATE auth_attempts SET attempts = attempts - 1"
                " WHERE attempt_key = ? AND window_ends_ms = ? AND attempts > 0"
            ),
            "mark_known": t(
                "INSERT INTO auth_known_sources (known_key, known_until_ms) VALUES (?, ?)"
                " ON CONFLICT (known_key) DO UPDATE SET known_until_ms = CASE"
                " WHEN excluded.known_until_ms > auth_known_sources.known_until_ms"
                " THEN excluded.known_until_ms ELSE auth_known_sources.known_until_ms END"
            ),
            "purge_auth_attempts": t("DELETE FROM auth_attempts WHERE window_ends_ms < ?"),
            "add_initial_access_token": t(
                _insert("initial_access_tokens", INITIAL_ACCESS_TOKENS)
            ),
            "get_initial_access_token": t(
                f"SELECT {_columns(INITIAL_ACCESS_TOKENS)} FROM initial_access_tokens"
                " WHERE token_digest = ?"
            ),
            "list_initial_access_tokens": t(
                f"SELECT {_columns(INITIAL_ACCESS_TOKENS)} FROM initial_access_tokens"
                " ORDER BY created_at, token_id"
            ),
            # the first revocation's time is kept
            "revoke_initial_access_token": t(
                "UPDATE initial_access_tokens SET revoked_at = COALESCE(revoked_at, ?)"
                " WHERE token_id = ?"
            ),
            # One use more, only while it may register: the row stays locked
            # to the end of the transaction, in which the client is added.
            "use_initial_access_token": t(
                "UPDATE initial_access_tokens SET uses = uses + 1"
                " WHERE token_digest = ? AND revoked_at IS NULL AND expires_at > ?"
                f" AND uses < max_uses RETURNING {_columns(INITIAL_ACCESS_TOKENS)}"
            ),
            "purge_initial_access_tokens": t(
                "DELETE FROM initial_access_tokens WHERE expires_at < ?"
            ),
            "purge_known_sources": t("DELETE FROM auth_known_sources WHERE known_until_ms < ?"),
            # Taken when nobody holds it, its time has ended, or the holder
            # takes it again: one statement, so one row lock decides.
            "take_lease": t(
                "INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_ms = excluded.expires_ms"
                " WHERE leases.expires_ms <= ? OR leases.holder = excluded.holder"
            ),
            "end_lease": t("DELETE FROM leases WHERE name = ? AND holder = ?"),
            # A new bucket is full; an existing one is left as it is, but
            # its row is locked (PostgreSQL) until the transaction ends, and
            # returned as it is now.
            "load_bucket": t(
                "INSERT INTO token_buckets (bucket_key, tokens, counted_ms, full_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (bucket_key) DO UPDATE SET"
                " bucket_key = excluded.bucket_key RETURNING tokens, counted_ms"
            ),
            "store_bucket": t(
                "UPDATE token_buckets SET tokens = ?, counted_ms = ?, full_ms = ?"
                " WHERE bucket_key = ?"
            ),
            "purge_buckets": t("DELETE FROM token_buckets WHERE full_ms < ?"),
            # A kid taken already is replaced, as MemoryStore does.
            "add_key": t(_upsert("signing_keys", KEYS)),
            "replace_key": t(_update("signing_keys", KEYS)),
            "delete_key": t("DELETE FROM signing_keys WHERE kid = ?"),
            # A digest stored already is replaced, as MemoryStore does.
            "add_token": t(_upsert("access_tokens", TOKENS)),
            # A token its client's revocation mark covers is not answered.
            "get_token": t(
                f"SELECT {_columns(TOKENS)} FROM access_tokens WHERE token_digest = ?"
                " AND NOT EXISTS (SELECT 1 FROM revoked_clients"
                " WHERE revoked_clients.client_id = access_tokens.client_id"
                " AND access_tokens.issued_at <= revoked_clients.issued_before)"
            ),
            "delete_token": t("DELETE FROM access_tokens WHERE token_digest = ?"),
            # An entry is kept until the later of the two expiries.
            "revoke_jti": t(
                "INSERT INTO revoked_jtis (jti, expires_at) VALUES (?, ?)"
                " ON CONFLICT (jti) DO UPDATE SET expires_at = CASE"
                " WHEN excluded.expires_at > revoked_jtis.expires_at"
                " THEN excluded.expires_at ELSE revoked_jtis.expires_at END"
            ),
            "is_revoked": t("SELECT 1 FROM revoked_jtis WHERE jti = ?"),
            # A key recorded already is left as it is: rowcount 0, a replay.
            "use_once": t(
                "INSERT INTO used_once (record_key, expires_at) VALUES (?, ?)"
                " ON CONFLICT (record_key) DO NOTHING"
            ),
            "purge_used_once": t("DELETE FROM used_once WHERE expires_at < ?"),
            "purge_tokens": t("DELETE FROM access_tokens WHERE expires_at < ?"),
            "purge_revoked": t("DELETE FROM revoked_jtis WHERE expires_at < ?"),
            "create_schema_version": (
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
            ),
            "schema_version": "SELECT MAX(version) FROM schema_version",
            "record_version": t("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"),
        }

    @classmethod
    def from_url(
        cls,
        url: str,
        reactor: IReactorCore | IReactorTime | IReactorThreads,
        *,
        timeout: float,
        migrations: Iterable[Migration] | None = None,
    ) -> SQLStore:
        """
        Make (but do not connect) the store of a C{sqlite:///relative.db},
        C{sqlite:////absolute.db} or C{postgresql://user:password@host:port/db}
        URL.

        @param timeout: seconds an operation may take before it fails with
            L{StoreUnavailable}.
        @param migrations: the schema migrations, by default the package's.
        """
        scheme = urlsplit(url).scheme
        if scheme == "sqlite":
            path = sqlite_path(url)
            return cls(
                url,
                reactor,
                _sqlite_dialect(),
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
                timeout=timeout,
                migrations=migrations,
                open_connection=partial(_prepare_sqlite, busy_seconds=timeout),
            )
        if scheme == "postgresql":
            return cls(
                url,
                reactor,
                _postgresql_dialect(),
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
                timeout=timeout,
                migrations=migrations,
            )
        raise ConfigError(f"[store] url: {mask_password(url)!r} is not an SQL store's URL")

    def __repr__(self) -> str:
        return f"<SQLStore {self.url}>"

    # lifetime

    def open(self) -> Deferred[None]:
        """
        Start the connection pool and bring the schema up to date.
        """
        if self._pool is None:
            kwargs: dict[str, Any] = dict(self._connect_kwargs)
            kwargs.update(
                cp_min=1,
                cp_max=self._dialect.pool_size,
                cp_reconnect=True,
                cp_noisy=False,
                cp_reactor=self._reactor,
                cp_name=f"ccserver-store-{self._dialect.name}",
            )
            if self._open_connection is not None:
                kwargs["cp_openfun"] = self._open_connection
            self._pool = ConnectionPool(self._dialect, *self._connect_args, **kwargs)
            self._token_writer = ConnectionThread(
                cast(IReactorThreads, self._reactor),
                self._connect_token_writer,
                name=f"ccserver-tokens-{self._dialect.name}",
                is_stale=self._dialect.is_stale,
                lost_errors=self._dialect.unavailable_errors,
            )
        return Deferred.fromCoroutine(self._migrate())

    async def _migrate(self) -> None:
        latest = self._migrations[-1].version if self._migrations else 0
        # The common case, a database up to date, takes no lock.
        current = await self._guard(self._run(self._read_version))
        self._check_version(current, latest)
        while current < latest:
            applied = await self._guard(
                self._run(self._migration_step), timeout=max(self.timeout, MIGRATION_TIMEOUT)
            )
            if applied is None:
                # another process has just applied the rest
                break
            current = applied
            self._log.info(
                "Applied schema migration {version} to {url}", version=current, url=self.url
            )

    def _connect_token_writer(self) -> Any:
        """
        The token writer's connection (in its thread): as the pool's, and
        then as the dialect sets up a token writer's.
        """
        connection = importlib.import_module(self._dialect.module).connect(
            *self._connect_args, **self._connect_kwargs
        )
        try:
            if self._open_connection is not None:
                self._open_connection(connection)
            self._dialect.prepare_token_connection(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_version(self, current: int, latest: int) -> None:
        if current > latest:
            raise ConfigError(
                f"[store] url: the database {self.url} has schema version {current}, "
                f"newer than this ccserver knows ({latest}): upgrade ccserver"
            )

    def _read_version(self, cursor: Any) -> int:
        cursor.execute(self._dialect.schema_version_exists)
        if not cursor.fetchone()[0]:
            return 0
        cursor.execute(self._sql["schema_version"])
        return int(cursor.fetchone()[0] or 0)

    def _migration_step(self, cursor: Any) -> int | None:
        """
        Under the migration lock, apply the next migration, if any is
        missing still; fire with the version now applied, or None.
        """
        self._dialect.migration_lock(cursor, max(self.timeout, MIGRATION_TIMEOUT))
        try:
            cursor.execute(self._sql["create_schema_version"])
            cursor.execute(self._sql["schema_version"])
            current = int(cursor.fetchone()[0] or 0)
            latest = self._migrations[-1].version if self._migrations else 0
            self._check_version(current, latest)
            pending = [m for m in self._migrations if m.version > current]
            if not pending:
                return None
            migration = pending[0]
            for statement in migration.statements:
                cursor.execute(statement)
            cursor.execute(self._sql["record_version"], (migration.version, int(time.time())))
            return migration.version
        finally:
            if self._dialect.name == "sqlite":
                try:
                    cursor.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                except sqlite3.Error:
                    pass

    def close(self) -> Deferred[None]:
        """
        Stop the pool's threads and close its connections.
        """
        self._tokens.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        writer, self._token_writer = self._token_writer, None
        if writer is not None:
            writer.close(self.timeout)
        return succeed(None)

    # running statements

    def _run(self, body: Callable[[Any], T], *, write: bool = False) -> Deferred[T]:
        """
        Run C{body(cursor)} in one transaction in the pool's thread: adbapi
        commits it when C{body} returns and rolls it back when it raises.
        """
        pool = self._pool
        if pool is None:
            # closed (at shutdown, with requests still in flight), or not
            # opened yet
            return fail(StoreUnavailable(f"{self.url}: not open"))
        begin = self._dialect.begin_write if write else None

        def transaction(connection: Any) -> T:
            cursor = connection.cursor()
            try:
                if begin is not None:
                    cursor.execute(begin)
                return body(cursor)
            finally:
                cursor.close()

        result: Deferred[T] = pool.runWithConnection(transaction)
        return result

    def _execute(self, name: str, params: Sequence[Any], *, write: bool = False) -> Deferred[Any]:
        statement = self._sql[name]

        def body(cursor: Any) -> Any:
            cursor.execute(statement, tuple(params))
            if write:
                return cursor.rowcount
            return cursor.fetchall()

        return self._guard(self._run(body, write=write))

    # IClientStore

    def add_client(self, client: Client) -> Deferred[None]:
        """
        The client and the index of its federated identities, in one
        transaction: a taken id or a taken binding stores nothing.
        """
        statement = self._sql["add_client"]
        row = CLIENTS.to_row(client)
        integrity = self._dialect.integrity_errors

        def add(cursor: Any) -> None:
            try:
                cursor.execute(statement, row)
            except integrity:
                raise ClientExists(client.client_id) from None
            self._bind(cursor, client)

        return self._guard(self._run(add, write=True))

    def _bind(self, cursor: Any, client: Client) -> None:
        """
        Index the client's federated identities (in its transaction): the
        primary key refuses one bound to another client already.
        """
        statement = self._sql["bind"]
        for identity in client.federated_identities:
            try:
                cursor.execute(
                    statement, (identity.key, identity.conditions_key, client.client_id)
                )
            except self._dialect.integrity_errors:
                raise BindingTaken(identity) from None

    def clients_bound_to(self, issuer: str, subject: str) -> Deferred[list[str]]:
        d = self._execute("clients_bound_to", (binding_key(issuer, subject),))
        d.addCallback(lambda rows: [str(row[0]) for row in rows])
        return d

    def get_client(self, client_id: str) -> Deferred[Client | None]:
        if "\x00" in client_id:
            # A client id comes from the outside (a URL path, a form, Basic
            # credentials); PostgreSQL refuses a string with NUL in it
            # rather than finding nothing.  No client can have such an id.
            return succeed(None)
        d = self._execute("get_client", (client_id,))
        d.addCallback(lambda rows: CLIENTS.from_row(rows[0]) if rows else None)
        return d

    def replace_client(self, client: Client) -> Deferred[bool]:
        """
        The client and its index of federated identities, in one
        transaction: its old bindings go, its new ones come (a taken one
        stores nothing).
        """
        sql = self._sql
        params = _key_last(CLIENTS.to_row(client))

        def replace(cursor: Any) -> bool:
            cursor.execute(sql["replace_client"], params)
            if cursor.rowcount != 1:
                return False
            cursor.execute(sql["unbind"], (client.client_id,))
            self._bind(cursor, client)
            return True

        return self._guard(self._run(replace, write=True))

    def list_clients(self, cursor: str, count: int) -> Deferred[tuple[list[Client], str]]:
        """
        Keyset paging: the cursor is the last client_id of the page before.
        """
        count = max(1, count)
        d = self._execute("list_clients", (cursor, count))

        def page(rows: list[Sequence[Any]]) -> tuple[list[Client], str]:
            clients = [CLIENTS.from_row(row) for row in rows]
            return clients, clients[-1].client_id if len(clients) == count else ""

        d.addCallback(page)
        return d

    def delete_client(
        self, client_id: str, issued_before: int, mark_expires_at: int
    ) -> Deferred[bool]:
        """
        The mark, the tokens' deletion and the client's in one transaction.
        """
        if "\x00" in client_id:
            return succeed(False)  # as in get_client: there is no such client
        sql = self._sql

        def delete(cursor: Any) -> bool:
            cursor.execute(sql["revoke_client"], (client_id, issued_before, mark_expires_at))
            cursor.execute(sql["delete_client_tokens"], (client_id,))
            cursor.execute(sql["unbind"], (client_id,))
            cursor.execute(sql["delete_client"], (client_id,))
            return int(cursor.rowcount) > 0

        return self._guard(self._run(delete, write=True))

    # IKeyStore

    def list_keys(self) -> Deferred[list[StoredKey]]:
        d = self._execute("list_keys", ())
        d.addCallback(lambda rows: [KEYS.from_row(row) for row in rows])
        return d

    def add_key(self, key: StoredKey) -> Deferred[None]:
        d = self._execute("add_key", KEYS.to_row(key), write=True)
        d.addCallback(lambda _: None)
        return d

    def replace_key(self, key: StoredKey) -> Deferred[bool]:
        d = self._execute("replace_key", _key_last(KEYS.to_row(key)), write=True)
        d.addCallback(lambda count: count == 1)
        return d

    def delete_key(self, kid: str) -> Deferred[bool]:
        d = self._execute("delete_key", (kid,), write=True)
        d.addCallback(lambda count: count > 0)
        return d

    # IRateLimitStore

    def take_tokens(
        self, key: str, tokens_per_second: float, burst: int, wanted: int, now: float
    ) -> Deferred[TokenGrant]:
        """
        One transaction: the bucket's row read (a full one inserted if
        there is none) and locked, counted here (L{buckets.take}), and
        written back.
        """
        now_ms = int(now * 1000)
        load, store = self._sql["load_bucket"], self._sql["store_bucket"]

        def body(cursor: Any) -> TokenGrant:
            cursor.execute(load, (key, float(burst), now_ms, now_ms))
            tokens, counted_ms = cursor.fetchone()
            bucket, grant = buckets.take(
                Bucket(float(tokens), int(counted_ms) / 1000, 0.0),
                tokens_per_second,
                burst,
                wanted,
                now_ms / 1000,
            )
            cursor.execute(
                store,
                (bucket.tokens, round(bucket.counted * 1000), math.ceil(bucket.full_at * 1000), key),
            )
            return grant

        return self._guard(self._run(body, write=True))

    # ILeaseStore

    def take_lease(self, name: str, holder: str, now: float, duration: float) -> Deferred[bool]:
        """
        One upsert whose update is conditional: a row inserted or updated
        (a row count of 1) is the lease taken.
        """
        now_ms = int(now * 1000)
        d = self._execute(
            "take_lease",
            (name, holder, now_ms + max(1, int(duration * 1000)), now_ms),
            write=True,
        )
        d.addCallback(lambda count: count == 1)
        return d

    def end_lease(self, name: str, holder: str) -> Deferred[None]:
        d = self._execute("end_lease", (name, holder), write=True)
        d.addCallback(lambda _: None)
        return d

    # ITokenStore

    def add_token(self, token: TokenRecord) -> Deferred[None]:
        return self._tokens.add(tuple(TOKENS.to_row(token)))

    def _add_tokens(self, rows: list[tuple[Any, ...]]) -> Deferred[None]:
        """
        The rows of L{add_token}'s batch, in one statement, which is its own
        transaction (autocommit): C{executemany} would be a statement per
        row, each a round of the driver's Python code (and for PostgreSQL a
        message).

        The batch goes to the token writer (L{ConnectionThread}), a
        connection and thread of its own, so that tokens never queue behind
        other operations, and its thread does as little as it can: the
        statement is made here, and the thread runs it once.  Every call
        the thread makes into the driver lets go of the GIL and must take
        it back from a busy reactor thread; with C{BEGIN}, the statement,
        C{COMMIT} and (on SQLite) the busy timeout set and reset around
        them, batches took longer to commit, and the reactor sat idle
        meanwhile (bench/README.md, "Measurements behind design choices").
        """
        writer = self._token_writer
        if writer is None:
            return fail(StoreUnavailable(f"{self.url}: not open"))
        # the last of a digest given twice wins, as with one add at a time
        rows = list({row[0]: row for row in rows}.values())
        statement = self._token_upserts.get(len(rows))
        if statement is None:
            # made once for each batch size (at most TOKEN_BATCH of them)
            statement = self._dialect.translate(_upsert_many("access_tokens", TOKENS, len(rows)))
            self._token_upserts[len(rows)] = statement
        params = tuple(value for row in rows for value in row)
        write, timeout = self._dialect.write_tokens, self.timeout

        def body(connection: Any) -> None:
            write(connection, statement, params, timeout)

        return self._guard(writer.run(body))

    def get_token(self, token_digest: str) -> Deferred[TokenRecord | None]:
        d = self._execute("get_token", (token_digest,))
        d.addCallback(lambda rows: TOKENS.from_row(rows[0]) if rows else None)
        return d

    def delete_token(self, token_digest: str) -> Deferred[bool]:
        d = self._execute("delete_token", (token_digest,), write=True)
        d.addCallback(lambda count: count > 0)
        return d

    def revoke_jti(self, jti: str, expires_at: int) -> Deferred[None]:
        d = self._execute("revoke_jti", (jti, expires_at), write=True)
        d.addCallback(lambda _: None)
        return d

    def is_revoked(self, jti: str) -> Deferred[bool]:
        d = self._execute("is_revoked", (jti,))
        d.addCallback(lambda rows: bool(rows))
        return d

    def client_revoked_before(self, client_id: str) -> Deferred[int | None]:
        d = self._execute("client_revoked_before", (client_id,))
        d.addCallback(lambda rows: int(rows[0][0]) if rows else None)
        return d

    def use_once(self, key: str, expires_at: int) -> Deferred[bool]:
        """
        One C{INSERT ... ON CONFLICT DO NOTHING}: the primary key makes it
        atomic across every process and connection; one row inserted is a
        first use.
        """
        d = self._execute("use_once", (key, expires_at), write=True)
        d.addCallback(lambda count: count == 1)
        return d

    def purge_expired(self, now: int) -> Deferred[int]:
        """
        The deletions in one transaction; fires with how many rows went.
        """
        statements = [
            (self._sql[name], now)
            for name in (
                "purge_tokens",
                "purge_revoked",
                "purge_revoked_clients",
                "purge_used_once",
                "purge_initial_access_tokens",
            )
        ]
        statements += [
            (self._sql["purge_auth_attempts"], now * 1000),
            (self._sql["purge_known_sources"], now * 1000),
            (self._sql["purge_buckets"], now * 1000),
        ]

        def purge(cursor: Any) -> int:
            count = 0
            for statement, before in statements:
                cursor.execute(statement, (before,))
                count += int(cursor.rowcount)
            return count

        return self._guard(self._run(purge, write=True))

    # IInitialAccessTokenStore

    def add_initial_access_token(self, token: InitialAccessToken) -> Deferred[None]:
        d = self._execute(
            "add_initial_access_token", INITIAL_ACCESS_TOKENS.to_row(token), write=True
        )
        d.addCallback(lambda _: None)
        return d

    def get_initial_access_token(self, token_digest: str) -> Deferred[InitialAccessToken | None]:
        d = self._execute("get_initial_access_token", (token_digest,))
        d.addCallback(lambda rows: INITIAL_ACCESS_TOKENS.from_row(rows[0]) if rows else None)
        return d

    def list_initial_access_tokens(self) -> Deferred[list[InitialAccessToken]]:
        d = self._execute("list_initial_access_tokens", ())
        d.addCallback(lambda rows: [INITIAL_ACCESS_TOKENS.from_row(row) for row in rows])
        return d

    def revoke_initial_access_token(self, token_id: str, now: int) -> Deferred[bool]:
        if "\x00" in token_id:
            return succeed(False)  # as in get_client: there is no such token
        d = self._execute("revoke_initial_access_token", (now, token_id), write=True)
        d.addCallback(lambda count: count > 0)
        return d

    def register_with_initial_access_token(
        self, token_digest: str, client: Client, now: int
    ) -> Deferred[InitialAccessToken | None]:
        """
        One transaction: the token's use counted by an C{UPDATE} whose
        condition is that it may register (which locks its row: concurrent
        registrations wait, and see the count it leaves), then the client
        added with its bindings (as L{add_client}); a taken client id or
        binding rolls it all back.
        """
        use, add = self._sql["use_initial_access_token"], self._sql["add_client"]
        row = CLIENTS.to_row(client)
        integrity = self._dialect.integrity_errors

        def body(cursor: Any) -> InitialAccessToken | None:
            cursor.execute(use, (token_digest, now))
            used = cursor.fetchone()
            if used is None:
                return None
            try:
                cursor.execute(add, row)
            except integrity:
                raise ClientExists(client.client_id) from None
            self._bind(cursor, client)
            return INITIAL_ACCESS_TOKENS.from_row(used)

        return self._guard(self._run(body, write=True))

    # IAuthAttemptStore

    def reserve_attempt(self, keys: AttemptKeys, now: float, window: float) -> Deferred[Reservation]:
        """
        One transaction: the counter's upsert (C{RETURNING} its slots and
        window) locks its row, then the known source is read and the cap
        upserted the same way; a reservation over either budget is rolled
        back, so a refusal changes nothing (and, on SQLite, syncs nothing).
        Rows are locked in one order, counter then cap, so that concurrent
        reservations on PostgreSQL wait for each other and never deadlock.
        """
        now_ms = int(now * 1000)
        ends_ms = now_ms + max(1, int(window * 1000))
        reserve, is_known = self._sql["reserve_attempt"], self._sql["is_known"]

        def take(cursor: Any, key: str) -> tuple[int, float]:
            cursor.execute(reserve, (key, ends_ms, now_ms, now_ms))
            slots, window_ends_ms = cursor.fetchone()
            return int(slots), int(window_ends_ms) / 1000

        def body(cursor: Any) -> Reservation:
            count, ends = take(cursor, keys.counter)
            if count > keys.budget:
                raise _Refused(Reservation(False, count - 1, ends))
            cap_ends = None
            if keys.cap is not None:
                cursor.execute(is_known, (keys.known, now_ms))
                if cursor.fetchone() is None:
                    cap_count, cap_ends = take(cursor, keys.cap)
                    if cap_count > keys.cap_budget:
                        raise _Refused(Reservation(False, count - 1, ends, cap_ends, capped=True))
            return Reservation(True, count, ends, cap_ends)

        def refused(failure: Failure) -> Reservation:
            failure.trap(_Refused)
            return cast(_Refused, failure.value).reservation

        d = self._guard(self._run(body, write=True))
        d.addErrback(refused)
        return d

    def release_attempt(self, release: AttemptRelease, now: float) -> Deferred[None]:
        """
        One transaction: each slot given back if its window is still the
        one it was taken in, then the known source recorded.
        """
        statements = [
            (self._sql["release_attempt"], (key, round(ends * 1000))) for key, ends in release.slots
        ]
        if release.known is not None:
            statements.append(
                (self._sql["mark_known"], (release.known, int((now + release.known_for) * 1000)))
            )

        def body(cursor: Any) -> None:
            for statement, params in statements:
                cursor.execute(statement, params)

        return self._guard(self._run(body, write=True))


class _Refused(Exception):
    """
    Rolls a reservation over budget back (adbapi rolls back a transaction
    whose body raises), carrying the refusal out.
    """

    def __init__(self, reservation: Reservation) -> None:
        super().__init__()
        self.reservation = reservation


#: How long the token writer waits between two tries for SQLite's write
#: lock (L{_sqlite_write_tokens}).
WRITE_LOCK_POLL = 0.0001


def _prepare_sqlite(connection: sqlite3.Connection, *, busy_seconds: float) -> None:
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
        SQLStore._log.warn(
            "SQLite refused WAL mode (journal_mode is {mode}): is the file on a network "
            "file system?",
            mode=mode,
        )
    connection.execute("PRAGMA synchronous = FULL")
