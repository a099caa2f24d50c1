"""
The SQL stores: SQLite (embedded, the default) and PostgreSQL (shared by
several instances), with one body of SQL over L{twisted.enterprise.adbapi}.

The store is L{SQLStore}, here; its parts are modules of their own:

  - L{ccserver.stores.sqldialects}: what differs between the two
    databases (a L{Dialect}), and what a store URL says to connect;
  - L{ccserver.stores.sqlstatements}: the SQL, written once for both;
  - L{ccserver.stores.sqlmigrations}: the schema's versions, and bringing
    a database up to date;
  - L{ccserver.stores.sqlpool}: adbapi's pool, which notices a dead
    connection before a transaction uses it;
  - L{ccserver.stores.writer}: the token writer's connection and thread.

Durability and concurrency:

  - SQLite runs in WAL mode with C{synchronous=FULL}: a commit is on disk
    before the Deferred fires, so neither a SIGKILL nor a power cut loses a
    registered client.  One connection, in one pool thread, for every
    operation but opaque tokens' writes and introspection's lookups:
    adbapi's several threads would otherwise meet "database is locked".
    Every write starts with
    C{BEGIN IMMEDIATE} so that it takes the write lock first and never
    fails half-way on a lock upgrade, polling for it for up to the timeout
    while another connection (another process, this one's token writer or
    purger) holds it, rather than in SQLite's busy handler, whose sleeps
    grow to a tenth of a second.  Opaque tokens are written by a
    connection and thread of their own (the token writer), one statement
    per batch in autocommit, polling for the write lock.  Introspection's
    lookups (C{get_token}, C{is_revoked}, C{client_revoked_before}) are
    read by another (the reader), in autocommit too, those asked for while
    one query is under way in the next (L{GroupLookup}); a reader in WAL
    mode waits for no writer.
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
the token writer's and the reader's) is found dead before its next use
and made anew, reaching the promoted standby once there is one; until then the attempt
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

Schema: versioned migration files, applied in order by L{SQLStore.open}
(L{ccserver.stores.sqlmigrations}).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ccserver.errors import BindingTaken, ClientExists, StoreUnavailable
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
from ccserver.stores.codec import CLIENTS, INITIAL_ACCESS_TOKENS, KEYS, TOKENS
from ccserver.stores.groupcommit import GroupCommit
from ccserver.stores.grouplookup import GroupLookup
from ccserver.stores.guard import OperationGuard, mask_password, url_secrets
from ccserver.stores.purging import in_turns, share_for
from ccserver.stores.sqldialects import Connecting, connection_for
from ccserver.stores.sqlmigrations import MIGRATION_TIMEOUT, Migration, Schema, load_migrations
from ccserver.stores.sqlpool import ConnectionPool
from ccserver.stores.sqlstatements import (
    LOOKUP_SIZES,
    json_rows,
    key_last,
    lookup_size,
    lookups,
    statements,
    upsert_json,
    upsert_many,
)
from ccserver.stores.writer import ConnectionThread

T = TypeVar("T")


#: How long a batch of opaque tokens may wait to fill under load
#: (L{GroupCommit}'s C{hold}): each commit is a round trip and a sync (which
#: the processes on one SQLite file take in turn), so fewer, fuller commits
#: give more tokens a second (bench/README.md).
TOKEN_HOLD = 0.004

#: The most variables a statement may have on SQLite before 3.32 (which
#: Python 3.11 may be built with: RHEL 8's is 3.26).
SQLITE_MAX_VARIABLES = 999
#: Opaque tokens written in one statement at most: as many rows as stay
#: within L{SQLITE_MAX_VARIABLES}, a value a column (PostgreSQL's rows go
#: as one JSON parameter, but in batches of the same size).
TOKEN_BATCH = SQLITE_MAX_VARIABLES // len(TOKENS.names)
#: Expired rows a purge deletes a transaction on PostgreSQL
#: (L{SQLStore.purge_expired}): tens of milliseconds of a core on ten
#: million rows (bench/README.md, the growth section's purge row).
PURGE_BATCH = 5_000
#: Expired rows a purge deletes a transaction on SQLite, whose write lock
#: is the whole database's: each token written meanwhile waits for the
#: batch.  Batches of 250 held the lock several times as long as batches
#: of 50 on a million rows, and raised the purge row's worst p99 past
#: twice the quiet one; batches of 50 kept it within (bench/README.md,
#: run H).
SQLITE_PURGE_BATCH = 50


def purge_batch(dialect: str) -> int:
    """
    The rows a purge deletes a transaction on C{dialect}'s database.
    """
    return SQLITE_PURGE_BATCH if dialect == "sqlite" else PURGE_BATCH


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
        connecting: Connecting,
        *,
        timeout: float,
        migrations: Iterable[Migration] | None = None,
    ) -> None:
        self.url = mask_password(url)
        self._reactor = reactor
        self._connecting = connecting
        self._dialect = dialect = connecting.dialect
        self.timeout = timeout
        self._schema = Schema(
            dialect,
            tuple(load_migrations() if migrations is None else migrations),
            self.url,
            timeout,
        )
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
        #: the lookups' reader: its own connection and thread (L{_lookup})
        self._reader: ConnectionThread[Any] | None = None
        #: the purge's batches: their own connection and thread
        #: (L{purge_expired})
        self._purger: ConnectionThread[Any] | None = None
        #: the token batches' statements, by batch size (L{_add_tokens}),
        #: or their one statement with its rows as JSON (PostgreSQL's)
        self._token_upserts: dict[int, str] = {}
        self._token_upsert_json = (
            dialect.translate(upsert_json("access_tokens", TOKENS)) if dialect.rows_as_json else None
        )
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
        self._sql = statements(dialect)
        self._lookup_statements = lookups(dialect)
        # Introspection's reads: one query for the lookups of a kind asked
        # for while the previous one is under way, on the reader's one
        # connection (L{_lookup}).
        concurrency, batch = 1, LOOKUP_SIZES[-1]
        #: opaque tokens by digest (public, so that tests and operators can
        #: read how many batches carried how many lookups)
        self.token_lookups: GroupLookup[str, TokenRecord] = GroupLookup(
            self._get_tokens, concurrency=concurrency, max_batch=batch
        )
        #: deny-list entries by jti
        self.revoked_jti_lookups: GroupLookup[str, bool] = GroupLookup(
            self._revoked_jtis, concurrency=concurrency, max_batch=batch
        )
        #: deleted clients' revocation marks by client id
        self.revoked_client_lookups: GroupLookup[str, int] = GroupLookup(
            self._revoked_clients, concurrency=concurrency, max_batch=batch
        )

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
        URL (L{connection_for}).

        @param timeout: seconds an operation may take before it fails with
            L{StoreUnavailable}.
        @param migrations: the schema migrations, by default the package's.
        """
        return cls(url, reactor, connection_for(url, timeout), timeout=timeout, migrations=migrations)

    def __repr__(self) -> str:
        return f"<SQLStore {self.url}>"

    # lifetime

    def open(self) -> Deferred[None]:
        """
        Start the connection pool and bring the schema up to date.
        """
        if self._pool is None:
            kwargs: dict[str, Any] = dict(self._connecting.kwargs)
            kwargs.update(
                cp_min=1,
                cp_max=self._dialect.pool_size,
                cp_reconnect=True,
                cp_noisy=False,
                cp_reactor=self._reactor,
                cp_name=f"ccserver-store-{self._dialect.name}",
            )
            if self._connecting.open_connection is not None:
                kwargs["cp_openfun"] = self._connecting.open_connection
            self._pool = ConnectionPool(self._dialect, *self._connecting.args, **kwargs)
            self._token_writer = self._connection_thread(
                "tokens", self._dialect.prepare_token_connection
            )
            self._reader = self._connection_thread(
                "lookups", self._dialect.prepare_read_connection
            )
            self._purger = self._connection_thread(
                "purge", self._dialect.prepare_token_connection
            )
        return Deferred.fromCoroutine(self._migrate())

    async def _migrate(self) -> None:
        schema = self._schema
        # The common case, a database up to date, takes no lock.
        current = await self._guard(self._run(schema.read_version))
        schema.check(current)
        while current < schema.latest:
            applied = await self._guard(
                self._run(schema.step), timeout=max(self.timeout, MIGRATION_TIMEOUT)
            )
            if applied is None:
                # another process has just applied the rest
                break
            current = applied
            self._log.info(
                "Applied schema migration {version} to {url}", version=current, url=self.url
            )

    def _connection_thread(
        self, name: str, prepare: Callable[[Any], None]
    ) -> ConnectionThread[Any]:
        """
        A connection in a thread of its own (the token writer's, the
        lookups' reader's): made as the pool's are, and then set up by
        C{prepare}, in its thread.
        """

        def connect() -> Any:
            connection = importlib.import_module(self._dialect.module).connect(
                *self._connecting.args, **self._connecting.kwargs
            )
            try:
                if self._connecting.open_connection is not None:
                    self._connecting.open_connection(connection)
                prepare(connection)
            except BaseException:
                connection.close()
                raise
            return connection

        return ConnectionThread(
            cast(IReactorThreads, self._reactor),
            connect,
            name=f"ccserver-{name}-{self._dialect.name}",
            is_stale=self._dialect.is_stale,
            lost_errors=self._dialect.unavailable_errors,
        )

    def close(self) -> Deferred[None]:
        """
        Stop the pool's threads and close its connections.
        """
        self._tokens.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for thread in (self._token_writer, self._reader, self._purger):
            if thread is not None:
                thread.close(self.timeout)
        self._token_writer = self._reader = self._purger = None
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
        timeout = self.timeout

        def transaction(connection: Any) -> T:
            cursor = connection.cursor()
            try:
                if begin is not None:
                    begin(cursor, timeout)
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
        params = key_last(CLIENTS.to_row(client))

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
        d = self._execute("replace_key", key_last(KEYS.to_row(key)), write=True)
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
        message).  SQLite is given them as a C{VALUES} list; PostgreSQL as
        one JSON parameter (L{upsert_json}, L{Dialect.rows_as_json}).

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
        if self._token_upsert_json is not None:
            return self._write_alone(
                writer, self._token_upsert_json, (json_rows(TOKENS, rows),)
            ).addCallback(lambda _: None)
        statement = self._token_upserts.get(len(rows))
        if statement is None:
            # made once for each batch size (at most TOKEN_BATCH of them)
            statement = self._dialect.translate(upsert_many("access_tokens", TOKENS, len(rows)))
            self._token_upserts[len(rows)] = statement
        params = tuple(value for row in rows for value in row)
        return self._write_alone(writer, statement, params).addCallback(lambda _: None)

    def _write_alone(
        self, thread: ConnectionThread[Any], statement: str, params: tuple[Any, ...]
    ) -> Deferred[int]:
        """
        One write statement on a connection of its own (the token writer's,
        the purger's): in autocommit, its own transaction, polling for
        SQLite's write lock (L{Dialect.write_tokens}); bounded by the
        store's timeout.  Fires with the rows it changed.
        """
        write, timeout = self._dialect.write_tokens, self.timeout

        def body(connection: Any) -> int:
            return write(connection, statement, params, timeout)

        return self._guard(thread.run(body))

    def get_token(self, token_digest: str) -> Deferred[TokenRecord | None]:
        """
        Read with the other lookups of its batch (L{GroupLookup}): one
        query for those asked for while the previous ones are under way.
        """
        if "\x00" in token_digest:
            return succeed(None)  # as in get_client: there is no such token
        return self.token_lookups.get(token_digest)

    def _lookup(
        self, name: str, keys: list[str], read: Callable[[Sequence[Any]], T]
    ) -> Deferred[Mapping[str, T]]:
        """
        The lookup C{name} (L{lookups}) of a batch of distinct keys, in one
        query, its keys padded to the statement's size with the first one
        again: each row found, by its key (its first column), as C{read}
        makes it.

        The query goes to the reader (L{ConnectionThread}), a connection
        and thread of their own, as the token writer's batches do and for
        the same reasons: a hand-off costs a C{SimpleQueue.put} rather than
        a round of adbapi's thread pool, and the query runs in autocommit,
        one round trip on PostgreSQL where adbapi's transaction made
        three (C{BEGIN}, the query, C{COMMIT}); the thread only runs it,
        and the rows are read here.  In autocommit each query sees every
        transaction committed before it began: a revocation committed
        before the batch was sent is seen by it (L{GroupLookup}).  Its
        connection is checked before each use as the pool's are, so that
        lookups never read a standby (which may lag behind a revocation
        the primary has committed).
        """
        reader = self._reader
        if reader is None:
            return fail(StoreUnavailable(f"{self.url}: not open"))
        size = lookup_size(len(keys))
        statement = self._lookup_statements[name, size]
        params = (*keys, *(keys[0] for _ in range(size - len(keys))))

        def body(connection: Any) -> list[Sequence[Any]]:
            cursor = connection.cursor()
            try:
                cursor.execute(statement, params)
                return cursor.fetchall()  # type: ignore[no-any-return]
            finally:
                cursor.close()

        d = self._guard(reader.run(body))
        return d.addCallback(lambda rows: {row[0]: read(row) for row in rows})

    def _get_tokens(self, digests: list[str]) -> Deferred[Mapping[str, TokenRecord]]:
        return self._lookup("tokens", digests, TOKENS.from_row)

    def _revoked_jtis(self, jtis: list[str]) -> Deferred[Mapping[str, bool]]:
        return self._lookup("revoked_jtis", jtis, lambda row: True)

    def _revoked_clients(self, client_ids: list[str]) -> Deferred[Mapping[str, int]]:
        return self._lookup("revoked_clients", client_ids, lambda row: int(row[1]))

    def delete_token(self, token_digest: str) -> Deferred[bool]:
        d = self._execute("delete_token", (token_digest,), write=True)
        d.addCallback(lambda count: count > 0)
        return d

    def revoke_jti(self, jti: str, expires_at: int) -> Deferred[None]:
        d = self._execute("revoke_jti", (jti, expires_at), write=True)
        d.addCallback(lambda _: None)
        return d

    def is_revoked(self, jti: str) -> Deferred[bool]:
        if "\x00" in jti:
            return succeed(False)  # as in get_client: none was revoked
        return self.revoked_jti_lookups.get(jti).addCallback(bool)

    def client_revoked_before(self, client_id: str) -> Deferred[int | None]:
        if "\x00" in client_id:
            return succeed(None)  # as in get_client: there is no such client
        return self.revoked_client_lookups.get(client_id)

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
        Forget what expired before C{now}; fires with how many rows went.

        Expired tokens and deny-list entries go L{purge_batch} rows a
        transaction, the earliest first (along the expiry index), with a
        rest after each batch (L{in_turns}; seven times as long as it took
        on PostgreSQL, as long on SQLite: L{share_for}), so that a purge of
        millions of rows (every token of a busy hour expiring together)
        never holds the write lock long and takes at most an eighth (half
        on SQLite) of the store's time: the requests' own writes take
        turns with it.  The small tables go in one last transaction.

        The batches go to a connection and thread of their own (the
        purger), each statement in autocommit as the token writer's, so
        that the pool's connection, which the requests' other operations
        use (on SQLite the only one), never waits behind a batch waiting
        for the write lock; on SQLite the purger polls for it as the token
        writer does.  Each batch is bounded by the store's timeout, not
        the purge, which may take minutes.
        """
        return ensureDeferred(self._purge(now))

    async def _purge(self, now: int) -> int:
        purger = self._purger
        if purger is None:
            raise StoreUnavailable(f"{self.url}: not open")
        count = 0
        size = purge_batch(self._dialect.name)
        share = share_for(self._dialect.name)
        clock = cast(IReactorTime, self._reactor)
        for name in ("purge_tokens", "purge_revoked"):
            statement = self._sql[name]

            def batch(statement: str = statement) -> Deferred[int]:
                return self._write_alone(purger, statement, (now, size))

            count += await in_turns(batch, size, clock, share)
        statements = [
            (self._sql["purge_revoked_clients"], now),
            (self._sql["purge_used_once"], now),
            (self._sql["purge_initial_access_tokens"], now),
            (self._sql["purge_auth_attempts"], now * 1000),
            (self._sql["purge_known_sources"], now * 1000),
            (self._sql["purge_buckets"], now * 1000),
        ]

        def rest(cursor: Any) -> int:
            deleted = 0
            for statement, before in statements:
                cursor.execute(statement, (before,))
                deleted += int(cursor.rowcount)
            return deleted

        return count + await self._guard(self._run(rest, write=True))

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


